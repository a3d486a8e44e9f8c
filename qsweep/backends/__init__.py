"""Inference runtimes. A backend is one module (here, or anywhere importable) and one YAML in
conf/backend/. The module holds a subclass of qsweep.config.BackendConfig with its options and its name,
which the YAML names as `_target_`, and these functions:

    label(cfg)                   the runtime and its weight format, e.g. "llama.cpp Q4_K_M" (the `runtime` tag)
    check(cfg)                   refuse in one line (BackendUnsupported) what it cannot run, before any work
    prepare(cfg, checkpoint)     its files for the checkpoint at the precision, converted once into the cache
    load(cfg, checkpoint, files) a Runtime, loaded (timed) at the precision, the precision checked

and optionally LIBRARIES, the modules of its runtime's library, which a job imports before its memory is tracked
(its code is not the setting's: setting_memory_gb, docs/measurement.md).

Every backend is measured by the same contract (qsweep/measure.py) and scored against the same fp32
reference (qsweep/quality/) through the Runtime below, so nothing else names a backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Callable, List, Optional

import torch

from qsweep import gguf_source
from qsweep.config import BACKEND_CONF, GGUF_PRECISION, PrecisionConfig, RunConfig, backend_class
from qsweep.staging import build_once

CONVERSION_FILE = "qsweep_conversion.json"  # how long making the files took, kept beside them


class BackendUnsupported(RuntimeError):
    """This backend cannot run this configuration here; the message names what would work."""


class PrecisionNotApplied(RuntimeError):
    """The loaded model is not at the requested precision."""


@dataclass
class Files:
    """What a backend loads: the checkpoint folder itself, or files converted from it once."""
    path: str
    conversion_time_s: Optional[float] = None  # None: nothing was converted for this backend
    converted_now: bool = False  # this job made them (the tag `conversion`: made / reused)
    artifact: Optional[str] = None  # what a user loads, where not `path` itself (the GGUF file in its folder)


@dataclass
class PrecisionCheck:
    """What the runtime really holds after loading (the `precision_check` tag and .json artifact)."""
    summary: str  # one line for the tag
    details: dict  # the artifact


class Runtime:
    """A loaded model, as the measurement and the quality metrics see it."""
    tokenizer = None  # the checkpoint's Hugging Face tokenizer (every backend encodes and decodes with it)
    vocab_size: int = 0
    context_length: Optional[int] = None
    load_time_s: float = 0.0
    footprint_gb: float = 0.0  # the size of what the runtime loaded
    precision: PrecisionCheck
    is_fp32_reference = False  # True only where this runtime *is* the reference (transformers fp32)
    max_scored_length: Optional[int] = None  # the longest sequence logits() takes, where less than the context

    def generate(self, prompts: List[List[int]], max_new_tokens: int,
                 on_first_token: Callable[[], None]) -> List[List[int]]:
        """Greedy, exactly max_new_tokens new tokens per prompt (EOS cannot stop it), all prompts as one
        batch; calls on_first_token the moment the first new token exists."""
        raise NotImplementedError

    def logits(self, ids: List[int]) -> torch.Tensor:
        """Next-token logits at every position of one sequence: [len(ids), vocab] (row i predicts ids[i+1])."""
        raise NotImplementedError

    def own_tokens(self, text: str) -> Optional[List[int]]:
        """How the runtime's own tokenizer splits `text` (a GGUF carries its own vocabulary); None: it has
        none and uses the checkpoint's. Only compared, never fed: every runtime gets the checkpoint's ids."""
        return None

    def close(self) -> None:
        """Free what the runtime holds outside Python's reach."""


def get(name: str) -> ModuleType:
    """The module of backend `name`: the one that holds its options class."""
    return importlib.import_module(backend_class({"name": name}).__module__)


def require_package(backend: str, module: str, distribution: str) -> None:
    """The runtime's library must be installed (make run installs only the core)."""
    if importlib.util.find_spec(module) is None:
        raise BackendUnsupported(f"backend={backend} needs {distribution}, which is not installed: run `make runtimes` "
                                 "(pip install -e '.[runtimes]' with the Makefile's CMAKE_ARGS)")


