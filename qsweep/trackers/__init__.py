"""What a job measures besides its output, one module per quantity (latency, memory, energy), each a
Tracker with a typed Result whose fields are the metric names.

A new quantity is one module and one line in REGISTRY (or `register` at run time): the job runs every
registered tracker its device supports around the same region and records each result's fields as
metrics and its tags as tags; the report shows the fields its result declares with `column(...)`.
Latency is the measurement contract itself: measure.generate_timed feeds a LatencyTracker on every
device, so it is not in the registry."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Type

from qsweep.trackers import energy, memory
# the seam: what a tracker module uses
from qsweep.trackers.base import Column, Result, Tracker, Work, column  # noqa: F401

REGISTRY: List[Type[Tracker]] = [memory.MemoryTracker, energy.EnergyTracker]


def register(tracker: Type[Tracker]) -> Type[Tracker]:
    """Run `tracker` in every job on the devices it supports (jobs started after this call), isolated or not:
    an isolated job's worker imports it by name, so it must live in an importable module."""
    if tracker.__module__ == "__main__" or "<locals>" in tracker.__qualname__:
        raise ValueError(f"trackers.register({tracker.__qualname__}): define the tracker at the top level of an "
                         "importable module (not in __main__ or a function), so that the worker processes "
                         "measuring isolated jobs can import it")
    if tracker not in REGISTRY:
        REGISTRY.append(tracker)
    return tracker


def report_columns() -> Dict[str, Column]:
    """Metric name -> report column, of every registered tracker's result (registry order)."""
    return {metric: col for tracker in REGISTRY for metric, col in tracker.result_type.columns().items()}


class Trackers:
    """The registered trackers that support one device, entered and read together."""

    def __init__(self, device: str, registry: Optional[Sequence[Type[Tracker]]] = None):
        self.running = [tracker(device) for tracker in (REGISTRY if registry is None else registry)
                        if device in tracker.devices]

    @contextmanager
    def track(self) -> Iterator["Trackers"]:
        with ExitStack() as stack:
            for tracker in self.running:
                stack.enter_context(tracker.track())
            yield self

    @contextmanager
    def timed(self) -> Iterator[Work]:
        work = Work()
        with ExitStack() as stack:
            for tracker in self.running:
                stack.enter_context(tracker.timed(work))
            yield work

    def results(self) -> List[Result]:
        return [tracker.result() for tracker in self.running]


@contextmanager
def untracked() -> Iterator[Work]:
    """A timed region that no tracker watches (measure.generate_timed called on its own)."""
    yield Work()
