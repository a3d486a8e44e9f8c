"""A GGUF file as the model: where it is (a local file, or a file of a hub repository), whether it is whole,
what it holds, and the checkpoint transformers makes of it by dequantizing it (the fp32 reference, and what
backend=transformers and ctranslate2 load). llama.cpp loads the file itself (backends/llama_cpp.py)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

from qsweep import gguf_files
from qsweep.config import ModelConfig


class GgufUnavailable(RuntimeError):
    """The GGUF file is missing, broken or unreachable; the message says what to do."""


def locate(model: ModelConfig, download: bool = True) -> Optional[Path]:
    """The GGUF file model names: a local path, or model.gguf_file of the folder or hub repository name_or_path
    (from the hub cache, downloaded when `download`; None when it is not cached and download is False)."""
    folder = Path(model.name_or_path).expanduser()
    if not model.gguf_file or folder.is_dir():
        path = folder / model.gguf_file if model.gguf_file else folder
        if not path.is_file():
            raise GgufUnavailable(f"{path}: no such GGUF file; give the path of a "
                                  ".gguf file, or a hub repository and model.gguf_file=<file name in it>")
        return path
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if not download:
        try:
            cached = try_to_load_from_cache(model.name_or_path, model.gguf_file, revision=model.revision)
        except ValueError:  # not a repository id: hf_hub_download says so in the job, in one line
            return None
        return Path(cached) if isinstance(cached, str) else None
    try:
        return Path(hf_hub_download(model.name_or_path, model.gguf_file, revision=model.revision))
    except Exception as err:
        raise GgufUnavailable(f"model.gguf_file={model.gguf_file} of {model.name_or_path!r} is neither cached nor "
                              f"reachable on the Hugging Face hub ({type(err).__name__}): download it once, or give "
                              "its local path as model.name_or_path") from None


def read(path: Path) -> dict:
    """What the file holds (gguf_files.check_file), once per file version: a truncated or corrupt file is an error."""
    stat = path.stat()
    return dict(_read(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=16)
def _read(path: str, size: int, mtime_ns: int) -> tuple:
    try:
        return tuple(gguf_files.check_file(Path(path)).items())
    except gguf_files.BrokenFile as err:
        raise GgufUnavailable(f"{err}: download or convert it again") from None


def describe(model: ModelConfig) -> Optional[dict]:
    """read() of the model's GGUF where that needs no download (None otherwise); broken files are errors."""
    path = locate(model, download=False)
    return None if path is None else read(path)


def file_type(model: ModelConfig) -> Optional[str]:
    """The GGUF type of the model's file (Q4_K_M, ...) for names and tags; None where it cannot be read now
    (missing, broken or not downloaded yet: the job says why, in one line)."""
    try:
        described = describe(model)
    except (GgufUnavailable, OSError):
        return None
    return None if described is None else described["file_type"]


def without_reference(architecture: Optional[str]) -> Optional[str]:
    """Why a GGUF of this architecture has no fp32 reference (transformers cannot dequantize it); None: it has."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture in GGUF_SUPPORTED_ARCHITECTURES:
        return None
    return (f"transformers cannot read GGUF architecture {architecture}, so it has no fp32 reference (and "
            "backend=transformers and ctranslate2 cannot load it)")


def file_key(path: Path) -> str:
    """The cache's name for one version of a GGUF file: its name, and a digest of its path, size and mtime."""
    stat = path.stat()
    digest = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns]).encode())
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def dequantized(path: Path, cache_dir: Path) -> Tuple[Optional[Path], Optional[str]]:
    """(checkpoint folder, None): the file dequantized to float32 by transformers, made once per file version
    under <cache>/gguf-models/; or (None, why) where transformers cannot read its architecture."""
    from qsweep.staging import build_once

    why = without_reference(read(path)["architecture"])
    if why:
        return None, why
    target = cache_dir / "gguf-models" / file_key(path)
    build_once(target, lambda folder: dequantize(path, folder, "float32", cache_dir))
    return target, None


def _as_llama_cpp_computes(config) -> None:
    """What a GGUF does not store, set as llama.cpp computes it: Gemma 3 scales attention by head_dim (by hidden
    size / heads in the 62-layer 27B), where transformers' GGUF loader leaves query_pre_attn_scalar at 256."""
    if config.model_type == "gemma3_text":
        config.query_pre_attn_scalar = (config.hidden_size // config.num_attention_heads
                                        if config.num_hidden_layers == gguf_files.GEMMA3_27B_LAYERS else config.head_dim)


def converted_tokenizer(path: Path, cache_dir: Path) -> Path:
    """transformers' tokenizer of the GGUF's vocabulary, converted once per vocabulary under
    <cache>/gguf-tokenizers/ (about half of a dequantization: a minute for 262k tokens on 2 cores)."""
    from transformers import AutoTokenizer

    from qsweep.staging import build_once

    target = cache_dir / "gguf-tokenizers" / gguf_files.tokenizer_digest(path)
    build_once(target, lambda folder: AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
               .save_pretrained(folder), marker="tokenizer_config.json")
    return target


def dequantize(path: Path, folder: Path, dtype: str, cache_dir: Path) -> None:
    """A GGUF -> a plain safetensors checkpoint at `dtype` + its tokenizer in `folder` (transformers' GGUF
    loader; a minute or two for a 270M model with a 262k vocabulary on 2 cores, half that when another file
    with its vocabulary was dequantized before)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = getattr(torch, dtype)
    steps = tqdm(total=3, desc=f"qsweep: dequantizing {path.name} (once)", unit="step")
    steps.set_postfix_str("reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(converted_tokenizer(path, cache_dir))
    tokenizer.chat_template = gguf_files.chat_template(path)  # the file's own: not part of the shared vocabulary
    steps.update()
    steps.set_postfix_str("dequantizing the weights")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch_dtype,
        quantization_config=GgufConfig(gguf_file=path.name, dequantize=True))
    steps.update()
    steps.set_postfix_str(f"saving {dtype} safetensors")
    # A GGUF-loaded model refuses save_pretrained; a fresh model with its weights does not.
    config = gguf_model.config
    config.__dict__.pop("quantization_config", None)  # the saved checkpoint is a plain one
    _as_llama_cpp_computes(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    steps.update()
    steps.close()
