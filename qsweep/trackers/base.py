"""The shape every tracker has: one measured quantity, a region it measures around, a typed result."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Iterator, Optional, Tuple, Type

COLUMN = "qsweep.column"  # the key of a field's metadata that makes it a report column


@dataclass(frozen=True)
class Column:
    """How the report shows a result's field: a column of the main table, and optionally a chart of it
    against KL vs fp32 (one point per setting)."""
    header: str
    decimals: int
    chart: str = ""  # the chart's axis label, e.g. "J per output token (lower is cheaper)"; "": no chart


def column(header: str, decimals: int, chart: str = "") -> Dict[str, Column]:
    """A field's metadata (`field(metadata=column(...))`): the report shows the field as a column."""
    return {COLUMN: Column(header, decimals, chart)}


@dataclass
class Result:
    """A tracker's result. Every field but `tags` is a metric named by the field (None: not measured);
    `tags` says how it was measured, or why it was not. Fields declared with `column(...)` metadata are
    report columns (shown when some run has the metric)."""
    tags: Dict[str, str] = field(default_factory=dict, kw_only=True)

    def metrics(self) -> Dict[str, Optional[float]]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tags"}

    @classmethod
    def columns(cls) -> Dict[str, Column]:
        """Metric name -> its report column, in field order."""
        return {f.name: f.metadata[COLUMN] for f in dataclasses.fields(cls) if COLUMN in f.metadata}


@dataclass
class Work:
    """What the timed generations did, counted by measure.generate_timed, for per-token figures."""
    prompt_tokens: int = 0  # every sequence of every timed generation
    output_tokens: int = 0

    def count(self, prompt_tokens: int, output_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.output_tokens += output_tokens


class Tracker:
    """One measured quantity. A job enters track() around loading and the timed generations, and timed()
    around the timed generations alone (`work` is counted when it exits); result() comes after both."""
    devices: ClassVar[Tuple[str, ...]] = ("cpu", "cuda")  # where it measures; a job runs it on these only
    result_type: ClassVar[Type[Result]] = Result  # what result() returns: the report reads its columns

    def __init__(self, device: str):
        self.device = device

    @contextmanager
    def track(self) -> Iterator["Tracker"]:
        yield self

    @contextmanager
    def timed(self, work: Work) -> Iterator[None]:
        yield

    def result(self) -> Result:
        raise NotImplementedError


def nvml_handle():
    """The NVML handle of the GPU torch uses; None without NVML (no driver library, a container without
    it, nvidia-ml-py not installed)."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        # By UUID, so CUDA_VISIBLE_DEVICES renumbering cannot point NVML at another GPU.
        uuid = torch.cuda.get_device_properties(torch.cuda.current_device()).uuid
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except Exception:  # NVML is optional
        return None