def require_own_quantization(cfg: RunConfig) -> None:
    """precision.quant_type and double_quant are bitsandbytes' (backend=transformers): another runtime has its
    own types, so asking for them there is refused rather than silently ignored."""
    if (cfg.precision.quant_type, cfg.precision.double_quant) != (PrecisionConfig.quant_type,
                                                                   PrecisionConfig.double_quant):
        raise BackendUnsupported(f"precision.quant_type and precision.double_quant are bitsandbytes' settings "
                                 f"(backend=transformers), unused by backend={cfg.backend.name}: name its own type "
                                 f"instead (its option in conf/backend/{cfg.backend.name}.yaml)")


def require_dequantized(cfg: RunConfig, checkpoint=None) -> None:
    """For a runtime that loads a GGUF model as transformers dequantizes it: refuse, in one line, its own type
    (precision=gguf is llama.cpp's) and an architecture transformers cannot read (from the file's header before
    the job, from the resolved `checkpoint` after)."""
    if cfg.precision.name == GGUF_PRECISION:
        raise BackendUnsupported(f"precision={GGUF_PRECISION} is the GGUF file's own type, which backend=llama-cpp "
                                 f"runs as it is; backend={cfg.backend.name} loads the file dequantized: use "
                                 "precision=fp32 (the quality reference) or another precision")
    if checkpoint is not None:
        why = checkpoint.no_reference
    else:
        described = gguf_source.describe(cfg.model) if cfg.model.is_gguf else None
        why = described and gguf_source.without_reference(described["architecture"])
    if why:
        raise BackendUnsupported(f"{why}: use backend=llama-cpp")


def takers(config: dict, asking: str) -> List[str]:
    """The other backends in conf/backend/ that take this architecture (config.json's fields): those whose
    module's takes(config) says so, where it is installed."""
    names = sorted(p.stem for p in BACKEND_CONF.glob("*.yaml") if p.stem != asking)
    found = []
    for name in names:
        try:
            takes = getattr(get(name), "takes", None)
            if takes is None or takes(config):
                found.append(name)
        except (ImportError, RuntimeError):  # not installed, or its converter is missing
            continue
    return found


def refuse_architecture(backend: str, config: dict, why: str) -> None:
    """One line: this backend cannot convert the architecture, and which backends can run it."""
    architecture = (config.get("architectures") or [config.get("model_type")])[0]
    others = takers(config, backend)
    raise BackendUnsupported(f"backend={backend} cannot run {architecture} ({why}): "
                             + (f"use backend={' or '.join(others)}" if others else "no backend here runs it"))


def convert_once(target: Path, convert: Callable[[Path], None]) -> Files:
    """Make `target` with convert(staging folder) once, atomically and under a lock (staging.build_once),
    recording how long it took; later calls find it and reuse it."""
    made = []

    def timed(folder: Path) -> None:
        start = time.perf_counter()
        convert(folder)
        (folder / CONVERSION_FILE).write_text(json.dumps({"conversion_time_s": time.perf_counter() - start}))
        made.append(True)

    build_once(target, timed, marker=CONVERSION_FILE)
    seconds = json.loads((target / CONVERSION_FILE).read_text())["conversion_time_s"]
    return Files(str(target), seconds, converted_now=bool(made))


@lru_cache(maxsize=1)
def tokenizer(path: Optional[str]):
    """The checkpoint's Hugging Face tokenizer (None without one), loaded once per process. It is the harness's,
    not the setting's (it encodes the prompts and decodes the outputs; a deployment feeds its runtime token ids):
    a job loads it before its memory is tracked (a Gemma's 262k-token vocabulary holds about 0.3 GB)."""
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def context_length(text_config) -> Optional[int]:
    """The longest sequence a Hugging Face model config allows (each runtime loads from one)."""
    return getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)


def require_precision(ok: bool, cfg: RunConfig, found: str) -> None:
    if not ok:
        raise PrecisionNotApplied(f"asked for {cfg.precision.name} on {cfg.backend.name}, but the loaded model "
                                  f"holds {found}")
