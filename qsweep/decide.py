"""The settings worth deploying: the Pareto front of speed, KL vs fp32 and the setting's memory.

Pure logic on the report's rows (report.Row: a RunRecord with its model, setting, device, precision and
shape): no MLflow, no torch. recommend.py picks one setting under constraints from the same candidates.

Ties: two speeds tie when their interquartile ranges overlap, taking each as median ± IQR/2 (the IQR
centred on the median, an approximation: the samples are not reported one by one). A tie is equal speed:
neither setting is faster. Two KLs tie when their intervals KL ± standard error overlap (the SE of the
evaluation text's sample, kl_div_vs_fp32_se; at least KL_RESOLUTION / 2 wide): neither is lower.

The front is computed per model, device, batch size, new tokens and prompt length (SHAPE). A setting
is beaten when another is at least as good on all three of speed, KL and memory and strictly better on
one; the front is the settings nobody beats. Degenerate runs (broken output) are never on the front:
their speed is that of garbage.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

from qsweep.report_rows import broken_beyond_fp32
from qsweep.tables import markdown_table
from qsweep.tracking.names import TAG_DEGENERATE_REASON, TAG_EMULATED, TAG_WEIGHTS_ORIGIN

# Figures this close count as equal (the report's decimals): RSS moves by a few MB from run to run, and KL
# differences below 1e-4 nats (fp32 in another runtime: about 1e-7) are rounding, not quality (the least
# width of a KL interval: runs recorded before standard errors, and fp32's own SE of 0).
MEMORY_RESOLUTION_GB = 0.01
KL_RESOLUTION = 1e-4


@dataclass(frozen=True)
class Speed:
    median: float
    iqr: float

    def ties(self, other: "Speed") -> bool:
        """The interquartile ranges (median ± IQR/2) overlap."""
        return (self.median - self.iqr / 2 <= other.median + other.iqr / 2
                and other.median - other.iqr / 2 <= self.median + self.iqr / 2)

    def faster(self, other: "Speed") -> bool:
        return self.median > other.median and not self.ties(other)

    def text(self) -> str:
        return f"{self.median:.2f}" + (f" ± {self.iqr / 2:.2f}" if self.iqr else "")


SETTING = "setting memory"  # a Candidate's memory_kind when it is the run's setting_memory_gb


@dataclass(frozen=True)
class Quality:
    """KL vs fp32 with its standard error (NaN: not recorded)."""
    kl: float
    se: float

    def half_width(self) -> float:
        return max(self.se if math.isfinite(self.se) else 0.0, KL_RESOLUTION / 2)

    def ties(self, other: "Quality") -> bool:
        """The intervals KL ± SE overlap."""
        return (self.kl - self.half_width() <= other.kl + other.half_width()
                and other.kl - other.half_width() <= self.kl + self.half_width())

    def lower(self, other: "Quality") -> bool:
        return self.kl < other.kl and not self.ties(other)

    def text(self) -> str:
        if not math.isfinite(self.kl):
            return "–"
        return f"{self.kl:.4f}" + (f" ± {self.se:.4f}" if math.isfinite(self.se) and self.se else "")


@dataclass(frozen=True)
class Candidate:
    """One finished run as a decision sees it. kl is NaN when the run has no KL figure (random weights);
    memory is the setting's own (decide.memory; memory_kind says which figure it is)."""
    model: str
    setting: str
    device: str
    backend: str
    precision: str
    batch_size: int
    max_new_tokens: int
    prompt_tokens: str
    decode: Speed  # decode_tokens_per_s per sequence, with its IQR
    throughput: Speed  # throughput_tokens_per_s; spread from the latency's (latency_iqr_s / latency_s)
    kl: float
    memory_gb: float
    memory_kind: str  # SETTING, or an older run's "peak VRAM" / "peak RSS"
    config_hash: str
    run_id: str
    emulated: str = ""  # why this machine only emulates the setting (the run's TAG_EMULATED), else ""
    degenerate: str = ""  # the degenerate_reason of an output broken where fp32's is not, else ""
    kl_se: float = math.nan  # the KL's standard error (kl_div_vs_fp32_se; NaN: not recorded)
    origin: str = ""  # the quantized type the weights were dequantized from (TAG_WEIGHTS_ORIGIN), else ""
    runtime: str = ""  # the backend's runtime and weight format ("llama.cpp Q4_K_M")

    def speed(self, throughput: bool) -> Speed:
        return self.throughput if throughput else self.decode

    def quality(self) -> float:
        """KL for comparing: a run without a KL figure counts as the worst."""
        return self.kl if math.isfinite(self.kl) else math.inf

    def kl_interval(self) -> Quality:
        """What KL comparisons compare: a run without a KL figure is the worst, and ties only its like."""
        return Quality(self.quality(), self.kl_se)

    @property
    def on_origin_grid(self) -> bool:
        """A llama.cpp type of the same family (block type) as the file the weights came from: quantizing
        weights already on that grid back onto it is close to lossless, a KL no 16-bit model would show."""
        family = self.origin[:4]  # Q4_K_M -> Q4_K: Q4_K_S and Q4_K_M store Q4_K blocks
        return bool(family) and self.runtime.startswith("llama.cpp ") and self.runtime.split()[-1].startswith(family)

    def memory_text(self) -> str:
        return f"{self.memory_gb:.2f} GB " + (self.memory_kind if self.memory_kind == SETTING else
                                              f"{self.memory_kind} (an older run: qsweep's own included)")

    def label(self, batch: bool = False) -> str:
        return (self.setting + (f", batch {self.batch_size}" if batch else "")
                + (" (emulated)" if self.emulated else "") + (" ⚠ degenerate" if self.degenerate else "")
                + (f" ⚠ weights already on its {self.origin} grid" if self.on_origin_grid else ""))


