"""PNG charts of one model's runs (matplotlib, Agg backend: no display needed).

Per model: tokens/s by setting with the lengths side by side (the T4 notebook's "128 vs 256" chart), latency,
peak memory, quality against speed (one point per setting) with the front of decide.py drawn through it, and
each tracker metric that declares a chart (energy's J per output token) against quality.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

from qsweep.tracking.names import TAG_EMULATED

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DPI = 110
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
DEGENERATE_COLOR = "#C44E52"
POINT_COLORS = tuple(c for c in COLORS if c != DEGENERATE_COLOR)


@dataclass
class Chart:
    path: Path
    caption: str


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def model_charts(model: str, rows, out_dir: Path) -> List[Chart]:
    """Every chart of one model's rows (report_rows.Row, sorted), written into out_dir."""
    charts = [_grouped_bars(model, rows, out_dir, "tokens_per_s", None, "Tokens/sec",
                            "tokens/s by setting (higher is faster)"),
              _grouped_bars(model, rows, out_dir, "latency_s", "latency_iqr_s", "Latency (s)",
                            "latency by setting, median with the interquartile range (lower is faster)"),
              _memory(model, rows, out_dir)]
    from qsweep import trackers  # the trackers' results declare which of their metrics get a chart

    made = [_quality_vs_speed(model, rows, out_dir)]
    made += [_against_quality(model, rows, out_dir, metric, column)
             for metric, column in trackers.report_columns().items() if column.chart]
    return charts + [chart for chart in made if chart]


def _settings(rows) -> List[str]:
    seen: List[str] = []
    for row in sorted(rows, key=lambda r: r.sort_key()[1:]):
        if row.setting not in seen:
            seen.append(row.setting)
    return seen


def _tick_labels(settings: List[str], rows) -> List[str]:
    """A setting whose output is broken says so under its bars: its speed is not a result."""
    broken = {r.setting for r in rows if r.degenerate}
    return [f"{s}\n(broken output)" if s in broken else s for s in settings]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # "tight" keeps a legend below the axes
    plt.close(fig)
    return path


def _finish(ax, n_series: int) -> None:
    ax.margins(y=0.15)
    two_line_ticks = any("\n" in tick.get_text() for tick in ax.get_xticklabels())
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14 if two_line_ticks else -0.08),
              ncol=n_series, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def _grouped_bars(model, rows, out_dir, metric, iqr_metric, ylabel, what) -> Chart:
    settings = _settings(rows)
    lengths = sorted({r.max_new_tokens for r in rows})
    width = 0.8 / len(lengths)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(settings) + 2), 4.2))
    for i, n in enumerate(lengths):
        by_setting: Dict[str, object] = {r.setting: r for r in rows if r.max_new_tokens == n}
        xs, values, errors, broken = [], [], [], []
        for x, setting in enumerate(settings):
            row = by_setting.get(setting)
            if row is None or metric not in row.metrics:
                continue
            value = row.metrics[metric]
            spread = row.metrics.get(iqr_metric, 0.0) if iqr_metric and row.metrics.get("timed_samples", 0) > 1 else 0
            xs.append(x + (i - (len(lengths) - 1) / 2) * width)
            values.append(value)
            errors.append(spread / 2)
            broken.append(row.degenerate)
        # half the IQR either side, never below zero (the IQR need not be centred on the median)
        yerr = [[min(e, v) for e, v in zip(errors, values)], errors] if any(errors) else None
        bars = ax.bar(xs, values, width * 0.95, label=f"{n} new tokens", color=COLORS[i % len(COLORS)],
                      yerr=yerr, capsize=3)
        for bar, is_broken in zip(bars, broken):
            if is_broken:
                bar.set_hatch("xx")
                bar.set_alpha(0.45)
        ax.bar_label(bars, fmt="%.2f" if metric == "tokens_per_s" else "%.3g", fontsize=8, padding=2)
    ax.set_xticks(range(len(settings)), _tick_labels(settings, rows))
    ax.set_ylabel(ylabel)
    ax.set_title(f"{model}: {ylabel.lower()}, {' vs '.join(map(str, lengths))} new tokens")
    _finish(ax, len(lengths))
    path = _save(fig, out_dir / f"{slug(model)}_{metric}.png")
    return Chart(path, f"{model}: {what}")


