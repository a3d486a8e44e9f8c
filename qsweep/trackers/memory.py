"""Memory over a job's region (loading and the timed generations): the setting's own, the process's peak,
and on CUDA torch's peak allocation and NVML's device use.

The setting's own memory (`setting_memory_gb`) is what the loaded model and its runtime need to generate:
on the CPU the process's peak RSS over the region above its RSS when the region began (`harness_rss_gb`:
the worker's interpreter, torch, transformers and the tokenizer, loaded before it); on CUDA the peak VRAM
allocated inside the region above what was allocated when it began (torch's allocator, or NVML's device use
for a runtime that allocates outside torch). Every figure is read when the region ends, so what runs after
it (the quality pass, the fp32 reference) cannot change them.

No thread: on Linux the kernel keeps the exact peak RSS (VmHWM), reset when the region starts; torch keeps
its peak allocation; NVML is read at the region's edges and around the timed generations, never during them."""

from __future__ import annotations

import ctypes
import resource
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import psutil
import torch

from qsweep.tracking.names import TAG_MEMORY_PEAK
from qsweep.trackers.base import Result, Tracker, Work, column, nvml_handle

GB = 1024**3


@dataclass
class MemoryMetrics(Result):
    """Names are the MLflow metric names; GB are GiB."""
    peak_rss_gb: float  # the process's peak RSS over the region: the harness and the setting together
    setting_memory_gb: Optional[float] = field(  # what the setting needs to generate (see the module's words)
        default=None, metadata=column("Setting memory (GB)", 2))
    harness_rss_gb: Optional[float] = None  # the worker's RSS when the region began, before the model loads
    peak_vram_gb: Optional[float] = None  # torch's peak allocation on the GPU over the region
    gpu_mem_used_gb: Optional[float] = None  # NVML's device use at the region's edges: includes the CUDA context


class MemoryTracker(Tracker):
    """Peak RSS (and on CUDA: torch's peak allocation, NVML's device use) over the job's region."""
    result_type = MemoryMetrics

    def __init__(self, device: str):
        super().__init__(device)
        self._handle = None
        self._harness = self._peak_rss = 0
        self._vram_start = self._vram_peak = 0
        self._nvml_start = self._nvml_peak = 0
        self._peak_source = ""

    @contextmanager
    def track(self) -> Iterator["MemoryTracker"]:
        cuda = self.device == "cuda"
        _trim_heap()  # freed heap pages still counted as RSS would hide the setting's first allocations
        self._harness = psutil.Process().memory_info().rss
        if cuda:
            self._handle = nvml_handle()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._vram_start = torch.cuda.memory_allocated()
            self._nvml_start = self._nvml_peak = self._nvml_used()
        kernel_peak = _reset_kernel_peak_rss()
        try:
            yield self
        finally:  # the figures are taken here, at the region's end
            if kernel_peak:
                self._peak_rss = _kernel_peak_rss()
            else:  # the peak since the worker started: an upper bound of the region's
                self._peak_rss, self._peak_source = _lifetime_peak_rss(), "since the worker started"
            self._peak_rss = max(self._peak_rss, self._harness)
            if cuda:
                torch.cuda.synchronize()
                self._vram_peak = torch.cuda.max_memory_allocated()
                self._sample_nvml()

    @contextmanager
    def timed(self, work: Work) -> Iterator[None]:
        if self._handle is not None:  # before and after the timed generations, not during them
            self._sample_nvml()
        yield
        if self._handle is not None:
            self._sample_nvml()

    def _nvml_used(self) -> int:
        if self._handle is None:
            return 0
        import pynvml

        return pynvml.nvmlDeviceGetMemoryInfo(self._handle).used

    def _sample_nvml(self) -> None:
        self._nvml_peak = max(self._nvml_peak, self._nvml_used())

    def result(self) -> MemoryMetrics:
        tags = {TAG_MEMORY_PEAK: self._peak_source} if self._peak_source else {}
        metrics = MemoryMetrics(peak_rss_gb=self._peak_rss / GB, harness_rss_gb=self._harness / GB,
                                setting_memory_gb=(self._peak_rss - self._harness) / GB, tags=tags)
        if self.device != "cuda":
            return metrics
        metrics.peak_vram_gb = self._vram_peak / GB
        metrics.gpu_mem_used_gb = self._nvml_peak / GB if self._nvml_peak else None
        # A runtime that allocates outside torch (CTranslate2) shows only in NVML's device use.
        torch_grew = self._vram_peak - self._vram_start
        nvml_grew = self._nvml_peak - self._nvml_start if self._nvml_peak else 0
        metrics.setting_memory_gb = (torch_grew if torch_grew > 0 else nvml_grew) / GB
        return metrics


def _trim_heap() -> None:
    try:  # glibc keeps freed heap pages mapped; hand them back (elsewhere there is nothing to do)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_kernel_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux 4.0+); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _kernel_peak_rss() > 0
    except OSError:
        return False


def _kernel_peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


def _lifetime_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere
