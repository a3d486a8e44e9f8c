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


def _line_rows(rows, x_attribute: str, metric: str) -> Dict[str, Dict[int, object]]:
    """setting -> {x: its row}, the rest held fixed at its most common value (the sweep's own)."""
    fixed = "prompt_tokens" if x_attribute == "batch_size" else "batch_size"
    common = Counter(getattr(r, fixed) for r in rows).most_common(1)[0][0]
    lines: Dict[str, Dict[int, object]] = {}
    for row in rows:
        x = getattr(row, x_attribute)
        if getattr(row, fixed) == common and isinstance(x, int) and metric in row.metrics and not row.degenerate:
            lines.setdefault(row.setting, {})[x] = row
    return lines


def _lines(rows, x_attribute: str, metric: str) -> Dict[str, Dict[int, float]]:
    """setting -> {x: metric}, as _line_rows picks them."""
    return {setting: {x: row.metrics[metric] for x, row in line.items()}
            for setting, line in _line_rows(rows, x_attribute, metric).items()}


def stops_paying(rows) -> List[str]:
    """Per quantized setting: from which batch size its throughput is below the best unquantized
    setting's at the same batch size, on this machine. Speeds within each other's spread tie
    (decide.Speed): neither is faster."""
    from qsweep.decide import throughput_speed

    lines = {setting: {b: throughput_speed(row) for b, row in line.items()}
             for setting, line in _line_rows(rows, "batch_size", THROUGHPUT).items()}
    quantized = {r.setting for r in rows if r.job.params.get(PARAM_QUANTIZATION, "none") != "none"}
    plain = [line for s, line in lines.items() if s not in quantized]
    said = []
    for setting in [s for s in lines if s in quantized]:
        batches = sorted(b for b in lines[setting] if any(b in line for line in plain))
        slower, tied = [], []
        for b in batches:
            mine, others = lines[setting][b], [line[b] for line in plain if b in line]
            if max(others, key=lambda speed: speed.median).faster(mine):
                slower.append(b)
            elif not all(mine.faster(other) for other in others):
                tied.append(b)
        if batches:
            said.append(f"{setting}: " + _verdict(batches, slower, tied))
    return said


def _verdict(batches: List[int], slower: List[int], tied: List[int]) -> str:
    """What stops_paying says of one quantized setting, from the batch sizes where it is slower than the best
    unquantized setting or ties with it (the others: faster than every unquantized setting)."""
    def at(which):
        return f"at batch {', '.join(map(str, which))}"

    every = f"at every batch size measured ({', '.join(map(str, batches))})"
    faster = [b for b in batches if b not in slower + tied]
    if faster == batches:
        return f"faster than every unquantized setting {every}"
    if slower == batches:
        return f"slower than the best unquantized setting {every}"
    if tied == batches:
        return f"ties with the best unquantized setting {every} (within each other's spread)"
    tail = bool(slower) and slower == batches[batches.index(slower[0]):]
    words = ([f"slower than the best unquantized setting from batch {slower[0]} on"] if tail else
             [f"slower than the best unquantized setting {at(slower)} (of {', '.join(map(str, batches))})"]
             if slower else [])
    words += [f"ties with the best unquantized setting {at(tied)} (within each other's spread)"] if tied else []
    words += [f"faster than every unquantized setting {at(faster)}"] if faster and not tail else []
    return "; ".join(words)


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