def _memory(model, rows, out_dir) -> Chart:
    """Memory per setting (the largest over the lengths): the setting's own, process RSS, GPU VRAM, weights."""
    settings = _settings(rows)
    series = (("setting_memory_gb", "the setting's own (model + runtime)"), ("peak_rss_gb", "peak RSS (process)"),
              ("peak_vram_gb", "peak VRAM (torch)"), ("model_footprint_gb", "weights in memory"))
    series = [(m, label) for m, label in series if any(m in r.metrics for r in rows)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(settings) + 2), 4.2))
    for i, (metric, label) in enumerate(series):
        xs, values = [], []
        for x, setting in enumerate(settings):
            found = [r.metrics[metric] for r in rows if r.setting == setting and metric in r.metrics]
            if found:
                xs.append(x + (i - (len(series) - 1) / 2) * width)
                values.append(max(found))
        bars = ax.bar(xs, values, width * 0.95, label=label, color=COLORS[(i + 2) % len(COLORS)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
    ax.set_xticks(range(len(settings)), _tick_labels(settings, rows))
    ax.set_ylabel("GiB")
    ax.set_title(f"{model}: memory")
    _finish(ax, len(series))
    path = _save(fig, out_dir / f"{slug(model)}_memory.png")
    return Chart(path, f"{model}: memory by setting, the largest over the lengths measured (the setting's own: "
                       "what its model and runtime need to generate; peak RSS also holds Python, torch and qsweep; "
                       "runs recorded before setting_memory_gb existed show the peaks only)")


KL = "kl_div_vs_fp32"
QUALITY_AXES = ((KL, "KL divergence vs FP32 (lower is closer)"), ("perplexity", "perplexity (lower is better)"))


@dataclass
class Axis:
    metric: str
    label: str
    unit: str = ""  # after a figure in the text, e.g. "tok/s"


def _quality_vs_speed(model, rows, out_dir) -> Optional[Chart]:
    """KL vs FP32 (else perplexity) against decide's speed (decode tokens/s, or throughput when the batch
    varies), one point per setting at its longest length, and the front through decide's front members."""
    from qsweep import decide

    quality = next((Axis(m, label) for m, label in QUALITY_AXES if any(m in r.metrics for r in rows)), None)
    if quality is None:
        return None
    throughput = decide.by_throughput(decide.candidates(rows))
    speed = Axis(decide.speed_metric(throughput), f"{decide.speed_name(throughput)} (higher is faster)", "tok/s")
    fronts = (lambda points: _fronts(rows, points, speed.metric)) if quality.metric == KL else None
    return _scatter(model, rows, out_dir, speed, quality, True, "quality_vs_speed", "quality vs speed",
                    f"{model}: {quality.metric} against {decide.speed_name(throughput)}, one point per setting (its "
                    "longest length); the best settings sit bottom right"
                    + ("; the line is the front of speed, KL and memory (decide), so a point on it may look "
                       "beaten on these two axes because it wins on memory" if fronts else ""), fronts)


def _fronts(rows, points: Dict[str, object], x_metric: str) -> Dict[str, List[tuple]]:
    """The front at each shape (device, batch, new tokens, prompt) the plotted points were measured at,
    from all of that shape's rows: {legend label: [(x, y)]}."""
    from qsweep.decide import SHAPE, front_points

    def shape(row):
        return tuple(key(row) for key in SHAPE)  # a report Row has the attributes SHAPE reads

    shapes = list(dict.fromkeys(shape(row) for row in points.values()))
    varying = [i for i in range(len(SHAPE)) if len({s[i] for s in shapes}) > 1]
    return {"front" + (f" ({', '.join(s[i] for i in varying)})" if varying else ""):
            front_points([r for r in rows if shape(r) == s], x_metric, KL) for s in shapes}


def _against_quality(model, rows, out_dir, metric: str, column) -> Optional[Chart]:
    """A tracker's column that declares a chart (energy's J per output token) against KL vs FP32."""
    if not any(metric in r.metrics for r in rows) or not any(KL in r.metrics for r in rows):
        return None
    axis = Axis(metric, column.chart, column.header)
    return _scatter(model, rows, out_dir, axis, Axis(KL, QUALITY_AXES[0][1]), False, f"{metric}_vs_quality",
                    f"{column.header} vs quality",
                    f"{model}: {metric} against {KL}, one point per setting (its longest length); the best settings "
                    "sit bottom left", None)


def _scatter(model, rows, out_dir, other: Axis, quality: Axis, quality_on_y: bool, name: str, title: str,
             caption: str, fronts) -> Chart:
    """One point per setting (its longest length) of a quality metric against another; a broken run without
    a quality figure is named instead. fronts: points -> {label: [(x, y)]}, lines drawn through them."""
    points, unplotted = {}, {}
    for row in rows:  # sorted by length: the longest length of each setting wins
        if other.metric not in row.metrics:
            continue
        if math.isfinite(row.metrics.get(quality.metric, math.nan)):
            points[row.setting] = row
        elif row.degenerate:  # e.g. NaN logits: no quality figure to place it at
            unplotted[row.setting] = row
    x_axis, y_axis = (other, quality) if quality_on_y else (quality, other)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    crowded = len(points) > 6  # labels beside the points would overlap: a legend names them instead
    palette = plt.get_cmap("tab10").colors if crowded else POINT_COLORS
    for i, (setting, row) in enumerate(points.items()):
        x, y = row.metrics[x_axis.metric], row.metrics[y_axis.metric]
        label = setting + (" (emulated)" if row.job.tags.get(TAG_EMULATED) else "") + (
            " (degenerate)" if row.degenerate else "")
        ax.scatter([x], [y], s=60, color=DEGENERATE_COLOR if row.degenerate else palette[i % len(palette)],
                   marker="X" if row.degenerate else "os^D"[i // len(palette) % 4], zorder=3, label=label)
        if not crowded:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    lines = []
    for label, front in (fronts(points) if fronts else {}).items():
        lines += ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="0.45", zorder=2,
                         marker="o", markersize=11, markerfacecolor="none", label=label)
    if crowded:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        (ax.set_yscale if quality_on_y else ax.set_xscale)("symlog", linthresh=1e-3)  # KL: the small ones apart too
    elif lines:
        ax.legend(handles=lines, fontsize=8, loc="best", frameon=False)
    ax.set_xlabel(x_axis.label)
    ax.set_ylabel(y_axis.label)
    ax.set_title(f"{model}: {title}")
    ax.margins(x=0.25, y=0.2)
    if not crowded:  # quality figures are never negative
        if quality_on_y:
            ax.set_ylim(bottom=-0.04 * ax.get_ylim()[1])
        else:
            ax.set_xlim(left=-0.04 * ax.get_xlim()[1])
    ax.grid(alpha=0.3)
    if unplotted:
        ax.text(0.01, 0.98, "not shown, broken output: " + ", ".join(
                f"{setting} ({row.metrics[other.metric]:.3g} {other.unit})" for setting, row in unplotted.items()),
                transform=ax.transAxes, fontsize=8, va="top", color=DEGENERATE_COLOR)
    path = _save(fig, out_dir / f"{slug(model)}_{name}.png")
    return Chart(path, caption)
