"""The fp32 reference of a checkpoint: stored by an fp32 job from its own work, or built once by any other
job, which loads the checkpoint as the reference runtime (transformers, fp32) on its device."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from filelock import FileLock

from qsweep import backends, measure
from qsweep.backends import Files, Runtime
from qsweep.config import BackendConfig, PrecisionConfig, RunConfig
from qsweep.quality.cache import KEEP, ReferencePaths, save_greedy, save_text_reference
from qsweep.quality.scoring import TextScores, as_reference, score_text
from qsweep.quality.text import Windows
from qsweep.sources import Checkpoint


def store_own(runtime: Runtime, paths: ReferencePaths, cut: Windows, greedy: Optional[List[List[int]]], meta: dict,
              need_scores: bool) -> Optional[TextScores]:
    """An fp32 job is the reference: store its text reference, and its greedy outputs (`greedy`, when
    given), where missing. Its scores when it scored the text (need_scores, or no text reference yet)."""
    scored = need_scores or not paths.text.is_file()
    scores = score_text(runtime, cut.windows, keep=KEEP, scored_from=cut.scored_from) if scored else None
    meta = {**meta, "built_by": "fp32 job"}
    with FileLock(str(paths.lock)):
        if not paths.text.is_file():
            save_text_reference(as_reference(scores), paths.text, meta)
        if greedy is not None and not paths.greedy.is_file():
            save_greedy(greedy, paths.greedy, meta)
    return scores


def build_missing(cfg: RunConfig, checkpoint: Checkpoint, paths: ReferencePaths, cut: Windows, prompt_ids) -> bool:
    """Build whatever reference is missing, under the lock; True when this job built it (False when it
    was there, or another job built it while this one waited)."""
    if paths.text.is_file() and paths.greedy.is_file():
        return False
    with FileLock(str(paths.lock)):
        if paths.text.is_file() and paths.greedy.is_file():
            return False
        _build(cfg, checkpoint, paths, cut, prompt_ids)
        return True


def _build(cfg: RunConfig, checkpoint: Checkpoint, paths: ReferencePaths, cut: Windows, prompt_ids) -> None:
    """Load the checkpoint as the reference runtime on the run's device and store what is missing."""
    fp32 = dataclasses.replace(cfg, precision=PrecisionConfig(name="fp32", dtype="float32"),
                               backend=BackendConfig(), generation=dataclasses.replace(
                                   cfg.generation, warmup=0, repeats=1, compile=False, batch_size=1))
    reference = backends.get(fp32.backend.name).load(fp32, checkpoint, Files(checkpoint.path))
    try:
        meta = {"checkpoint": checkpoint.path, "device": cfg.device.name, "built_by": "reference build"}
        if not paths.text.is_file():
            scores = score_text(reference, cut.windows, keep=KEEP, scored_from=cut.scored_from)
            save_text_reference(as_reference(scores), paths.text, meta)
        if not paths.greedy.is_file():
            _, outputs = measure.generate_timed(reference, prompt_ids, fp32.generation, cfg.device.name)
            save_greedy([o.output_ids for o in outputs], paths.greedy, meta)
    finally:
        del reference
