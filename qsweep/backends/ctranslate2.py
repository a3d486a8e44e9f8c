"""CTranslate2 on a model converted once from the checkpoint per compute type (its
TransformersConverter: GPT-2, Llama, Mistral, Qwen2/3, Phi-3, Gemma 3 among others; takes() says which).

Precisions map to compute types: fp32/int8 = float32/int8 on the CPU, fp16/bf16/int8 =
float16/bfloat16/int8_float16 on CUDA, or backend.compute_type; int4 does not exist. Token ids go in and
out through the converted model's own vocabulary (a checkpoint without a tokenizer gets one made up,
token i = "<i>"), so random weights run too. Greedy, exactly max_new_tokens tokens: min_length =
max_length masks the end tokens at every step, as transformers' min_new_tokens does.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from qsweep import backends, environment, sources
from qsweep.backends import (BackendUnsupported, Files, PrecisionCheck, Runtime, context_length, convert_once,
                             refuse_architecture, require_own_quantization, require_package, require_precision,
                             tokenizer)
from qsweep.config import BackendConfig, RunConfig
from qsweep.sources import Checkpoint, fingerprint_key

COMPUTE_TYPES = {"cpu": {"fp32": "float32", "int8": "int8"},
                 "cuda": {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8_float16"}}
# A requested type and the types CTranslate2 reports for it after loading (int8 computes in float32 on a CPU).
SAME_TYPE = {"int8": ("int8", "int8_float32"), "int8_float32": ("int8_float32",)}
STORED_TYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # model.bin's type ids
EXTRA = "qsweep_ct2.json"  # beside the converted model: the checkpoint's end-of-sequence ids
LIBRARIES = ("ctranslate2",)  # imported by a job before its memory is tracked (backends/__init__.py)


@dataclass
class CTranslate2Config(BackendConfig):
    name: str = "ctranslate2"
    compute_type: Optional[str] = None  # a compute type instead of the precision's (int16, int8_float32, ...)


def compute_type(cfg: RunConfig) -> str:
    return cfg.backend.compute_type or COMPUTE_TYPES.get(cfg.device.name, {}).get(cfg.precision.name, "")


def label(cfg: RunConfig) -> str:
    return f"CTranslate2 {compute_type(cfg) or '-'}"


def takes(config: dict) -> bool:
    """Whether CTranslate2's converter has a loader for this architecture (config.json's fields): it keys them
    by the transformers config class (GPT2Config, LlamaConfig, Qwen3Config, ...)."""
    from ctranslate2.converters.transformers import _MODEL_LOADERS
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return CONFIG_MAPPING_NAMES.get(config.get("model_type", ""), "") in _MODEL_LOADERS


def check(cfg: RunConfig) -> None:
    require_package("ctranslate2", "ctranslate2", "ctranslate2")
    backends.require_dequantized(cfg)
    import ctranslate2

    require_own_quantization(cfg)
    config = sources.declared_config(cfg.model)  # None: a hub model not yet downloaded; the converter decides
    if config is not None and not takes(config):
        refuse_architecture("ctranslate2", config, f"CTranslate2 {ctranslate2.__version__}'s converter has no "
                            f"loader for model_type={config.get('model_type')}")

    if cfg.generation.batch_size > 1 and cfg.generation.prompt_tokens is None:
        raise BackendUnsupported("backend=ctranslate2 batches prompts of one length only (it has no padding mask "
                                 "for generation: a longer prompt's tail is decoded token by token): set "
                                 "generation.prompt_tokens=N, or generation.batch_size=1")
    environment.require_device(cfg.device.name)  # CTranslate2 cannot list CUDA types without CUDA
    supported = sorted(ctranslate2.get_supported_compute_types(cfg.device.name))
    wanted = compute_type(cfg)
    if wanted in supported:
        return
    offered = f"this machine offers {', '.join(supported)}"
    if cfg.backend.compute_type:
        raise BackendUnsupported(f"backend.compute_type={wanted} is not a compute type of CTranslate2 on "
                                 f"{cfg.device.name} here ({offered}): use one of those")
    precisions = [p for p, t in COMPUTE_TYPES.get(cfg.device.name, {}).items() if t in supported]
    llama_cpp = (cfg.device.name == "cpu" and cfg.model.weights != "random"  # llama.cpp needs a real vocabulary
                 and "llama-cpp" in backends.takers(config or {}, "ctranslate2"))
    raise BackendUnsupported(
        f"backend=ctranslate2 cannot run precision={cfg.precision.name} on {cfg.device.name} here (compute type "
        f"{wanted or 'none'}; {offered}): use precision={' or '.join(precisions)}, backend.compute_type=<one of "
        "those>" + (f", or backend=llama-cpp, which runs this model at precision={cfg.precision.name} on the CPU"
                    if llama_cpp else ""))


def prepare(cfg: RunConfig, checkpoint: Checkpoint) -> Files:
    """<cache>/ct2/<checkpoint key>/<compute type>: converted once (weights stored at that type)."""
    backends.require_dequantized(cfg, checkpoint)
    target = Path(cfg.paths.cache_dir).expanduser() / "ct2" / fingerprint_key(checkpoint.path) / compute_type(cfg)
    return convert_once(target, lambda staging: _convert(Path(checkpoint.path), staging, compute_type(cfg)))


def _convert(folder: Path, out: Path, quantization: str) -> None:
    import transformers
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            if (Path(model_name_or_path) / "tokenizer_config.json").is_file():
                return super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            return _NumberedVocabulary(transformers.AutoConfig.from_pretrained(model_name_or_path))

    Converter(str(folder), low_cpu_mem_usage=True).convert(str(out), quantization=quantization, force=True)
    config = transformers.GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").is_file() \
        else transformers.AutoConfig.from_pretrained(folder).get_text_config()
    eos = config.eos_token_id
    (out / EXTRA).write_text(json.dumps({"eos_token_ids": eos if isinstance(eos, list) else [eos] if eos is not None
                                         else []}))


class _NumberedVocabulary:
    """A tokenizer for the converter where the checkpoint has none (random weights): token i is "<i>"."""
    chat_template = None
    special_tokens_map: Dict[str, str] = {}

    def __init__(self, config):
        self.size = config.get_text_config().vocab_size
        self.bos_token = self.eos_token = self.unk_token = self.pad_token = "<0>"

    def get_vocab(self) -> Dict[str, int]:
        return {f"<{i}>": i for i in range(self.size)}


def load(cfg: RunConfig, checkpoint: Checkpoint, files: Files) -> "CTranslate2Runtime":
    return CTranslate2Runtime(cfg, checkpoint, Path(files.path))


def stored_types(model_bin: Path) -> Dict[str, int]:
    """Weight matrices (rank >= 2) per stored type, from model.bin's tensor headers (data skipped)."""
    counts: Dict[str, int] = {}
    with open(model_bin, "rb") as f:
        def u32() -> int:
            return struct.unpack("<I", f.read(4))[0]

        def string() -> str:
            return f.read(struct.unpack("<H", f.read(2))[0])[:-1].decode()

        if u32() >= 2:  # binary version: then the spec's name and revision
            string()
            u32()
        for _ in range(u32()):
            string()
            rank = f.read(1)[0]
            f.seek(4 * rank, os.SEEK_CUR)
            kind = f.read(1)[0]
            f.seek(u32(), os.SEEK_CUR)
            if rank >= 2:
                name = STORED_TYPES[kind] if kind < len(STORED_TYPES) else str(kind)
                counts[name] = counts.get(name, 0) + 1
    return counts


