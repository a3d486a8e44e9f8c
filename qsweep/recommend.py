"""`qsweep recommend`: per model, the best setting by an objective (the fastest by default; or the lowest KL vs
fp32, or the least setting memory) among those that meet the constraints, the command that measures it again, and
the runner-up; when none meets them, which constraint no run meets and the closest run.

Pure logic on decide.Candidates (no MLflow, no torch). Speed is decode tokens/s per sequence, or throughput
when the model's runs vary the batch size (decide.by_throughput). A degenerate run is never picked; an
emulated one (decide.Candidate.emulated) only when no other meets the constraints, and then it says so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

from qsweep.decide import (KL_RESOLUTION, MEMORY_RESOLUTION_GB, SHAPE, Candidate, better, by_throughput, candidates,
                           groups, kl_steps, memory_steps, origin_note, speed_name)

DEFAULT_MAX_KL = 0.01  # the report's default: llama.cpp's Q5_K_M-like closeness to the full model (issue 22)
# What to optimise among the settings that meet every constraint, as the closing recommendation says it
OBJECTIVES = {"speed": "the fastest", "quality": "the lowest KL vs fp32", "memory": "the least setting memory"}


# The runs --batch-size, --device and --backend keep: the Constraints and Candidate field each compares, and how
# a note says it
SELECTORS = (("batch_size", "at batch {}"), ("device", "on {}"), ("backend", "with backend={}"))


@dataclass(frozen=True)
class Constraints:
    max_kl: Optional[float] = DEFAULT_MAX_KL  # KL vs fp32, nats
    max_memory_gb: Optional[float] = None  # setting_memory_gb (an older run: its peak VRAM / RSS)
    batch_size: Optional[int] = None
    device: Optional[str] = None
    min_tokens_per_s: Optional[float] = None  # the speed: decode tokens/s, or throughput when the batch varies
    backend: Optional[str] = None  # only this runtime's runs: the one a team can deploy

    def text(self) -> str:
        return ", ".join([f"KL vs fp32 <= {self.max_kl:g}" if self.max_kl is not None else "no KL cap",
                          f"memory <= {self.max_memory_gb:g} GB" if self.max_memory_gb is not None
                          else "no memory cap",
                          *([f"speed >= {self.min_tokens_per_s:g} tokens/s"] if self.min_tokens_per_s else []),
                          *([f"batch {self.batch_size}"] if self.batch_size is not None else []),
                          *([f"device {self.device}"] if self.device else []),
                          *([f"backend {self.backend}"] if self.backend else [])])


@dataclass(frozen=True)
class Cap:
    """One constraint: what it says, whether a run meets it, which run comes nearest (the smallest `nearness`)
    and what is said of that run when none meets it."""
    text: str
    meets: Callable[[Candidate], bool]
    nearness: Callable[[Candidate], float]
    missed: Callable[[Candidate], str]


def caps(limits: Constraints, throughput: bool) -> List[Cap]:
    out, speed = [], lambda c: c.speed(throughput).median
    if limits.max_kl is not None:
        out.append(Cap(f"KL vs fp32 <= {limits.max_kl:g}", lambda c: c.quality() <= limits.max_kl, Candidate.quality,
                       lambda b: f"no run has KL vs fp32 <= {limits.max_kl:g} (the lowest: {b.kl:.4f}, {b.label()})"))
    if limits.max_memory_gb is not None:
        out.append(Cap(f"memory <= {limits.max_memory_gb:g} GB", lambda c: c.memory_gb <= limits.max_memory_gb,
                       lambda c: c.memory_gb,
                       lambda b: f"no run needs <= {limits.max_memory_gb:g} GB (the least: {b.memory_text()}, "
                                 f"{b.label()})"))
    if limits.min_tokens_per_s:
        name = speed_name(throughput)
        out.append(Cap(f"{name} >= {limits.min_tokens_per_s:g}", lambda c: speed(c) >= limits.min_tokens_per_s,
                       lambda c: -speed(c),
                       lambda b: f"no run reaches {limits.min_tokens_per_s:g} {name} (the fastest: {speed(b):.2f}, "
                                 f"{b.label()}): lower --min-tokens-per-s"))
    return out


@dataclass
class Recommendation:
    title: str  # the model, and the workload when the model's runs vary it
    throughput: bool  # speed is throughput (else decode tokens/s)
    pick: Optional[Candidate] = None
    runner_up: Optional[Candidate] = None
    closest: Optional[Candidate] = None  # when nothing meets the constraints
    notes: List[str] = field(default_factory=list)  # why: caps not applied, emulated, ties, what no run meets


def _figures(c: Candidate, throughput: bool) -> str:
    kl = f"KL vs fp32 {c.kl_interval().text()}" if math.isfinite(c.kl) else "no KL figure"
    return (f"{c.speed(throughput).text()} {speed_name(throughput)}, {kl}, {c.memory_text()}, "
            f"config_hash {c.config_hash}")


def _excess(c: Candidate, limits: Constraints, throughput: bool, rounded: bool = False) -> float:
    """How far a run is from the caps: the largest ratio of figure to cap (<= 1 meets them all); rounded:
    of the figures as decide compares them (equal within its resolutions)."""
    kl = kl_steps(c) * KL_RESOLUTION if rounded else c.quality()
    memory = memory_steps(c) * MEMORY_RESOLUTION_GB if rounded else c.memory_gb
    ratios = []
    if limits.max_kl is not None:  # a cap of 0 is met by fp32 itself (0 / 0 counts as 0)
        ratios.append(kl / limits.max_kl if limits.max_kl else 0.0 if kl == 0 else math.inf)
    if limits.max_memory_gb is not None:
        ratios.append(memory / limits.max_memory_gb)
    if limits.min_tokens_per_s:  # a floor: how many times too slow
        speed = c.speed(throughput).median
        ratios.append(limits.min_tokens_per_s / speed if speed > 0 else math.inf)
    return max(ratios, default=0.0)


def _unmet(pool: List[Candidate], limits: Constraints, throughput: bool) -> str:
    """Which constraint no run meets (with the best figure there is), or that none meets them together."""
    every = caps(limits, throughput)
    missing = [cap.missed(min(pool, key=cap.nearness)) for cap in every if not any(map(cap.meets, pool))]
    if missing:
        return "; ".join(missing)
    together = "both" if len(every) == 2 else "all of them"
    return "each cap alone is met (" + "; ".join(
        f"{cap.text} by " + (", ".join(c.label() for c in met) if len(met) <= 3 else f"{len(met)} runs")
        for cap in every for met in [[c for c in pool if cap.meets(c)]]) + f"), but no run meets {together}"


def rank(meets: List[Candidate], objective: str, throughput: bool) -> List[Candidate]:
    """The settings that meet the caps, best first by the objective; emulated ones last. Equal on quality (KL
    intervals that overlap the lowest one's) or memory (within decide's resolution), the front decides: one
    another setting beats comes after it, then the faster one first."""
    lowest = min(meets, key=Candidate.quality).kl_interval() if meets else None

    def key(c: Candidate):
        first = {"speed": lambda: 0,
                 "quality": lambda: 0 if c.kl_interval().ties(lowest) else 1 + kl_steps(c),
                 "memory": lambda: memory_steps(c)}[objective]()
        beaten = objective != "speed" and any(better(o, c, throughput) for o in meets)
        return bool(c.emulated), first, beaten, -c.speed(throughput).median
    return sorted(meets, key=key)


def recommend_one(title: str, cands: List[Candidate], limits: Constraints, throughput: bool,
                  objective: str = "speed") -> Recommendation:
    rec = Recommendation(title, throughput, notes=origin_note(cands))
    chosen = [(field, said.format(getattr(limits, field))) for field, said in SELECTORS
              if getattr(limits, field) is not None]
    pool = [c for c in cands if all(getattr(c, field) == getattr(limits, field) for field, _ in chosen)]
    if not pool:
        wanted = " ".join(said for _, said in chosen)
        rec.notes.append(f"no finished run {wanted} (measured: " + ", ".join(sorted(
            {f"batch {c.batch_size} on {c.device} with backend={c.backend}" for c in cands})) + ")")
        return rec
    broken = [c for c in pool if c.degenerate]
    pool = [c for c in pool if not c.degenerate]
    if broken:
        rec.notes.append("never picked, degenerate output: " + ", ".join(c.setting for c in broken))
    if not pool:
        return rec
    if limits.max_kl is not None and not any(math.isfinite(c.kl) for c in pool):
        rec.notes.append("no run has a KL figure (random weights): the KL cap is not applied")
        limits = dataclasses.replace(limits, max_kl=None)
    meets = [c for c in pool if _excess(c, limits, throughput) <= 1]
    if not meets:
        rec.notes.append("no setting meets the constraints: " + _unmet(pool, limits, throughput))
        rec.closest = min(pool, key=lambda c: (_excess(c, limits, throughput, rounded=True), bool(c.emulated),
                                               -c.speed(throughput).median))
        return rec
    ranked = rank(meets, objective, throughput)
    rec.pick, rec.runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    if rec.runner_up is None:
        rec.notes.append("no runner-up: the only setting that meets the constraints")
    faster = [c for c in ranked if c.emulated and objective == "speed"
              and c.speed(throughput).faster(rec.pick.speed(throughput))]
    if rec.pick.emulated:
        rec.notes.append("only settings emulated by the CPU that measured them meet the constraints: "
                         + rec.pick.emulated)
    elif faster:
        rec.notes.append(f"{faster[0].label()} measured faster, but its CPU only emulates it "
                         f"({faster[0].emulated}): not picked")
    second = rec.runner_up
    if second and objective != "speed":
        same = (second.kl_interval().ties(rec.pick.kl_interval()) if objective == "quality"
                else memory_steps(second) == memory_steps(rec.pick))
        if same:
            why = better(rec.pick, second, throughput) or ["a higher median speed"]
            rec.notes.append(f"the runner-up is as good by {objective} (within the resolution); the pick has "
                             + " and ".join(why))
    elif second and second.speed(throughput).ties(rec.pick.speed(throughput)):
        wins = [w for w, yes in (("lower KL", second.kl_interval().lower(rec.pick.kl_interval())),
                                 ("less memory", memory_steps(second) < memory_steps(rec.pick))) if yes]
        rec.notes.append("the runner-up ties on speed (their interquartile ranges overlap)"
                         + (f" and has {' and '.join(wins)}: consider it" if wins else ""))
    rec.notes += _cap_inside(rec.pick, limits)
    return rec


def _cap_inside(pick: Candidate, limits: Constraints) -> List[str]:
    """The KL cap inside the pick's interval (KL ± standard error): another sample of text could put the
    pick over it."""
    interval = pick.kl_interval()
    if limits.max_kl is None or not interval.kl <= limits.max_kl < interval.kl + interval.se:
        return []
    return [f"the KL cap {limits.max_kl:g} lies inside the pick's interval (KL vs fp32 {interval.text()}): "
            "the evaluation text cannot tell whether it meets the cap; a longer text (quality.text, "
            "quality.max_tokens) narrows the interval"]


def recommend(cands: List[Candidate], limits: Constraints, objective: str = "speed") -> List[Recommendation]:
    """One recommendation per model, and per new tokens and prompt length when its runs vary them; speed as
    decide.by_throughput says for the model."""
    return [recommend_one(title, group, limits, by_throughput([c for c in cands if c.model == group[0].model]),
                          objective)
            for title, group in groups(cands, SHAPE[2:]).items()]


def render(recs: List[Recommendation], limits: Constraints, store_option: str = "", objective: str = "speed",
           how_to_run: Optional[Dict[str, List[str]]] = None) -> str:
    """Plain lines (Markdown list items): per model the pick, the command that measures it again, the
    runner-up and the notes. store_option: what the reproduce command needs to find the store; how_to_run:
    per run id, the lines that say how to run it (handover.how_to_run), shown under the pick and the runner-up."""
    lines, how_to_run = [], how_to_run or {}

    def how(c: Candidate) -> List[str]:
        return [f"    {line}" if line else "" for line in how_to_run.get(c.run_id, [])]

    for rec in recs:
        batch = rec.throughput and limits.batch_size is None  # the batch size is part of the choice
        best = OBJECTIVES[objective] + (f" by {speed_name(rec.throughput)}" if objective == "speed" else "")
        lines.append(f"- **{rec.title}** ({best} with {limits.text()}; objective {objective}):")
        if rec.pick:
            lines += [f"  - pick: {rec.pick.label(batch)}: {_figures(rec.pick, rec.throughput)}", *how(rec.pick),
                      f"  - measure it again: `python -m qsweep reproduce {rec.pick.config_hash}{store_option}`"]
        if rec.runner_up:
            lines += [f"  - runner-up: {rec.runner_up.label(batch)}: {_figures(rec.runner_up, rec.throughput)}",
                      *how(rec.runner_up)]
        if rec.closest:
            lines.append(f"  - closest: {rec.closest.label(batch)}: {_figures(rec.closest, rec.throughput)}")
        lines += [f"  - {note}" for note in rec.notes]
    return "\n".join(lines)


def report_section(rows: Iterable, store_option: str = "") -> str:
    """The report's closing section: the recommendation with the defaults (Constraints())."""
    limits = Constraints()
    return ("## Recommendation\n\nWhat `python -m qsweep recommend` says with its defaults: KL vs fp32 <= "
            f"{DEFAULT_MAX_KL:g} (about the closeness of llama.cpp's Q5_K_M to its full model), no memory cap, "
            "any device and batch size (`--max-kl`, `--max-memory-gb`, `--device`, `--backend`, `--batch-size` change them):\n\n"
            + render(recommend(candidates(rows), limits), limits, store_option) + "\n")
