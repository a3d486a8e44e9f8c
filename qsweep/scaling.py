"""How speed scales with the batch size and the prompt length (generation.batch_size, prompt_tokens):
where each quantized setting stops paying, and the two charts. Reads report_rows.Rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from qsweep.charts import COLORS, Chart, plt, slug, _save
from qsweep.tracking import PARAM_QUANTIZATION

THROUGHPUT, PREFILL = "throughput_tokens_per_s", "prefill_tokens_per_s"


def varies(rows, attribute: str) -> bool:
    return len({getattr(r, attribute) for r in rows}) > 1


def _lines(rows, x_attribute: str, metric: str) -> Dict[str, Dict[int, float]]:
    """setting -> {x: metric}, the rest held fixed at its most common value (the sweep's own)."""
    fixed = "prompt_tokens" if x_attribute == "batch_size" else "batch_size"
    common = Counter(getattr(r, fixed) for r in rows).most_common(1)[0][0]
    lines: Dict[str, Dict[int, float]] = {}
    for row in rows:
        x = getattr(row, x_attribute)
        if getattr(row, fixed) == common and isinstance(x, int) and metric in row.metrics and not row.degenerate:
            lines.setdefault(row.setting, {})[x] = row.metrics[metric]
    return lines


def stops_paying(rows) -> List[str]:
    """Per quantized setting: from which batch size its throughput is below the best unquantized
    setting's at the same batch size, on this machine."""
    lines = _lines(rows, "batch_size", THROUGHPUT)
    quantized = {r.setting for r in rows if r.job.params.get(PARAM_QUANTIZATION, "none") != "none"}
    plain = {s: line for s, line in lines.items() if s not in quantized}
    if not plain:
        return []
    said = []
    for setting in [s for s in lines if s in quantized]:
        slower = [b for b, speed in sorted(lines[setting].items())
                  if speed < max((line[b] for line in plain.values() if b in line), default=float("inf"))]
        batches = sorted(lines[setting])
        if not slower:
            said.append(f"{setting}: faster than every unquantized setting at every batch size measured "
                        f"({', '.join(map(str, batches))})")
        elif slower == batches:
            said.append(f"{setting}: slower than the best unquantized setting at every batch size measured "
                        f"({', '.join(map(str, batches))})")
        elif slower == batches[batches.index(slower[0]):]:
            said.append(f"{setting}: slower than the best unquantized setting from batch {slower[0]} on")
        else:
            said.append(f"{setting}: slower than the best unquantized setting at batch "
                        f"{', '.join(map(str, slower))} (of {', '.join(map(str, batches))})")
    return said


def _line_chart(model, rows, out_dir: Path, x_attribute: str, metric: str, xlabel: str, ylabel: str,
                name: str, caption: str) -> Optional[Chart]:
    lines = _lines(rows, x_attribute, metric)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for i, (setting, points) in enumerate(lines.items()):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=setting, color=COLORS[i % len(COLORS)])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({x for p in lines.values() for x in p}), [str(x) for x in sorted(
        {x for p in lines.values() for x in p})])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{model}: {ylabel} by {xlabel}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return Chart(_save(fig, out_dir / f"{slug(model)}_{name}.png"), f"{model}: {caption}")


def charts(model, rows, out_dir: Path) -> List[Chart]:
    made = []
    if varies(rows, "batch_size"):
        made.append(_line_chart(model, rows, out_dir, "batch_size", THROUGHPUT, "batch size",
                                "tokens/s of the whole machine", "throughput_by_batch",
                                "tokens/s the machine delivers (batch size x new tokens / latency) against the "
                                "batch size, one line per setting; memory-bound decoding gains most of each doubling"))
    if varies(rows, "prompt_tokens"):
        made.append(_line_chart(model, rows, out_dir, "prompt_tokens", PREFILL, "prompt tokens",
                                "prefill tokens/s", "prefill_by_prompt_length",
                                "prompt tokens processed per second before the first new token, against the "
                                "prompt length"))
    return [c for c in made if c]
