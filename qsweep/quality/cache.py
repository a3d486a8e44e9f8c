"""The fp32 references and each setting's text scores on disk, under <cache_dir>/references/: their keys,
their formats, and writes that no parallel job sees half done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from safetensors.torch import load_file, save_file

from qsweep import environment, sources
from qsweep.config import RunConfig
from qsweep.quality.scoring import TextQuality, TextReference
from qsweep.staging import write_file

# Per position the reference keeps its TOP_K most likely tokens and TAIL_DRAWS tokens drawn from the rest
# (scoring.kl_estimate): 8 bytes each, 4 KB per position (2,100 positions of the built-in text: 8.6 MB).
TOP_K, TAIL_DRAWS = 256, 256
KEEP = (TOP_K, TAIL_DRAWS)
# Bump when what is stored changes meaning: every key changes, so files of an older format are never read
# (they are rebuilt). 2: the text reference holds fp32's NLL per position, the scores the KL distribution.
# 3: draws from the reference's tail (an unbiased KL), standard errors in the scores.
FORMAT = 3


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ReferencePaths:
    text: Path
    greedy: Path
    scores: Path  # this setting's text scores, reused by every job of it (batch sizes, prompt lengths)
    lock: Path


def reference_paths(cfg: RunConfig, checkpoint_path: str, windows, scored_from: int,
                    prompt_ids: List[List[int]]) -> ReferencePaths:
    folder = Path(cfg.paths.cache_dir).expanduser() / "references"
    fingerprint = sources.fingerprint(checkpoint_path)
    text_key = _key(fingerprint, cfg.device.name, windows, scored_from, KEEP)
    greedy_key = _key(fingerprint, cfg.device.name, prompt_ids, cfg.generation.max_new_tokens)
    # the text scores depend on the weights, windows, runtime, precision, device and library versions only
    scores_key = _key(text_key, dataclasses.asdict(cfg.backend), dataclasses.asdict(cfg.precision),
                      environment.package_versions())
    return ReferencePaths(folder / f"text-{text_key}.safetensors", folder / f"greedy-{greedy_key}.safetensors",
                          folder / f"scores-{scores_key}.json", folder / f"{_key(fingerprint, cfg.device.name)}.lock")


def load_scores(path: Path) -> Optional[TextQuality]:
    return TextQuality(**json.loads(path.read_text())) if path.is_file() else None


def save_scores(scores: TextQuality, path: Path) -> None:
    write_file(path, lambda staging: staging.write_text(json.dumps(dataclasses.asdict(scores))))


def _save_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    write_file(path, lambda staging: save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging),
                                               metadata={k: json.dumps(v) for k, v in metadata.items()}))


def load_text_reference(path: Path) -> TextReference:
    data = load_file(str(path))
    return TextReference(**{f.name: data[f.name].long() if f.name.endswith("_ids") else data[f.name]
                            for f in dataclasses.fields(TextReference)})


def save_text_reference(ref: TextReference, path: Path, metadata: dict) -> None:
    _save_tensors({f.name: t.int() if f.name.endswith("_ids") else t
                   for f, t in zip(dataclasses.fields(TextReference), ref.tensors())}, path, metadata)


def load_greedy(path: Path) -> List[List[int]]:
    return load_file(str(path))["output_ids"].tolist()


def save_greedy(outputs: List[List[int]], path: Path, metadata: dict) -> None:
    _save_tensors({"output_ids": torch.tensor(outputs, dtype=torch.long)}, path, metadata)
