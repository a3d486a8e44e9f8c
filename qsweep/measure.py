"""The measurement contract every backend follows: warm-up, timed repeats, time to first token, and
memory trackers.

Every setting does the same work: greedy, exactly max_new_tokens new tokens per sequence (EOS cannot
end a generation early), generation.batch_size sequences at once. CUDA is synchronized around every
timed region and at the first-token stamp; the CPU uses perf_counter.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import psutil
import torch

from qsweep.backends import Runtime
from qsweep.config import GenerationConfig

GB = 1024**3


class PromptTooLong(ValueError):
    pass


@dataclass
class SpeedMetrics:
    """The speed metrics of a run; the field names are the MLflow metric names."""
    ttft_s: float  # median time to first token
    ttft_iqr_s: float
    latency_s: float  # median end-to-end generate
    latency_p90_s: float
    latency_iqr_s: float
    tokens_per_s: float  # new tokens of one sequence / median latency (the seed's definition)
    throughput_tokens_per_s: float  # batch_size x new tokens / median latency: what the machine delivers
    prefill_tokens_per_s: float  # prompt tokens of the whole batch / TTFT, median over samples
    decode_tokens_per_s: float  # per sequence: tokens after the first / time after the first, median
    decode_tokens_per_s_iqr: float
    new_tokens: int
    timed_samples: int  # timed generate calls (each of batch_size sequences)
    phase_warmup_s: float = 0.0  # wall time of the untimed warm-up generations
    phase_generation_s: float = 0.0  # wall time of the timed generations, all samples


@dataclass
class MemoryMetrics:
    """Peak memory over the tracked region; names are the MLflow metric names."""
    peak_rss_gb: float
    peak_vram_gb: Optional[float] = None  # torch peak allocated on the GPU
    gpu_mem_used_gb: Optional[float] = None  # device level, NVML: includes the CUDA context


@dataclass
class Generation:
    prompt_ids: List[int]
    output_ids: List[int]  # new tokens only


def check_context(prompt_ids: List[List[int]], max_new_tokens: int, limit: Optional[int]) -> None:
    longest = max(map(len, prompt_ids))
    if limit and longest + max_new_tokens > limit:
        room = limit - longest
        raise PromptTooLong(
            f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {limit} tokens: "
            + (f"lower generation.max_new_tokens to {room} or shorten the prompt" if room > 0 else
               f"the prompt alone fills it; shorten it (generation.prompt_tokens below {limit})"))


def _median_iqr(values: List[float]) -> tuple:
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1


def _progress(total: int):
    """A progress bar over the timed generations, on a terminal only (logs and pipes get nothing)."""
    import sys

    if total < 2 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="qsweep: timed generations", unit="gen", leave=False)


def batches(prompt_ids: List[List[int]], size: int) -> List[List[List[int]]]:
    """One batch per prompt: that prompt first, then the next ones, cycled to fill `size` sequences."""
    return [[prompt_ids[(i + k) % len(prompt_ids)] for k in range(size)] for i in range(len(prompt_ids))]


def _spread_too_wide(latencies: List[float], gen: GenerationConfig, timed_s: float) -> bool:
    """generation.repeat_until_spread: another round while the latencies' IQR / median is above it, until
    generation.repeat_time_cap_s of timed generation has passed."""
    if gen.repeat_until_spread is None or timed_s >= gen.repeat_time_cap_s:
        return False
    median, iqr = _median_iqr(latencies)
    return len(latencies) < 4 or iqr / median > gen.repeat_until_spread


class WrongLength(RuntimeError):
    """A runtime did not generate exactly max_new_tokens tokens for every sequence."""


def generate_timed(runtime: Runtime, prompt_ids: List[List[int]], gen: GenerationConfig,
                   device: str) -> tuple[SpeedMetrics, List[Generation]]:
    """Warm-up, then `repeats` rounds of one timed generate per batch; a prompt's Generation is the
    first sequence of its batch."""
    cuda = device == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def run(batch):
        first = []
        start = now()
        new = runtime.generate(batch, gen.max_new_tokens, lambda: first.append(now()))
        end = now()
        if len(new) != len(batch) or any(len(seq) != gen.max_new_tokens for seq in new):
            raise WrongLength(f"asked for {len(batch)} x {gen.max_new_tokens} new tokens, got "
                              f"{[len(seq) for seq in new]}")
        return new, end - start, first[0] - start

    work = batches(prompt_ids, gen.batch_size)
    started = time.perf_counter()
    # Compiled graphs depend on the prompt length: warm every batch up, or compilation is timed.
    for _ in range(gen.warmup):
        for batch in (work if gen.compile else work[:1]):
            run(batch)
    warmed = time.perf_counter()
    latencies, ttfts, decode_rates, prefill_rates, outputs = [], [], [], [], {}
    progress = _progress(gen.repeats * len(work))
    rounds = 0
    while rounds < gen.repeats or _spread_too_wide(latencies, gen, time.perf_counter() - warmed):
        rounds += 1
        for i, batch in enumerate(work):
            new, latency, ttft = run(batch)
            if progress is not None:  # outside the timed region
                progress.update()
            latencies.append(latency)
            ttfts.append(ttft)
            prefill_rates.append(sum(map(len, batch)) / ttft)
            if gen.max_new_tokens > 1:
                decode_rates.append((gen.max_new_tokens - 1) / (latency - ttft))
            outputs[i] = Generation(list(batch[0]), list(new[0]))
    finished = time.perf_counter()

    if progress is not None:
        progress.close()
    latency, latency_iqr = _median_iqr(latencies)
    ttft, ttft_iqr = _median_iqr(ttfts)
    decode, decode_iqr = _median_iqr(decode_rates) if decode_rates else (float("nan"), 0.0)
    metrics = SpeedMetrics(
        ttft_s=ttft, ttft_iqr_s=ttft_iqr, latency_s=latency,
        latency_p90_s=statistics.quantiles(latencies, n=10, method="inclusive")[-1] if len(latencies) > 1 else latency,
        latency_iqr_s=latency_iqr, tokens_per_s=gen.max_new_tokens / latency,
        throughput_tokens_per_s=gen.batch_size * gen.max_new_tokens / latency,
        prefill_tokens_per_s=statistics.median(prefill_rates),
        decode_tokens_per_s=decode, decode_tokens_per_s_iqr=decode_iqr,
        new_tokens=gen.max_new_tokens, timed_samples=len(latencies), phase_warmup_s=warmed - started,
        phase_generation_s=finished - warmed)
    return metrics, [outputs[i] for i in range(len(prompt_ids))]


@dataclass
class MemoryTracker:
    """Peak RSS (and on CUDA: torch peak allocated, NVML device use) over a region.

    On Linux the kernel keeps the exact peak RSS (VmHWM), which qsweep resets at the start of the
    region: no sampling, and no extra thread competing with the measured one for the 2 cores' worth
    of OpenMP threads. A polling thread is used only where that is unavailable, or for NVML on CUDA."""
    device: str
    interval_s: float = 0.05
    _peak_rss: int = 0
    _peak_nvml: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def track(self) -> Iterator["MemoryTracker"]:
        process = psutil.Process()
        nvml_handle = _nvml_handle() if self.device == "cuda" else None
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        kernel_peak = _reset_kernel_peak_rss()

        def poll():
            while True:
                if not kernel_peak:
                    self._peak_rss = max(self._peak_rss, process.memory_info().rss)
                if nvml_handle is not None:
                    import pynvml
                    self._peak_nvml = max(self._peak_nvml, pynvml.nvmlDeviceGetMemoryInfo(nvml_handle).used)
                if self._stop.wait(self.interval_s):
                    return

        poller = threading.Thread(target=poll, daemon=True)
        if not kernel_peak or nvml_handle is not None:
            poller.start()
        try:
            yield self
        finally:
            self._stop.set()
            if poller.is_alive():
                poller.join()
            if kernel_peak:
                self._peak_rss = max(self._peak_rss, _kernel_peak_rss())

    def metrics(self) -> MemoryMetrics:
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


def _nvml_handle():
    try:
        import pynvml

        pynvml.nvmlInit()
        # By UUID, so CUDA_VISIBLE_DEVICES renumbering cannot point NVML at another GPU.
        uuid = torch.cuda.get_device_properties(torch.cuda.current_device()).uuid
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except Exception:  # NVML is optional: no driver library, or a container without it
        return None
