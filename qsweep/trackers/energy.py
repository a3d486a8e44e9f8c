"""Energy of the timed generations: the GPU's NVML counter on CUDA, the CPU's RAPL counters on the CPU.

Both counters are read once before and once after all the timed generations (prefill and decode
together, every repeat): NVML's total-energy counter moves only every 20-100 ms, so a single prefill
(milliseconds) or a short generation would hold no update, or one that belongs to the time around
it. A window shorter than MIN_WINDOW_S, or one in which the counter did not move, gives no per-token
figure and a tag that says why. Where no counter can be read there is no energy metric at all, and
the `energy_unavailable` tag says why: never an estimate from the chip's TDP, never a zero."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Tuple

from qsweep.tracking.names import TAG_ENERGY_SOURCE, TAG_ENERGY_UNAVAILABLE
from qsweep.trackers.base import Result, Tracker, Work, column, nvml_handle

MIN_WINDOW_S = 0.5  # several NVML counter updates
IDLE_S = 0.3  # how long the idle power is sampled before the job
POWERCAP = Path("/sys/class/powercap")


@dataclass
class EnergyMetrics(Result):
    """Names are the MLflow metric names; None: not measured (the tags say why)."""
    energy_j: Optional[float] = None  # all timed generations, prefill and decode
    energy_per_output_token_j: Optional[float] = field(  # energy_j / every output token of them
        default=None, metadata=column("J/token", 4, chart="J per output token (lower is cheaper)"))
    energy_per_token_j: Optional[float] = None  # energy_j / (prompt + output tokens)
    avg_power_w: Optional[float] = None  # energy_j / the timed generations' wall time
    tokens_per_joule: Optional[float] = None  # output tokens / energy_j
    idle_power_w: Optional[float] = None  # before the job loads: subtract it for the job's own share
    power_limit_w: Optional[float] = None  # NVML's enforced power limit (GPU only)


class Unavailable(Exception):
    """No energy counter can be read here; the message says why."""


class NvmlCounter:
    """The GPU's total energy since the driver loaded, in millijoules (Volta and newer)."""

    def __init__(self):
        self.handle = nvml_handle()
        if self.handle is None:
            raise Unavailable("NVML unavailable: no NVIDIA driver library, or nvidia-ml-py not installed")
        import pynvml

        self.pynvml = pynvml
        try:
            self.read()
        except pynvml.NVMLError as err:
            raise Unavailable(f"this GPU has no NVML total-energy counter ({err}; Volta and newer have one)")
        self.source = "nvml"

    def read(self) -> int:
        return self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def joules(self, start: int, end: int) -> float:
        return (end - start) / 1e3

    def idle_power_w(self) -> Optional[float]:
        samples = []
        for _ in range(4):  # NVML's power reading is itself an average over a short window
            samples.append(self._watts(self.pynvml.nvmlDeviceGetPowerUsage))
            time.sleep(IDLE_S / 4)
        return None if None in samples else statistics.median(samples)

    def power_limit_w(self) -> Optional[float]:
        return self._watts(self.pynvml.nvmlDeviceGetEnforcedPowerLimit)

    def _watts(self, reading) -> Optional[float]:
        try:
            return reading(self.handle) / 1e3
        except self.pynvml.NVMLError:  # not every GPU reports its power: the energy figures stand without it
            return None


class RaplCounter:
    """The CPU packages' (and their DRAM's, where exposed) energy in microjoules, from Linux powercap
    (Intel, and AMD Zen through the same driver). Core, uncore and psys domains overlap these: skipped."""

    def __init__(self, root: Path):
        zones = [z for z in sorted(root.glob("intel-rapl:*")) if _domain(z).startswith("package")
                 or _domain(z) == "dram"]
        if not zones:
            raise Unavailable(f"no RAPL package domain under {root} (virtual machines expose none; "
                              "elsewhere the intel_rapl driver is not loaded)")
        self.files = [zone / "energy_uj" for zone in zones]
        self.ranges = [_read_int(zone / "max_energy_range_uj") for zone in zones]
        self.read()
        self.source = "rapl " + ",".join(f"{z.name}({_domain(z)})" for z in zones)

    def read(self) -> Tuple[int, ...]:
        return tuple(_read_int(file) for file in self.files)

    def joules(self, start: Tuple[int, ...], end: Tuple[int, ...]) -> float:
        # a counter passing max_energy_range_uj starts again at 0 (one wrap at most: minutes at full power)
        return sum(b - a if b >= a else b + limit - a for a, b, limit in zip(start, end, self.ranges)) / 1e6

    def idle_power_w(self) -> float:
        start, began = self.read(), time.perf_counter()
        time.sleep(IDLE_S)
        return self.joules(start, self.read()) / (time.perf_counter() - began)

    def power_limit_w(self) -> Optional[float]:
        return None


def _domain(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


def _read_int(file: Path) -> int:
    try:
        return int(file.read_text())
    except OSError as err:
        raise Unavailable(f"RAPL counter unreadable: {file}: {err.strerror or err} (RAPL counters are readable "
                          "by root only since Linux 5.10)")


class EnergyTracker(Tracker):
    """Energy over the timed generations; idle power sampled when the job's region starts."""
    result_type = EnergyMetrics

    def __init__(self, device: str, powercap: Optional[Path] = None):
        super().__init__(device)
        self.powercap = powercap or POWERCAP
        self._counter, self._why = None, "the job never started its measurement"
        self._idle_w: Optional[float] = None
        self._window: Optional[Tuple[float, float, Work]] = None

    @contextmanager
    def track(self) -> Iterator["EnergyTracker"]:
        try:
            self._counter = NvmlCounter() if self.device == "cuda" else RaplCounter(self.powercap)
            self._idle_w = self._counter.idle_power_w()
        except Unavailable as err:
            self._counter, self._why = None, str(err)
        yield self

    @contextmanager
    def timed(self, work: Work) -> Iterator[None]:
        if self._counter is None:
            yield
            return
        start, began = self._counter.read(), time.perf_counter()
        yield
        end, seconds = self._counter.read(), time.perf_counter() - began
        self._window = self._counter.joules(start, end), seconds, work

    def result(self) -> EnergyMetrics:
        if self._counter is None:
            return EnergyMetrics(tags={TAG_ENERGY_UNAVAILABLE: self._why})
        metrics = EnergyMetrics(idle_power_w=self._idle_w, power_limit_w=self._counter.power_limit_w(),
                                tags={TAG_ENERGY_SOURCE: self._counter.source})
        why = _too_short(self._window)
        if why:
            metrics.tags[TAG_ENERGY_UNAVAILABLE] = why
            return metrics
        joules, seconds, work = self._window
        metrics.energy_j, metrics.avg_power_w = joules, joules / seconds
        metrics.energy_per_output_token_j = joules / work.output_tokens
        metrics.energy_per_token_j = joules / (work.prompt_tokens + work.output_tokens)
        metrics.tokens_per_joule = work.output_tokens / joules
        return metrics


def _too_short(window: Optional[Tuple[float, float, Work]]) -> Optional[str]:
    """Why the window gives no per-token figure; None when it does."""
    if window is None:
        return "no timed generations"
    joules, seconds, work = window
    if seconds < MIN_WINDOW_S:
        return (f"the timed generations lasted {seconds:.2f} s, under the {MIN_WINDOW_S} s an energy counter "
                "needs: raise generation.repeats or generation.max_new_tokens")
    if joules <= 0:
        return f"the energy counter did not move during the {seconds:.2f} s of timed generations"
    if not work.output_tokens:
        return "the timed generations counted no output tokens"
    return None