def _metric(metrics: dict, name: str) -> float:
    value = metrics.get(name)
    return math.nan if value is None else float(value)


def _spread(m: dict, value: float) -> float:
    """An IQR as a spread: none from a single sample, or when not recorded."""
    return value if math.isfinite(value) and m.get("timed_samples", 0) > 1 else 0.0


def throughput_speed(row) -> Speed:
    """A report.Row's throughput with its spread: the latency's relative IQR (throughput = batch size x new
    tokens / latency)."""
    m = row.metrics
    latency, value = _metric(m, "latency_s"), _metric(m, "throughput_tokens_per_s")
    relative = _metric(m, "latency_iqr_s") / latency if latency > 0 else 0.0
    return Speed(value, _spread(m, value * relative))


def candidate(row) -> Optional[Candidate]:
    """A report.Row as a Candidate; None when the run has no decode speed to compare."""
    m, tags = row.metrics, row.job.tags
    decode = _metric(m, "decode_tokens_per_s")
    if not math.isfinite(decode):
        return None
    return Candidate(
        row.model, row.setting, row.device, row.backend, row.precision, row.batch_size,
        row.max_new_tokens, str(row.prompt_tokens),
        Speed(decode, _spread(m, _metric(m, "decode_tokens_per_s_iqr"))), throughput_speed(row),
        _metric(m, "kl_div_vs_fp32"),
        *memory(row),
        row.job.config_hash or "-", row.job.run_id, tags.get(TAG_EMULATED, ""),
        tags.get(TAG_DEGENERATE_REASON, "?") if broken_beyond_fp32(m) else "", _metric(m, "kl_div_vs_fp32_se"),
        tags.get(TAG_WEIGHTS_ORIGIN, ""), row.runtime)


def memory(row) -> tuple:
    """(GB, which figure): the setting's own memory (setting_memory_gb), or for a run recorded before it
    existed the process's peak VRAM on cuda, peak RSS elsewhere (both include qsweep's own memory)."""
    m = row.metrics
    if math.isfinite(_metric(m, "setting_memory_gb")):
        return _metric(m, "setting_memory_gb"), SETTING
    if row.device == "cuda" and math.isfinite(_metric(m, "peak_vram_gb")):
        return _metric(m, "peak_vram_gb"), "peak VRAM"
    return _metric(m, "peak_rss_gb"), "peak RSS"


