"""`qsweep recommend`: per model, the fastest setting that meets the constraints, the command that measures
it again, and the runner-up; when none meets them, which constraint no run meets and the closest run.

Pure logic on decide.Candidates (no MLflow, no torch). Speed is decode tokens/s per sequence, or throughput
when the model's runs vary the batch size (decide.by_throughput). A degenerate run is never picked; an
emulated one (decide.Candidate.emulated) only when no other meets the constraints, and then it says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

from qsweep.decide import (KL_RESOLUTION, MEMORY_RESOLUTION_GB, SHAPE, Candidate, by_throughput, candidates, groups,
                           kl_steps, memory_steps, speed_name)

DEFAULT_MAX_KL = 0.01  # the report's default: llama.cpp's Q5_K_M-like closeness to the full model (issue 22)


@dataclass(frozen=True)
class Constraints:
    max_kl: Optional[float] = DEFAULT_MAX_KL  # KL vs fp32, nats
    max_memory_gb: Optional[float] = None  # setting_memory_gb (an older run: its peak VRAM / RSS)
    batch_size: Optional[int] = None
    device: Optional[str] = None

    def text(self) -> str:
        return ", ".join([f"KL vs fp32 <= {self.max_kl:g}" if self.max_kl is not None else "no KL cap",
                          f"memory <= {self.max_memory_gb:g} GB" if self.max_memory_gb is not None
                          else "no memory cap",
                          *([f"batch {self.batch_size}"] if self.batch_size is not None else []),
                          *([f"device {self.device}"] if self.device else [])])


@dataclass
class Recommendation:
    title: str  # the model, and the workload when the model's runs vary it
    throughput: bool  # speed is throughput (else decode tokens/s)
    pick: Optional[Candidate] = None
    runner_up: Optional[Candidate] = None
    closest: Optional[Candidate] = None  # when nothing meets the constraints
    notes: List[str] = field(default_factory=list)  # why: caps not applied, emulated, ties, what no run meets


def _figures(c: Candidate, throughput: bool) -> str:
    kl = f"KL vs fp32 {c.kl:.4f}" if math.isfinite(c.kl) else "no KL figure"
    return (f"{c.speed(throughput).text()} {speed_name(throughput)}, {kl}, {c.memory_text()}, "
            f"config_hash {c.config_hash}")


def _excess(c: Candidate, limits: Constraints, rounded: bool = False) -> float:
    """How far a run is from the caps: the largest ratio of figure to cap (<= 1 meets them all); rounded:
    of the figures as decide compares them (equal within its resolutions)."""
    kl = kl_steps(c) * KL_RESOLUTION if rounded else c.quality()
    memory = memory_steps(c) * MEMORY_RESOLUTION_GB if rounded else c.memory_gb
    ratios = []
    if limits.max_kl is not None:  # a cap of 0 is met by fp32 itself (0 / 0 counts as 0)
        ratios.append(kl / limits.max_kl if limits.max_kl else 0.0 if kl == 0 else math.inf)
    if limits.max_memory_gb is not None:
        ratios.append(memory / limits.max_memory_gb)
    return max(ratios, default=0.0)


def _unmet(pool: List[Candidate], limits: Constraints) -> str:
    """Which constraint no run meets (with the best figure there is), or that none meets them together."""
    missing = []
    if limits.max_kl is not None and not any(c.quality() <= limits.max_kl for c in pool):
        best = min(pool, key=Candidate.quality)
        missing.append(f"no run has KL vs fp32 <= {limits.max_kl:g} (the lowest: {best.kl:.4f}, {best.label()})")
    if limits.max_memory_gb is not None and not any(c.memory_gb <= limits.max_memory_gb for c in pool):
        best = min(pool, key=lambda c: c.memory_gb)
        missing.append(f"no run needs <= {limits.max_memory_gb:g} GB (the least: {best.memory_text()}, "
                       f"{best.label()})")
    if missing:
        return "; ".join(missing)
    alone = [(f"KL vs fp32 <= {limits.max_kl:g}", [c for c in pool if c.quality() <= limits.max_kl]),
             (f"memory <= {limits.max_memory_gb:g} GB", [c for c in pool if c.memory_gb <= limits.max_memory_gb])]
    return "each cap alone is met (" + "; ".join(
        f"{cap} by " + (", ".join(c.label() for c in met) if len(met) <= 3 else f"{len(met)} runs")
        for cap, met in alone) + "), but no run meets both"


def recommend_one(title: str, cands: List[Candidate], limits: Constraints, throughput: bool) -> Recommendation:
    rec = Recommendation(title, throughput)
    pool = [c for c in cands if (limits.batch_size is None or c.batch_size == limits.batch_size)
            and (limits.device is None or c.device == limits.device)]
    if not pool:
        wanted = " ".join(([f"at batch {limits.batch_size}"] if limits.batch_size is not None else [])
                          + ([f"on {limits.device}"] if limits.device else []))
        rec.notes.append(f"no finished run {wanted} (measured: "
                         + ", ".join(sorted({f"batch {c.batch_size} on {c.device}" for c in cands})) + ")")
        return rec
    broken = [c for c in pool if c.degenerate]
    pool = [c for c in pool if not c.degenerate]
    if broken:
        rec.notes.append("never picked, degenerate output: " + ", ".join(c.setting for c in broken))
    if not pool:
        return rec
    if limits.max_kl is not None and not any(math.isfinite(c.kl) for c in pool):
        rec.notes.append("no run has a KL figure (random weights): the KL cap is not applied")
        limits = Constraints(None, limits.max_memory_gb)
    meets = [c for c in pool if _excess(c, limits) <= 1]
    if not meets:
        rec.notes.append("no setting meets the constraints: " + _unmet(pool, limits))
        rec.closest = min(pool, key=lambda c: (_excess(c, limits, rounded=True), bool(c.emulated),
                                               -c.speed(throughput).median))
        return rec
    ranked = sorted(meets, key=lambda c: (bool(c.emulated), -c.speed(throughput).median))
    rec.pick, rec.runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    if rec.runner_up is None:
        rec.notes.append("no runner-up: the only setting that meets the constraints")
    faster = [c for c in ranked if c.emulated and c.speed(throughput).faster(rec.pick.speed(throughput))]
    if rec.pick.emulated:
        rec.notes.append("only settings emulated by the CPU that measured them meet the constraints: "
                         + rec.pick.emulated)
    elif faster:
        rec.notes.append(f"{faster[0].label()} measured faster, but its CPU only emulates it "
                         f"({faster[0].emulated}): not picked")
    second = rec.runner_up
    if second and second.speed(throughput).ties(rec.pick.speed(throughput)):
        wins = [w for w, yes in (("lower KL", kl_steps(second) < kl_steps(rec.pick)),
                                 ("less memory", memory_steps(second) < memory_steps(rec.pick))) if yes]
        rec.notes.append("the runner-up ties on speed (their interquartile ranges overlap)"
                         + (f" and has {' and '.join(wins)}: consider it" if wins else ""))
    return rec


def recommend(cands: List[Candidate], limits: Constraints) -> List[Recommendation]:
    """One recommendation per model, and per new tokens and prompt length when its runs vary them; speed as
    decide.by_throughput says for the model."""
    return [recommend_one(title, group, limits, by_throughput([c for c in cands if c.model == group[0].model]))
            for title, group in groups(cands, SHAPE[2:]).items()]


def render(recs: List[Recommendation], limits: Constraints, store_option: str = "") -> str:
    """Plain lines (Markdown list items): per model the pick, the command that measures it again, the
    runner-up and the notes. store_option: what the reproduce command needs to find the store."""
    lines = []
    for rec in recs:
        batch = rec.throughput and limits.batch_size is None  # the batch size is part of the choice
        lines.append(f"- **{rec.title}** (the fastest by {speed_name(rec.throughput)} with {limits.text()}):")
        if rec.pick:
            lines += [f"  - pick: {rec.pick.label(batch)}: {_figures(rec.pick, rec.throughput)}",
                      f"  - measure it again: `python -m qsweep reproduce {rec.pick.config_hash}{store_option}`"]
        if rec.runner_up:
            lines.append(f"  - runner-up: {rec.runner_up.label(batch)}: {_figures(rec.runner_up, rec.throughput)}")
        if rec.closest:
            lines.append(f"  - closest: {rec.closest.label(batch)}: {_figures(rec.closest, rec.throughput)}")
        lines += [f"  - {note}" for note in rec.notes]
    return "\n".join(lines)


def report_section(rows: Iterable, store_option: str = "") -> str:
    """The report's closing section: the recommendation with the defaults (Constraints())."""
    limits = Constraints()
    return ("## Recommendation\n\nWhat `python -m qsweep recommend` says with its defaults: KL vs fp32 <= "
            f"{DEFAULT_MAX_KL:g} (about the closeness of llama.cpp's Q5_K_M to its full model), no memory cap, "
            "any device and batch size (`--max-kl`, `--max-memory-gb`, `--device`, `--batch-size` change them):\n\n"
            + render(recommend(candidates(rows), limits), limits, store_option) + "\n")
