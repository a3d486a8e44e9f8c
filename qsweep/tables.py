"""Markdown tables of the report: the main table per model (the T4 notebook's columns first, then what it did
not measure), the jobs that did not finish, the skipped ones, and the count lines under them."""

from __future__ import annotations

from collections import Counter
from typing import List, Optional

from qsweep.report_rows import DEGENERATE, Row, broken_beyond_fp32
from qsweep.tracking import TAG_DEGENERATE_REASON, TAG_WEIGHTS_KIND, RunRecord

DASH = "–"  # the T4 notebook's mark for "does not apply" (VRAM on the CPU)

# (header, metric, decimals, spread metric): the T4 notebook's columns first, then what it did not measure.
SPEED_COLUMNS = (
    ("Latency (s)", "latency_s", 3, "latency_iqr_s"),
    ("Tokens/sec", "tokens_per_s", 2, None),
    ("VRAM (GB)", "peak_vram_gb", 2, None),
    ("TTFT (s)", "ttft_s", 3, "ttft_iqr_s"),
    ("Decode tokens/sec", "decode_tokens_per_s", 2, "decode_tokens_per_s_iqr"),
    ("RSS (GB)", "peak_rss_gb", 2, None),
    ("Load (s)", "load_time_s", 1, None),
)
SERVING_COLUMNS = (  # shown when the sweep varies the batch size or sets the prompt length
    ("Throughput (tok/s)", "throughput_tokens_per_s", 2, None),
    ("Prefill (tok/s)", "prefill_tokens_per_s", 1, None),
)
QUALITY_COLUMNS = (  # shown when some run has them (measured by qsweep/quality.py)
    ("Perplexity", "perplexity", 2, None),
    ("KL vs FP32", "kl_div_vs_fp32", 4, "kl_div_vs_fp32_se"),
    ("Top-1 agreement vs FP32", "top1_agreement_vs_fp32", 3, "top1_agreement_vs_fp32_se"),
    ("Output match vs FP32", "output_match_vs_fp32", 3, None),
)
UNFINISHED = "Jobs that did not finish (failed, killed or still running)"
SKIPPED = "Skipped jobs: their rows are the figures of an earlier run (sweep.skip_completed)"

LEGEND = (
    "Every figure is the median over the run's timed generations (`timed_samples`: prompts x repeats). "
    "`a ± b` shows the spread: b is half the interquartile range (the middle half of the samples lies "
    "within about a ± b); a figure without ± has no spread (one sample, or a single measurement such as "
    "memory and load time). Tokens/sec = new tokens of one sequence / median latency (the T4 notebook's "
    "definition, prefill included); decode tokens/sec leaves out the first token; throughput = batch size x new "
    "tokens / median latency (what the machine delivers); prefill = prompt tokens of the batch / TTFT. VRAM = "
    f"torch's peak allocated GPU memory ({DASH} on the CPU); RSS = the process's peak resident memory (Python, "
    "torch and qsweep included); setting memory = what the setting's model and runtime need to generate (VRAM on "
    "cuda; docs/measurement.md). GB are GiB. Quality figures vs FP32 show ± their standard error (the sample of "
    "evaluation text, docs/quality.md).")


def fmt(value: Optional[float], decimals: int, half_width: Optional[float] = None) -> str:
    if value is None or value != value:  # missing or NaN
        return DASH
    text = f"{value:.{decimals}f}"
    return f"{text} ± {half_width:.{decimals}f}" if half_width else text


def cell(row: Row, metric: str, decimals: int, spread_metric: Optional[str]) -> str:
    """The figure ± half its IQR (a timed figure), or ± its standard error (a quality figure, *_se)."""
    m = row.metrics
    raw = m.get(spread_metric) if spread_metric else None
    spread = None if raw is None or raw != raw else (  # missing or NaN: no spread
        raw if spread_metric.endswith("_se") else raw / 2 if m.get("timed_samples", 0) > 1 else None)
    if metric == "peak_vram_gb" and row.device != "cuda":
        return DASH
    return fmt(m.get(metric), decimals, spread)


def serving(rows: List[Row]) -> bool:
    return any(r.batch_size != 1 or r.prompt_tokens != "text" for r in rows)


def tracker_columns() -> tuple:
    """The columns the registered trackers' results declare (energy's J/token, say), as (header, metric,
    decimals, None); those the T4 notebook's layout already has (memory) stay where they are."""
    from qsweep import trackers  # imports torch: only when a table is made

    fixed = {c[1] for c in SPEED_COLUMNS + SERVING_COLUMNS + QUALITY_COLUMNS}
    return tuple((col.header, metric, col.decimals, None) for metric, col in trackers.report_columns().items()
                 if metric not in fixed)


def columns_for(rows: List[Row]) -> tuple:
    """The columns of a model's table: the fixed ones, then the trackers' and the quality columns that some
    run has (none of either: the T4 notebook's columns alone)."""
    present = {k for row in rows for k in row.metrics}
    measured = tuple(c for c in tracker_columns() + QUALITY_COLUMNS if c[1] in present)
    return SPEED_COLUMNS + (SERVING_COLUMNS if serving(rows) else ()) + measured, DEGENERATE in present


