"""Peak memory over a job's region: process RSS, and on CUDA torch's peak allocation and NVML's device use."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import psutil
import torch

from qsweep.trackers.base import Result, Tracker, nvml_handle

GB = 1024**3


@dataclass
class MemoryMetrics(Result):
    """Peak memory over the tracked region; names are the MLflow metric names."""
    peak_rss_gb: float
    peak_vram_gb: Optional[float] = None  # torch peak allocated on the GPU
    gpu_mem_used_gb: Optional[float] = None  # device level, NVML: includes the CUDA context


class MemoryTracker(Tracker):
    """Peak RSS (and on CUDA: torch peak allocated, NVML device use) over a region.

    On Linux the kernel keeps the exact peak RSS (VmHWM), which qsweep resets at the start of the
    region: no sampling, and no extra thread competing with the measured one for the 2 cores' worth
    of OpenMP threads. A polling thread is used only where that is unavailable, or for NVML on CUDA."""
    result_type = MemoryMetrics

    def __init__(self, device: str, interval_s: float = 0.05):
        super().__init__(device)
        self.interval_s = interval_s
        self._peak_rss = 0
        self._peak_nvml = 0
        self._stop = threading.Event()

    @contextmanager
    def track(self) -> Iterator["MemoryTracker"]:
        process = psutil.Process()
        handle = nvml_handle() if self.device == "cuda" else None
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        kernel_peak = _reset_kernel_peak_rss()

        def poll():
            while True:
                if not kernel_peak:
                    self._peak_rss = max(self._peak_rss, process.memory_info().rss)
                if handle is not None:
                    import pynvml
                    self._peak_nvml = max(self._peak_nvml, pynvml.nvmlDeviceGetMemoryInfo(handle).used)
                if self._stop.wait(self.interval_s):
                    return

        poller = threading.Thread(target=poll, daemon=True)
        if not kernel_peak or handle is not None:
            poller.start()
        try:
            yield self
        finally:
            self._stop.set()
            if poller.is_alive():
                poller.join()
            if kernel_peak:
                self._peak_rss = max(self._peak_rss, _kernel_peak_rss())

    def result(self) -> MemoryMetrics:
        if self.device != "cuda":
            return MemoryMetrics(peak_rss_gb=self._peak_rss / GB)
        return MemoryMetrics(peak_rss_gb=self._peak_rss / GB,
                             peak_vram_gb=torch.cuda.max_memory_allocated() / GB,
                             gpu_mem_used_gb=self._peak_nvml / GB if self._peak_nvml else None)


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
