"""The rows of the report: one per finished job, read from its run's tags (what it measured), grouped by model
and ordered like the T4 notebook's table; rows of one label measured in different configurations told apart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional

from qsweep.config import HASHED_SECTIONS, BackendConfig, PrecisionConfig
from qsweep.tracking import (PARAM_COMPILE, PARAM_QUANT_TYPE, TAG_BACKEND, TAG_BATCH_SIZE, TAG_COMPILE, TAG_DEVICE,
                             TAG_MAX_NEW_TOKENS, TAG_MODEL, TAG_PRECISION, TAG_PROMPT_TOKENS, TAG_QUANT_TYPE,
                             TAG_RUNTIME, RunRecord)

DEFAULT_BACKEND = BackendConfig().name
DEFAULT_QUANT_TYPE = PrecisionConfig.quant_type
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8", "int4")
DEVICE_ORDER = ("cpu", "cuda")
DEGENERATE = "degenerate_output"
DEGENERATE_VS_FP32 = "degenerate_vs_fp32"  # broken where fp32's own output is not (runs before it: degenerate_output)
DONE = ("FINISHED", "SKIPPED")  # a skipped job stands for an earlier finished run


@dataclass
class Row:
    """One finished job as the tables show it."""
    job: RunRecord
    model: str
    device: str
    precision: str
    max_new_tokens: int
    batch_size: int = 1
    prompt_tokens: object = "text"  # the number of prompt tokens, or "text" for the text prompts
    quant_type: str = DEFAULT_QUANT_TYPE  # int4's 4-bit type
    compiled: bool = False
    backend: str = DEFAULT_BACKEND
    runtime: str = ""  # the backend's runtime and weight format
    differs: str = ""  # what tells it from another row with the same label and length (tell_apart)

    @property
    def setting(self) -> str:
        """The T4 notebook's names (CPU FP32, GPU FP16), then what else was chosen: int4's FP4, compilation,
        and the runtime and its format on a backend other than the default."""
        words = ["GPU" if self.device == "cuda" else self.device.upper(), self.precision.upper()]
        words += [self.quant_type.upper()] if self.quant_type != DEFAULT_QUANT_TYPE else []
        words += ["compiled"] if self.compiled else []
        words += [self.runtime] if self.backend != DEFAULT_BACKEND and self.runtime else []
        return " ".join(words) + (f" ({self.differs})" if self.differs else "")

    @property
    def metrics(self) -> dict:
        return self.job.metrics

    @property
    def degenerate(self) -> bool:
        """Broken by the setting (where fp32's output is not): marked, and never on the front."""
        return broken_beyond_fp32(self.metrics)

    @property
    def output_breaks(self) -> bool:
        """Some output is broken, fp32's too perhaps (the degenerate_output metric)."""
        return bool(self.metrics.get(DEGENERATE))

    def sort_key(self):
        prompt = self.prompt_tokens if isinstance(self.prompt_tokens, int) else 0  # text prompts first
        return (self.max_new_tokens, _index(DEVICE_ORDER, self.device), prompt,
                (self.backend != DEFAULT_BACKEND, self.backend), _index(PRECISION_ORDER, self.precision),
                self.batch_size)


def _index(order: tuple, value: str) -> int:
    return order.index(value) if value in order else len(order)


def row(job: RunRecord) -> Row:
    """The job's row, from its tags; runs recorded before the quant_type and compile tags: from their params."""
    tags = job.tags
    prompt = tags.get(TAG_PROMPT_TOKENS, "text")
    return Row(job, tags[TAG_MODEL], tags.get(TAG_DEVICE, "?"), tags.get(TAG_PRECISION, "?"),
               int(tags.get(TAG_MAX_NEW_TOKENS, job.metrics.get("new_tokens", 0))), int(tags.get(TAG_BATCH_SIZE, 1)),
               int(prompt) if prompt.isdigit() else prompt,
               _quant_type(job),
               (tags.get(TAG_COMPILE) or job.params.get(PARAM_COMPILE, "false")) == "true",
               tags.get(TAG_BACKEND, DEFAULT_BACKEND), tags.get(TAG_RUNTIME, ""))


def _quant_type(job: RunRecord) -> str:
    """bitsandbytes' 4-bit type, on backend=transformers only (runs of other backends before issue 26 were
    tagged with it too, and their params hold it: their runtime tag names their own type)."""
    if job.tags.get(TAG_BACKEND, DEFAULT_BACKEND) != DEFAULT_BACKEND:
        return DEFAULT_QUANT_TYPE
    return job.tags.get(TAG_QUANT_TYPE) or job.params.get(PARAM_QUANT_TYPE, DEFAULT_QUANT_TYPE)


def rows_by_model(jobs: List[RunRecord]) -> Dict[str, List[Row]]:
    """Finished and skipped jobs, grouped by model (in order of appearance), each sorted like the T4 notebook's
    table."""
    models: Dict[str, List[Row]] = {}
    for job in jobs:
        if job.status in DONE and TAG_MODEL in job.tags:
            new = row(job)
            models.setdefault(new.model, []).append(new)
    for rows in models.values():
        tell_apart(rows)
    return {model: sorted(rows, key=Row.sort_key) for model, rows in models.items()}


def tell_apart(rows: List[Row]) -> None:
    """Rows of one label measured at one length in different configurations (the runs of several sweeps, say
    other prompts or repeats) would read as one setting measured twice: each row of that label gets the
    values that differ between them in its label, "GPU FP16 (1 prompt, repeats=2)"."""
    labels: Dict[tuple, List[Row]] = {}
    for one in rows:
        labels.setdefault((one.setting, one.batch_size, one.prompt_tokens), []).append(one)
    for same_label in labels.values():
        measured = [_measured(one) for one in same_label]
        by_length: Dict[int, List[dict]] = {}
        for one, params in zip(same_label, measured):
            by_length.setdefault(one.max_new_tokens, []).append(params)
        clashes = [group for group in by_length.values() if len(group) > 1]
        if not clashes:
            continue
        differing = sorted({k for group in clashes for k in set().union(*group)
                            if len({params.get(k) for params in group}) > 1})
        for one, params in zip(same_label, measured):
            one.differs = (", ".join(_param_text(k, params.get(k)) for k in differing)
                           or f"config {one.job.config_hash}")


def _measured(one: Row) -> Dict[str, str]:
    """The run's params that its config_hash covers."""
    return {k: v for k, v in one.job.params.items() if k.split(".")[0] in HASHED_SECTIONS}


def _param_text(key: str, value: Optional[str]) -> str:
    """generation.repeats=2 -> "repeats=2"; a list -> how many: "1 prompt", "2 prompts"."""
    name = key.rsplit(".", 1)[-1]
    if value is None:
        return f"no {name}"
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if isinstance(items, list):
        return f"{len(items)} {name[:-1] if len(items) == 1 and name.endswith('s') else name}"
    return f"{name}={value}"


def not_finished(jobs: List[RunRecord]) -> List[RunRecord]:
    return [job for job in jobs if job.status not in DONE]


def latest_per_config(jobs: List[RunRecord]) -> List[RunRecord]:
    """Several sweeps of one experiment: per config_hash the newest finished run, else its newest failure."""
    chosen: Dict[str, RunRecord] = {}
    for job in jobs:  # oldest first
        key = job.config_hash or job.name
        if job.status == "FINISHED" or (key not in chosen or chosen[key].status != "FINISHED"):
            chosen[key] = job
    return list(chosen.values())


def by_setting(rows: List[Row]) -> Dict[str, List[Row]]:
    """Setting -> its rows, settings in the T4 notebook's order (CPU first, then by precision)."""
    settings: Dict[str, List[Row]] = {}
    for one in sorted(rows, key=lambda r: (_index(DEVICE_ORDER, r.device), _index(PRECISION_ORDER, r.precision))):
        settings.setdefault(one.setting, []).append(one)
    return settings


def longest_per_setting(rows: List[Row]) -> Dict[str, Row]:
    return {s: max(rs, key=lambda r: r.max_new_tokens) for s, rs in by_setting(rows).items()}


def broken_beyond_fp32(metrics: dict) -> bool:
    """The setting broke the output (not the model, which may loop at fp32 too): what rules a run out."""
    return metrics.get(DEGENERATE_VS_FP32, metrics.get(DEGENERATE)) == 1