def candidates(rows: Iterable) -> List[Candidate]:
    return [c for c in map(candidate, rows) if c is not None]


def by_throughput(cands: List[Candidate]) -> bool:
    """Speed is throughput when some of the model's runs batch several sequences, else decode tokens/s."""
    return any(c.batch_size != 1 for c in cands)


def speed_name(throughput: bool) -> str:
    return "throughput tokens/s" if throughput else "decode tokens/s"


def speed_metric(throughput: bool) -> str:
    """The metric that speed is: what a chart of the front puts on its speed axis."""
    return "throughput_tokens_per_s" if throughput else "decode_tokens_per_s"


# What makes runs alike (a CPU's RSS is not a GPU's VRAM, 128 tokens are not 256): the front compares runs
# equal in all of these; a recommendation treats the device and batch size as choices (recommend.py).
SHAPE = (lambda c: c.device, lambda c: f"batch {c.batch_size}", lambda c: f"{c.max_new_tokens} new tokens",
         lambda c: f"prompt {c.prompt_tokens}")


def groups(cands: List[Candidate], keys=SHAPE) -> Dict[str, List[Candidate]]:
    """Per model, the runs equal in every key, named by the model and the keys that vary among its runs."""
    out: Dict[str, List[Candidate]] = {}
    for model in dict.fromkeys(c.model for c in cands):
        mine = [c for c in cands if c.model == model]
        varying = [key for key in keys if len({key(c) for c in mine}) > 1]
        for c in mine:
            out.setdefault(", ".join([model, *(key(c) for key in varying)]), []).append(c)
    return out


def _steps(value: float, resolution: float) -> int:
    return round(value / resolution) if math.isfinite(value) else sys.maxsize  # no figure: the worst


def memory_steps(c: Candidate) -> int:
    """Peak memory in MEMORY_RESOLUTION_GB steps: what memory comparisons compare."""
    return _steps(c.memory_gb, MEMORY_RESOLUTION_GB)


def kl_steps(c: Candidate) -> int:
    """KL in KL_RESOLUTION steps: how far from a cap a run is, as the report rounds it."""
    return _steps(c.kl, KL_RESOLUTION)


def better(a: Candidate, b: Candidate, throughput: bool) -> List[str]:
    """How a beats b ("faster", "lower KL", "less memory"), or [] when it does not: at least as good on
    all three (a speed or KL tie is as good) and strictly better on one."""
    sa, sb = a.speed(throughput), b.speed(throughput)
    (ka, kb), (ma, mb) = (a.kl_interval(), b.kl_interval()), (memory_steps(a), memory_steps(b))
    if sb.faster(sa) or kb.lower(ka) or ma > mb:
        return []
    return [why for why, strictly in (("faster", sa.faster(sb)), ("lower KL", ka.lower(kb)), ("less memory", ma < mb))
            if strictly]


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    beaten_by: Optional[Candidate] = None
    why: str = ""  # "faster, lower KL" when beaten; "degenerate output" for a broken run; "" on the front

    @property
    def on_front(self) -> bool:
        return not self.why


def _beaten(c: Candidate, fine: List[Candidate], throughput: bool) -> Ranked:
    beaters = [(b, why) for b in fine if b is not c for why in [better(b, c, throughput)] if why]
    if not beaters:
        return Ranked(c)
    unbeaten = [(b, why) for b, why in beaters if not any(better(x, b, throughput) for x in fine)]
    b, why = max(unbeaten or beaters, key=lambda bw: bw[0].speed(throughput).median)
    return Ranked(c, b, ", ".join(why))


