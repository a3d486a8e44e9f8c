"""PNG charts of one model's runs (matplotlib, Agg backend: no display needed).

Per model: tokens/s by setting with the lengths side by side (the T4 notebook's "128 vs 256" chart), latency,
peak memory, and quality against speed (one point per setting).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import matplotlib

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
    quality = _quality_vs_speed(model, rows, out_dir)
    return charts + ([quality] if quality else [])


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
    """Peak memory per setting (the largest over the lengths): process RSS, GPU VRAM, weights."""
    settings = _settings(rows)
    series = (("peak_rss_gb", "peak RSS (process)"), ("peak_vram_gb", "peak VRAM (torch)"),
              ("model_footprint_gb", "weights in memory"))
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
    ax.set_title(f"{model}: peak memory")
    _finish(ax, len(series))
    path = _save(fig, out_dir / f"{slug(model)}_memory.png")
    return Chart(path, f"{model}: peak memory by setting, the largest over the lengths measured "
                       "(RSS includes the Python and torch runtime)")


def _quality_vs_speed(model, rows, out_dir):
    """KL vs FP32 (else perplexity) against tokens/s, one point per setting at its longest length."""
    metric, label = next(((m, l) for m, l in (("kl_div_vs_fp32", "KL divergence vs FP32 (lower is closer)"),
                                              ("perplexity", "perplexity (lower is better)"))
                          if any(m in r.metrics for r in rows)), (None, None))
    if metric is None:
        return None
    points, unplotted = {}, {}
    for row in rows:  # sorted by length: the longest length of each setting wins
        if "tokens_per_s" not in row.metrics:
            continue
        if math.isfinite(row.metrics.get(metric, math.nan)):
            points[row.setting] = row
        elif row.degenerate:  # e.g. NaN logits: no quality figure to place it at
            unplotted[row.setting] = row
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    crowded = len(points) > 6  # labels beside the points would overlap: a legend names them instead
    palette = plt.get_cmap("tab10").colors if crowded else POINT_COLORS
    for i, (setting, row) in enumerate(points.items()):
        x, y = row.metrics["tokens_per_s"], row.metrics[metric]
        name = setting + (" (degenerate)" if row.degenerate else "")
        ax.scatter([x], [y], s=60, color=DEGENERATE_COLOR if row.degenerate else palette[i % len(palette)],
                   marker="X" if row.degenerate else "os^D"[i // len(palette) % 4], zorder=3, label=name)
        if not crowded:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if crowded:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_yscale("symlog", linthresh=1e-3)  # KL spans 0 to tenths: the small ones apart too
    ax.set_xlabel("tokens/s (higher is faster)")
    ax.set_ylabel(label)
    ax.set_title(f"{model}: quality vs speed")
    ax.margins(x=0.25, y=0.2)
    if not crowded:
        top = ax.get_ylim()[1]
        ax.set_ylim(bottom=-0.04 * top)  # KL and perplexity are never negative
    ax.grid(alpha=0.3)
    if unplotted:
        ax.text(0.01, 0.98, "not shown, broken output: " + ", ".join(
                f"{setting} ({row.metrics['tokens_per_s']:.3g} tok/s)" for setting, row in unplotted.items()),
                transform=ax.transAxes, fontsize=8, va="top", color=DEGENERATE_COLOR)
    path = _save(fig, out_dir / f"{slug(model)}_quality_vs_speed.png")
    return Chart(path, f"{model}: {metric} against tokens/s, one point per setting (its longest length); "
                       "the best settings sit bottom right")