def markdown_table(headers: List[str], rows: List[List[str]], align: Optional[List[str]] = None) -> str:
    """A Markdown table padded to line up in a terminal too."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    align = align or ["<"] + [">"] * (len(headers) - 1)
    rule = {"<": ":{}", ">": "{}:", "^": ":{}:"}

    def line(cells):
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"

    seps = [rule[a].format("-" * max(1, w - (2 if a == "^" else 1))) for a, w in zip(align, widths)]
    return "\n".join([line(headers), "| " + " | ".join(seps) + " |", *(line(r) for r in rows)])


def model_table(rows: List[Row]) -> str:
    """The T4 notebook's table (Setting, Max New Tokens, Latency, Tokens/sec, VRAM) plus TTFT, decode speed,
    RSS, load time and the quality columns; the last column names the run (its config_hash)."""
    columns, has_degenerate = columns_for(rows)
    shape = ["Batch", "Prompt tokens"] if serving(rows) else []
    headers = ["Setting", "Max New Tokens", *shape, *(c[0] for c in columns)]
    headers += ["Degenerate output"] if has_degenerate else []
    body = []
    for row in rows:
        cells = [row.setting + (" ⚠" if row.degenerate else ""), str(row.max_new_tokens),
                 *([str(row.batch_size), str(row.prompt_tokens)] if shape else []),
                 *(cell(row, metric, dec, spread) for _, metric, dec, spread in columns)]
        if has_degenerate:
            cells.append(("yes: " + row.job.tags.get(TAG_DEGENERATE_REASON, "")).strip(": ")
                         + ("" if row.degenerate else " (as fp32)") if row.output_breaks else "no")
        body.append(cells + [row.job.config_hash or "-"])
    headers.append("config_hash")
    return markdown_table(headers, body, ["<", ">", *[">"] * (len(shape) + len(columns)),
                                          *(["<"] if has_degenerate else []), "<"])


def failures_table(jobs: List[RunRecord]) -> str:
    return markdown_table(["Run", "Status", "Error"],
                          [[job.name, _status(job), job.error or _unrecorded(job)] for job in jobs],
                          ["<", "<", "<"])


def _unrecorded(job: RunRecord) -> str:
    """A KILLED run without an error tag was ended by an interrupt of its process (runs made before qsweep
    recorded which one)."""
    if job.status == "KILLED":
        return ("interrupted: Ctrl-C or SIGTERM (a time limit such as `timeout`'s, a scheduler, `kill`); "
                "which one was not recorded")
    return "no error recorded"


def _status(job: RunRecord) -> str:
    """A skipped job (sweep.skip_completed) points to the earlier run it stands for."""
    return f"SKIPPED = run {job.run_id}" if job.status == "SKIPPED" else job.status


def skipped_table(jobs: List[RunRecord]) -> str:
    """The skipped jobs and the earlier runs whose figures the tables show for them; empty if none."""
    skipped = [job for job in jobs if job.status == "SKIPPED"]
    return markdown_table(["Run", "Status"], [[job.name, _status(job)] for job in skipped],
                          ["<", "<"]) if skipped else ""


def title(model: str, rows: List[Row]) -> str:
    random = any(r.job.tags.get(TAG_WEIGHTS_KIND) == "random" for r in rows)
    return model + (" (random weights: speed and memory only)" if random else "")


def degenerate_line(jobs: List[RunRecord]) -> str:
    """Names the runs whose output is broken: where fp32's is not (the setting broke it: its speed figures
    are those of garbage text), and where fp32's own output breaks the same way (the model's doing)."""
    def named(job):
        return f"{job.name} ({job.tags.get(TAG_DEGENERATE_REASON, '?')})"

    broken = [job for job in jobs if job.metrics.get(DEGENERATE) == 1]
    worse = [named(job) for job in broken if broken_beyond_fp32(job.metrics)]
    as_fp32 = [named(job) for job in broken if not broken_beyond_fp32(job.metrics)]
    return ((f"\nDegenerate output where fp32's is not, so speed figures of broken text: {', '.join(worse)}."
             if worse else "")
            + (f"\nOutput that breaks as fp32's own does on the same prompts (the model's, not the setting's): "
               f"{', '.join(as_fp32)}." if as_fp32 else ""))


def count_line(jobs: List[RunRecord]) -> str:
    """'5 of 6 jobs finished, 1 failed.'; killed or still running jobs are counted apart from failures."""
    statuses = Counter(job.status for job in jobs)
    others = "".join(f", {n} {status.lower()}" for status, n in sorted(statuses.items())
                     if status not in ("FINISHED", "FAILED"))
    return f"{statuses['FINISHED']} of {len(jobs)} jobs finished, {statuses['FAILED']} failed{others}."
