"""llama.cpp's own converter, convert_hf_to_gguf.py, for every architecture it handles.

It is not part of the llama-cpp-python wheel: `make runtimes` downloads llama-cpp-python's source distribution
once, builds the wheel from it and extracts the converter (the script, its conversion/ package and its gguf-py)
from the same file into <venv>/share/qsweep/llama.cpp-<version>/, so that the converter always matches the
installed llama.cpp and works offline. It runs as a subprocess of the same Python; the script puts its own
gguf-py first on its path, so the `gguf` package qsweep imports is untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import FrozenSet, Optional

SOURCE_ENV = "QSWEEP_LLAMA_CPP_SOURCE"  # another folder holding convert_hf_to_gguf.py (a llama.cpp checkout)
OUT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # what it writes; other types are quantized from F32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "generation_config.json")


class ConverterMissing(RuntimeError):
    """The converter is not where `make runtimes` puts it."""


def source_folder() -> Path:
    version = metadata.version("llama-cpp-python")
    folder = Path(os.environ.get(SOURCE_ENV) or Path(sys.prefix) / "share" / "qsweep" / f"llama.cpp-{version}")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ConverterMissing(f"backend=llama-cpp needs llama.cpp's converter for llama-cpp-python {version}, which "
                               f"is not in {folder}: run `make runtimes` (or set {SOURCE_ENV} to a llama.cpp "
                               "source folder of that version)")
    return folder


@lru_cache(maxsize=4)
def _architectures(folder: Path) -> FrozenSet[str]:
    """Every Hugging Face architecture the converter registers (@ModelBase.register("LlamaForCausalLM", ...)),
    read from its source rather than imported: importing it takes seconds and its own gguf package."""
    names = set()
    for file in sorted((folder / "conversion").glob("*.py")) + [folder / "convert_hf_to_gguf.py"]:
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", file.read_text(encoding="utf-8")):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return frozenset(names)


def converts(architecture: str) -> bool:
    return architecture in _architectures(source_folder())


def stage(checkpoint: Path, tokenizer: Path, folder: Path) -> Path:
    """The folder the converter reads: the checkpoint's config and weights and the tokenizer's files (random
    weights keep theirs apart), linked, not copied. A config.json written by transformers 5 for GPT-2 lacks
    n_ctx, which the converter reads: n_positions stands in (the same number in every GPT-2 config)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in checkpoint.iterdir():
        if file.is_file() and file.name != "config.json":
            (folder / file.name).symlink_to(file.resolve())
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file() and not (folder / name).exists():
            (folder / name).symlink_to((tokenizer / name).resolve())
    config = json.loads((checkpoint / "config.json").read_text())
    if config.get("model_type") == "gpt2":
        config.setdefault("n_ctx", config.get("n_positions"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def convert(folder: Path, out_path: Path, out_type: str) -> None:
    """convert_hf_to_gguf.py `folder` -> out_path (F32, F16 or BF16); its log beside the output."""
    script = source_folder() / "convert_hf_to_gguf.py"
    log = out_path.with_suffix(".log")
    with open(log, "w") as stream:
        done = subprocess.run([sys.executable, str(script), str(folder), "--outfile", str(out_path),
                               "--outtype", OUT_TYPES[out_type]], stdout=stream, stderr=subprocess.STDOUT,
                              env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"})  # its gguf-py
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed on {folder.name}: {_last_error(log)} (its log: {log})")


def _last_error(log: Path) -> Optional[str]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