class CTranslate2Runtime(Runtime):
    def __init__(self, cfg: RunConfig, checkpoint: Checkpoint, folder: Path):
        import ctranslate2
        from transformers import AutoConfig

        threads = cfg.device.num_threads or torch.get_num_threads()
        wanted = compute_type(cfg)
        start = time.perf_counter()
        self.generator = ctranslate2.Generator(str(folder), device=cfg.device.name, compute_type=wanted,
                                               intra_threads=threads, inter_threads=1)
        self.load_time_s = time.perf_counter() - start
        self.device = cfg.device.name
        self.tokenizer = tokenizer(checkpoint.tokenizer_path)
        self.vocabulary = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        self.vocab_size = len(self.vocabulary)
        self.end_tokens = [self.vocabulary[i] for i in json.loads((folder / EXTRA).read_text())["eos_token_ids"]
                           if 0 <= i < self.vocab_size]
        text_config = AutoConfig.from_pretrained(checkpoint.path).get_text_config()
        self.context_length = context_length(text_config)
        # forward_batch fails past a sliding window: the quality metrics score windows this long at most
        self.max_scored_length = getattr(text_config, "sliding_window", None)
        self.footprint_gb = (folder / "model.bin").stat().st_size / 1024**3
        effective = self.generator.compute_type
        stored = stored_types(folder / "model.bin")
        require_precision(effective in SAME_TYPE.get(wanted, (wanted,)), cfg, f"compute type {effective}")
        self.precision = PrecisionCheck(
            f"compute type {effective} (asked {wanted}); stored weights "
            + ", ".join(f"{t}:{n}" for t, n in sorted(stored.items())),
            {"requested": wanted, "effective": effective, "stored_weight_types": stored, "threads": threads,
             "supported_on_device": sorted(ctranslate2.get_supported_compute_types(cfg.device.name)),
             "ctranslate2": ctranslate2.__version__})

    def generate(self, prompts: List[List[int]], max_new_tokens: int,
                 on_first_token: Callable[[], None]) -> List[List[int]]:
        first = []

        def on_step(step) -> bool:  # called as each token is decided, before the next step
            if not first:
                first.append(True)
                on_first_token()
            return False

        results = self.generator.generate_batch(
            [[self.vocabulary[i] for i in prompt] for prompt in prompts], max_length=max_new_tokens,
            min_length=max_new_tokens, sampling_topk=1, beam_size=1, end_token=self.end_tokens,
            include_prompt_in_result=False, callback=on_step, max_batch_size=0)
        return [list(result.sequences_ids[0]) for result in results]

    def logits(self, ids: List[int]) -> torch.Tensor:
        out = self.generator.forward_batch([list(ids)])
        if self.device != "cpu":  # a CUDA StorageView exposes only __cuda_array_interface__
            return torch.as_tensor(out, device=self.device)[0].float()
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)[0])

    def close(self) -> None:
        """A Generator still alive at interpreter exit can abort the process (exit code 134)."""
        self.generator.unload_model()
