"""The report of a set of runs: the summary a multirun prints at its end (and `python -m qsweep report` too),
and report.md with its charts, logged to the sweep's run.

Rows come from report_rows.py, tables from tables.py and cpu_vs_gpu.py, charts from charts.py and
scaling.py, the front and the closing recommendation from decide.py and recommend.py; this module reads
the runs' artifacts (through tracking) and puts the pieces in order: per model the settings worth deploying
first, then every setting measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

from qsweep import tracking
from qsweep.credentials import redact, without_password
from qsweep.cpu_vs_gpu import cpu_vs_gpu, environment_line, hardware_text
from qsweep.report_rows import DEVICE_ORDER, Row, longest_per_setting, not_finished, rows_by_model
from qsweep.report_rows import latest_per_config  # noqa: F401  (`qsweep report --experiment` picks runs with it)
from qsweep.tables import (DASH, LEGEND, SKIPPED, UNFINISHED, count_line, degenerate_line, failures_table,
                           markdown_table, model_table, skipped_table, title)
from qsweep.tracking import RunRecord


def summary(jobs: List[RunRecord]) -> str:
    """The main table per model, the jobs that did not finish with their error, and a count:
    what the end of a multirun prints, and what `python -m qsweep report` prints."""
    parts = [f"## {title(model, rows)}\n\n{model_table(rows)}" + _stops_paying(rows)
             for model, rows in rows_by_model(jobs).items()]
    skipped = skipped_table(jobs)
    if skipped:
        parts.append(f"## {SKIPPED}\n\n{skipped}")
    failed = not_finished(jobs)
    if failed:
        parts.append(f"## {UNFINISHED}\n\n{failures_table(failed)}")
    parts.append(count_line(jobs) + degenerate_line(jobs))
    return "\n\n".join(parts)


def _stops_paying(rows: List[Row]) -> str:
    from qsweep import scaling

    lines = scaling.stops_paying(rows) if scaling.varies(rows, "batch_size") else []
    return ("\n\nWhere quantization stops paying, on this machine:\n" + "\n".join(f"- {line}" for line in lines)
            if lines else "")


def write_report(store, jobs: List[RunRecord], out_dir: Path, source: str, parent_run_id: Optional[str] = None,
                 log: bool = True) -> Path:
    """report.md, the charts and the CPU-vs-GPU tables into out_dir; logged to the sweep's parent run."""
    from qsweep import charts, decide, recommend, scaling

    out_dir.mkdir(parents=True, exist_ok=True)
    by_model = rows_by_model(jobs)
    failed = not_finished(jobs)
    lines = [f"# qsweep report: {source}", "",
             f"{count_line(jobs)} "
             f"Store: `{redact(store.uri)}`. Written {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    env = _environment(store, [r for rows in by_model.values() for r in rows])
    if env:
        lines += [f"Measured with {env}.", ""]
    lines += [f"**How to read the tables.** {LEGEND}", ""]
    for model, rows in by_model.items():
        front, _ = decide.front_section(rows)
        lines += [f"## {title(model, rows)}", "", front, f"### Every setting measured: {model}", "",
                  model_table(rows) + _stops_paying(rows), ""]
        degenerate = [r for r in rows if r.degenerate]
        if degenerate:
            lines += ["⚠ degenerate output where fp32's is not (the quality check flagged the generated text): "
                      + ", ".join(f"{r.setting} {r.max_new_tokens}" for r in degenerate), ""]
        for chart in charts.model_charts(model, rows, out_dir) + scaling.charts(model, rows, out_dir):
            lines += [f"![{chart.caption}]({chart.path.name})", "", f"*{chart.caption}*", ""]
        lines += _samples_and_comparison(store, model, rows)
    skipped = skipped_table(jobs)
    if skipped:
        lines += [f"## {SKIPPED}", "", skipped, ""]
    lines += [f"## {UNFINISHED}", ""]
    lines += [failures_table(failed), ""] if failed else ["None: every job finished.", ""]
    lines += [recommend.report_section([r for rows in by_model.values() for r in rows], store_option(store.uri))]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    if log and parent_run_id:
        _log_to_sweep(store, parent_run_id, out_dir, jobs)
    return report


def store_option(uri: str) -> str:
    """What a printed `python -m qsweep ...` command needs to find the store `uri`: nothing for the default."""
    from qsweep.config import TrackingConfig

    return "" if uri == tracking.store_uri(TrackingConfig()) else f" --tracking-uri {without_password(uri)}"


def _samples_and_comparison(store, model: str, rows: List[Row]) -> List[str]:
    """The first prompt's output at each setting's longest length, then the CPU-vs-GPU comparison when the
    model was measured on both devices."""
    lines = []
    longest = longest_per_setting(rows)
    generations = {r.job.run_id: tracking.read_json(store, r.job.run_id, tracking.GENERATIONS_FILE)
                   for r in longest.values()}
    samples = {run_id: sample_text(g) for run_id, g in generations.items()}
    prompt = next((g[0].get("prompt") for g in generations.values() if g), None)
    if prompt:
        lines += [f"### Sample output: {model}", "", f"The first prompt, “{prompt}”, at each setting's "
                  "longest length (greedy; the text of every prompt is in each run's generations.md).", "",
                  markdown_table(["Setting", "New tokens", "Output"],
                                 [[s, str(r.max_new_tokens), samples[r.job.run_id]]
                                  for s, r in longest.items()], ["<", ">", "<"]), "",
                  "Every prompt's output next to fp32's, with the tokens they share, for any runs side by "
                  f"side: the MLflow UI's Artifact evaluation view of `{tracking.GENERATIONS_TABLE}` "
                  f"({tracking.ui_command(store.uri)}): <{tracking.runs_url(store, 'ARTIFACT')}>", ""]
    if {"cpu", "cuda"} <= {r.device for r in rows}:
        hardware = {r.job.run_id: hardware_text(tracking.read_json(store, r.job.run_id, tracking.ENVIRONMENT_FILE),
                                                r.device)
                    for r in longest.values()}
        comparison = cpu_vs_gpu(rows, samples, {k: v for k, v in hardware.items() if v})
        lines += [f"### CPU vs GPU: {model}", "",
                  "Every setting side by side, CPU first, from the same runs (inference time and speed at every "
                  "length measured; the other rows from the longest).", "", comparison, ""]
    return lines


def sample_text(generations, limit: int = 160) -> str:
    """The first prompt's output from a run's generations.json, on one line, safe in a table cell."""
    if not generations:
        return DASH
    text = " ".join(str(generations[0].get("output", "")).split()).replace("|", "\\|")
    text = text if len(text) <= limit else text[:limit].rstrip() + "…"
    return f"“{text}”" if text else "(empty)"


def _environment(store, rows: List[Row]) -> Optional[str]:
    """One line about the software and machines, from the environment.json of one run per device."""
    environments = {}
    for device in DEVICE_ORDER:
        row = next((r for r in rows if r.device == device), None)
        environments[device] = row and tracking.read_json(store, row.job.run_id, tracking.ENVIRONMENT_FILE)
    return environment_line(environments)


def _log_to_sweep(store, parent_run_id: str, out_dir: Path, jobs: List[RunRecord]) -> None:
    """report.md and the charts as artifacts of the sweep's run, and the summary as its description."""
    sweep_run = tracking.RunWriter(store, parent_run_id)
    sweep_run.log_folder(out_dir, "report")
    sweep_run.describe("Report: artifacts `report/report.md` and charts.\n\n" + summary(jobs))