def front(cands: List[Candidate], throughput: bool) -> List[Ranked]:
    """One group's settings: the front (fastest first), then the beaten ones, each with the setting that
    beats it (a front member when one does), then the degenerate ones."""
    fine = [c for c in cands if not c.degenerate]
    ranked = sorted((_beaten(c, fine, throughput) for c in fine),
                    key=lambda r: (not r.on_front, -r.candidate.speed(throughput).median))
    return ranked + [Ranked(c, None, f"degenerate output ({c.degenerate}): never on the front")
                     for c in cands if c.degenerate]


def fronts(rows: Iterable) -> Dict[str, Tuple[bool, List[Ranked]]]:
    """Per group name: whether speed is throughput, and its settings ranked by front()."""
    cands, out = candidates(rows), {}
    for name, group in groups(cands).items():
        throughput = by_throughput([c for c in cands if c.model == group[0].model])
        out[name] = throughput, front(group, throughput)
    return out


def origin_note(cands: List[Candidate]) -> List[str]:
    """What a user must know before generalising from a model whose weights came from a quantized file."""
    origins = {(c.model, c.origin) for c in cands if c.origin}
    return [f"{model}'s weights were dequantized from a {origin} file: every KL here is measured against weights "
            f"already on {origin}'s grid, so settings of its family (marked) measure close to lossless; their "
            "quality does not transfer to the model trained in 16 bits (docs/quality.md)"
            for model, origin in sorted(origins)]


def _status(r: Ranked, ranked: List[Ranked], throughput: bool) -> str:
    if not r.on_front:
        return f"beaten by {r.beaten_by.label()}: {r.why}" if r.beaten_by else r.why
    speed = r.candidate.speed(throughput)
    ties = [o.candidate.label() for o in ranked
            if o.on_front and o is not r and o.candidate.speed(throughput).ties(speed)]
    return "front" + (f" (speed ties {', '.join(ties)})" if ties else "")


def front_section(rows: Iterable) -> Tuple[str, Set[str]]:
    """The report's section: per group, the front first, then the settings it beats; and the run ids
    on a front."""

    parts, members = [], set()
    for name, (throughput, ranked) in fronts(rows).items():
        members |= {r.candidate.run_id for r in ranked if r.on_front}
        has_kl = any(math.isfinite(r.candidate.kl) for r in ranked)
        body = [[c.label(), c.speed(throughput).text(), Quality(c.kl, c.kl_se).text(),
                 c.memory_text(), c.config_hash, _status(r, ranked, throughput)]
                for r in ranked for c in [r.candidate]]
        parts += [f"### Settings worth deploying: {name}", "",
                  f"The front: settings not beaten on {speed_name(throughput)}, KL vs FP32 and memory "
                  "(a tie counts as equal: speeds whose interquartile ranges overlap, KLs whose intervals "
                  "± standard error overlap); the beaten ones after."
                  + ("" if has_kl else " No KL figure (random weights): speed and memory only."), "",
                  markdown_table(["Setting", speed_name(throughput), "KL vs FP32", "Memory",
                                  "config_hash", "Front"], body, ["<", ">", ">", ">", "<", "<"]), ""]
        parts += [f"⚠ {note}.\n" for note in origin_note([r.candidate for r in ranked])]
        emulated = {r.candidate.setting: r.candidate.emulated for r in ranked if r.candidate.emulated}
        parts += ["Emulated by the machine that measured it: "
                  + "; ".join(f"{s}: {why}" for s, why in emulated.items()) + ".", ""] if emulated else []
    return "\n".join(parts), members


def front_points(rows: Iterable, x_metric: str, y_metric: str) -> List[Tuple[float, float]]:
    """(x, y) of the front members among `rows` (the chart's points), in x order: what a chart draws as
    the front. A member may look beaten on a two-axis chart when it wins on memory."""
    rows = list(rows)
    members = {r.candidate.run_id for _, ranked in fronts(rows).values() for r in ranked if r.on_front}
    return sorted((row.metrics[x_metric], row.metrics[y_metric]) for row in rows
                  if row.job.run_id in members and x_metric in row.metrics and y_metric in row.metrics)
