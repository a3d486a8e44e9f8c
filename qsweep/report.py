"""Reports from MLflow runs: the seed-style table per model (printed at the end of every multirun and
by `python -m qsweep report`), the CPU-vs-GPU comparison, and report.md with its charts (charts.py).

Everything here reads RunRecords (tracking.sweep_jobs / find_jobs); only `write_report` touches the
store, through tracking.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from qsweep import tracking
from qsweep.config import HASHED_SECTIONS, BackendConfig
from qsweep.tracking import RunRecord

DEFAULT_BACKEND = BackendConfig().name
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8", "int4")
DEVICE_ORDER = ("cpu", "cuda")
DASH = "–"  # the seed's mark for "does not apply" (VRAM on the CPU)

# (header, metric, decimals, spread metric): the seed's columns first, then what it did not measure.
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
    ("KL vs FP32", "kl_div_vs_fp32", 4, None),
    ("Top-1 agreement vs FP32", "top1_agreement_vs_fp32", 3, None),
    ("Output match vs FP32", "output_match_vs_fp32", 3, None),
)
DEGENERATE = "degenerate_output"
UNFINISHED = "Jobs that did not finish (failed, killed or still running)"
SKIPPED = "Skipped jobs: their rows are the figures of an earlier run (sweep.skip_completed)"

LEGEND = (
    "Every figure is the median over the run's timed generations (`timed_samples`: prompts x repeats). "
    "`a ± b` shows the spread: b is half the interquartile range (the middle half of the samples lies "
    "within about a ± b); a figure without ± has no spread (one sample, or a single measurement such as "
    "memory and load time). Tokens/sec = new tokens of one sequence / median latency (the seed's definition, "
    "prefill included); decode tokens/sec leaves out the first token; throughput = batch size x new tokens / "
    "median latency (what the machine delivers); prefill = prompt tokens of the batch / TTFT. VRAM = torch's peak allocated GPU memory "
    f"({DASH} on the CPU); RSS = the process's peak resident memory. GB are GiB.")


@dataclass
class Row:
    """One finished job as the tables show it."""
    job: RunRecord
    model: str
    device: str
    precision: str
    max_new_tokens: int
    batch_size: int = 1
    prompt_tokens: object = "text"  # the number of prompt tokens, or "text" for the text prompts
    differs: str = ""  # what tells it from another row with the same label and length (tell_apart)

    @property
    def setting(self) -> str:
        """The seed's names (CPU FP32, GPU FP16; CPU INT4 FP4, CPU BF16 compiled where the setting tag says so),
        with the runtime and its format on a backend other than the default, from its `runtime` tag."""
        variant = self.job.tags.get("setting", "").split(" ", 2)[2:]  # after device and precision: FP4, compiled
        base = " ".join([f"{'GPU' if self.device == 'cuda' else self.device.upper()}", self.precision.upper(),
                         *variant])
        other_backend = self.job.tags.get("backend", DEFAULT_BACKEND) != DEFAULT_BACKEND
        base = f"{base} {self.job.tags.get('runtime', '')}".rstrip() if other_backend else base
        return f"{base} ({self.differs})" if self.differs else base

    @property
    def metrics(self) -> dict:
        return self.job.metrics

    @property
    def degenerate(self) -> bool:
        return bool(self.metrics.get(DEGENERATE))

    def sort_key(self):
        backend = self.job.tags.get("backend", DEFAULT_BACKEND)
        prompt = self.prompt_tokens if isinstance(self.prompt_tokens, int) else 0  # text prompts first
        return (self.max_new_tokens, _index(DEVICE_ORDER, self.device), prompt,
                (backend != DEFAULT_BACKEND, backend), _index(PRECISION_ORDER, self.precision), self.batch_size)


def _index(order: tuple, value: str) -> int:
    return order.index(value) if value in order else len(order)


def rows_by_model(jobs: List[RunRecord]) -> Dict[str, List[Row]]:
    """Finished jobs (and skipped ones, which stand for an earlier finished run), grouped by model (in order
    of appearance), each sorted like the seed's table."""
    models: Dict[str, List[Row]] = {}
    for job in jobs:
        tags = job.tags
        if job.status not in ("FINISHED", "SKIPPED") or "model" not in tags:
            continue
        prompt = tags.get("prompt_tokens", "text")
        row = Row(job, tags["model"], tags.get("device", "?"), tags.get("precision", "?"),
                  int(tags.get("max_new_tokens", job.metrics.get("new_tokens", 0))), int(tags.get("batch_size", 1)),
                  int(prompt) if prompt.isdigit() else prompt)
        models.setdefault(row.model, []).append(row)
    for rows in models.values():
        tell_apart(rows)
    return {model: sorted(rows, key=Row.sort_key) for model, rows in models.items()}


def tell_apart(rows: List[Row]) -> None:
    """Rows of one label measured at one length in different configurations (the runs of several sweeps, say
    other prompts or repeats) would read as one setting measured twice: each row of that label gets the
    values that differ between them in its label, "GPU FP16 (1 prompt, repeats=2)"."""
    labels: Dict[tuple, List[Row]] = {}
    for row in rows:
        labels.setdefault((row.setting, row.batch_size, row.prompt_tokens), []).append(row)
    for same_label in labels.values():
        measured = [_measured(row) for row in same_label]
        by_length: Dict[int, List[dict]] = {}
        for row, params in zip(same_label, measured):
            by_length.setdefault(row.max_new_tokens, []).append(params)
        clashes = [group for group in by_length.values() if len(group) > 1]
        if not clashes:
            continue
        differing = sorted({k for group in clashes for k in set().union(*group)
                            if len({params.get(k) for params in group}) > 1})
        for row, params in zip(same_label, measured):
            row.differs = (", ".join(_param_text(k, params.get(k)) for k in differing)
                           or f"config {row.job.config_hash}")


def _measured(row: Row) -> Dict[str, str]:
    """The run's params that its config_hash covers."""
    return {k: v for k, v in row.job.params.items() if k.split(".")[0] in HASHED_SECTIONS}


def _param_text(key: str, value: Optional[str]) -> str:
    """generation.repeats=2 -> "repeats=2"; a list -> how many: "1 prompt", "2 prompts"."""
    name = key.rsplit(".", 1)[-1]
    if value is None:
        return f"no {name}"
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if isinstance(items, list):
        return f"{len(items)} {name[:-1] if len(items) == 1 and name.endswith('s') else name}"
    return f"{name}={value}"


def not_finished(jobs: List[RunRecord]) -> List[RunRecord]:
    return [job for job in jobs if job.status not in ("FINISHED", "SKIPPED")]


def skipped_table(jobs: List[RunRecord]) -> str:
    """The skipped jobs and the earlier runs whose figures the tables show for them; empty if none."""
    skipped = [job for job in jobs if job.status == "SKIPPED"]
    return markdown_table(["Run", "Status"], [[job.name, _status(job)] for job in skipped],
                          ["<", "<"]) if skipped else ""


def latest_per_config(jobs: List[RunRecord]) -> List[RunRecord]:
    """Several sweeps of one experiment: per config_hash the newest finished run, else its newest failure."""
    chosen: Dict[str, RunRecord] = {}
    for job in jobs:  # oldest first
        key = job.config_hash or job.name
        if job.status == "FINISHED" or (key not in chosen or chosen[key].status != "FINISHED"):
            chosen[key] = job
    return list(chosen.values())


# --- cells and tables -------------------------------------------------------------------------------

def fmt(value: Optional[float], decimals: int, spread: Optional[float] = None) -> str:
    if value is None or value != value:  # missing or NaN
        return DASH
    text = f"{value:.{decimals}f}"
    return f"{text} ± {spread / 2:.{decimals}f}" if spread else text


def cell(row: Row, metric: str, decimals: int, spread_metric: Optional[str]) -> str:
    m = row.metrics
    spread = m.get(spread_metric) if spread_metric and m.get("timed_samples", 0) > 1 else None
    if metric == "peak_vram_gb" and row.device != "cuda":
        return DASH
    return fmt(m.get(metric), decimals, spread)


def serving(rows: List[Row]) -> bool:
    return any(r.batch_size != 1 or r.prompt_tokens != "text" for r in rows)


def columns_for(rows: List[Row]) -> tuple:
    present = {k for row in rows for k in row.metrics}
    quality = tuple(c for c in QUALITY_COLUMNS if c[1] in present)
    return SPEED_COLUMNS + (SERVING_COLUMNS if serving(rows) else ()) + quality, DEGENERATE in present


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
    """The seed's table (Setting, Max New Tokens, Latency, Tokens/sec, VRAM) plus TTFT, decode speed,
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
            cells.append(("yes: " + row.job.tags.get("degenerate_reason", "")).strip(": ")
                         if row.degenerate else "no")
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


def title(model: str, rows: List[Row]) -> str:
    random = any(r.job.tags.get("weights") == "random" for r in rows)
    return model + (" (random weights: speed and memory only)" if random else "")


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


def degenerate_line(jobs: List[RunRecord]) -> str:
    """Names the runs whose output is broken: their speed figures are those of garbage text."""
    broken = [f"{job.name} ({job.tags.get('degenerate_reason', '?')})" for job in jobs
              if job.metrics.get(DEGENERATE) == 1]
    return f"\nDegenerate output, so speed figures of broken text: {', '.join(broken)}." if broken else ""


def count_line(jobs: List[RunRecord]) -> str:
    """'5 of 6 jobs finished, 1 failed.'; killed or still running jobs are counted apart from failures."""
    statuses = Counter(job.status for job in jobs)
    others = "".join(f", {n} {status.lower()}" for status, n in sorted(statuses.items())
                     if status not in ("FINISHED", "FAILED"))
    return f"{statuses['FINISHED']} of {len(jobs)} jobs finished, {statuses['FAILED']} failed{others}."


# --- CPU vs GPU (seed 000) ---------------------------------------------------------------------------

def _quantization(precision: str) -> str:
    return {"int8": "Yes (8-bit, LLM.int8)", "int4": "Yes (4-bit)"}.get(precision, f"No ({precision.upper()})")


def by_setting(rows: List[Row]) -> Dict[str, List[Row]]:
    """Setting -> its rows, settings in the seed's order (CPU first, then by precision)."""
    settings: Dict[str, List[Row]] = {}
    for row in sorted(rows, key=lambda r: (_index(DEVICE_ORDER, r.device), _index(PRECISION_ORDER, r.precision))):
        settings.setdefault(row.setting, []).append(row)
    return settings


def longest_per_setting(rows: List[Row]) -> Dict[str, Row]:
    return {s: max(rs, key=lambda r: r.max_new_tokens) for s, rs in by_setting(rows).items()}


def cpu_vs_gpu(rows: List[Row], samples: Dict[str, str], hardware: Dict[str, str]) -> Optional[str]:
    """Seed 000's comparison for a model measured on both devices: one column per setting, CPU first.
    samples / hardware: run_id -> the first prompt's output / the machine, from the runs' artifacts."""
    devices = {r.device for r in rows}
    if not {"cpu", "cuda"} <= devices:
        return None
    settings = by_setting(rows)
    lengths = sorted({r.max_new_tokens for r in rows})
    longest = longest_per_setting(rows)
    baseline = next(iter(settings))  # the first CPU setting (CPU FP32 when measured): speeds relative to it

    def per_setting(fn):
        return [fn(longest[s]) for s in settings]

    def at_length(n, metric, decimals, spread=None):
        out = []
        for s in settings:
            row = next((r for r in settings[s] if r.max_new_tokens == n), None)
            out.append(cell(row, metric, decimals, spread) if row else "not measured")
        return out

    table = [["Hardware", *per_setting(lambda r: hardware.get(r.job.run_id, r.setting.split()[0]))],
             ["Quantization", *per_setting(lambda r: _quantization(r.precision))],
             ["Model size in memory (GB)", *per_setting(lambda r: fmt(r.metrics.get("model_footprint_gb"), 3))],
             ["Load time (s)", *per_setting(lambda r: fmt(r.metrics.get("load_time_s"), 1))]]
    for n in lengths:
        table.append([f"Inference time, {n} tokens (s)", *at_length(n, "latency_s", 3, "latency_iqr_s")])
        speeds = [next((r.metrics.get("tokens_per_s") for r in settings[s] if r.max_new_tokens == n), None)
                  for s in settings]
        table.append([f"Tokens/sec, {n} tokens (x {baseline})",
                      *(("not measured" if v is None else f"{v:.2f}" + (f" ({v / speeds[0]:.2f}x)" if speeds[0] else ""))
                        for v in speeds)])
    table.append(["Time to first token (s)", *per_setting(lambda r: cell(r, "ttft_s", 3, "ttft_iqr_s"))])
    table.append(["RAM usage, peak RSS (GB)", *per_setting(lambda r: fmt(r.metrics.get("peak_rss_gb"), 2))])
    table.append(["VRAM usage (GB)", *per_setting(lambda r: cell(r, "peak_vram_gb", 2, None))])
    for header, metric, decimals, _ in QUALITY_COLUMNS:
        if any(metric in r.metrics for r in rows):
            table.append([header, *per_setting(lambda r: fmt(r.metrics.get(metric), decimals))])
    table.append(["Response output", *per_setting(lambda r: samples.get(r.job.run_id, DASH))])
    return markdown_table(["Feature", *settings], table, ["<"] * (len(settings) + 1))


def sample_text(generations, limit: int = 160) -> str:
    """The first prompt's output from a run's generations.json, on one line, safe in a table cell."""
    if not generations:
        return DASH
    text = " ".join(str(generations[0].get("output", "")).split()).replace("|", "\\|")
    text = text if len(text) <= limit else text[:limit].rstrip() + "…"
    return f"“{text}”" if text else "(empty)"


def hardware_text(env, device: str) -> Optional[str]:
    """The device a run measured on, from its environment.json: the CPU (model and threads) for a CPU run,
    even on a machine with a GPU, and the GPU (with CUDA and driver) for a CUDA run."""
    if not env:
        return None
    if device != "cuda":
        return f"CPU: {env.get('cpu') or '?'} ({env.get('torch_threads', '?')} threads)"
    if not env.get("gpu_name"):
        return None
    versions = ", ".join(f"{label} {env[key]}" for label, key in (("CUDA", "cuda"), ("driver", "driver"))
                         if env.get(key))
    return f"GPU: {env['gpu_name']}" + (f" ({versions})" if versions else "")


# --- report.md ----------------------------------------------------------------------------------------

def write_report(store, jobs: List[RunRecord], out_dir: Path, source: str, parent_run_id: Optional[str] = None,
                 log: bool = True) -> Path:
    """report.md, the charts and the CPU-vs-GPU tables into out_dir; logged to the sweep's parent run."""
    from qsweep import charts, scaling

    out_dir.mkdir(parents=True, exist_ok=True)
    by_model = rows_by_model(jobs)
    failed = not_finished(jobs)
    lines = [f"# qsweep report: {source}", "",
             f"{count_line(jobs)} "
             f"Store: `{store.uri}`. Written {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    env = _environment(store, [r for rows in by_model.values() for r in rows])
    if env:
        lines += [f"Measured with {env}.", ""]
    lines += [f"**How to read the tables.** {LEGEND}", ""]
    for model, rows in by_model.items():
        lines += [f"## {title(model, rows)}", "", model_table(rows) + _stops_paying(rows), ""]
        degenerate = [r for r in rows if r.degenerate]
        if degenerate:
            lines += ["⚠ degenerate output (the quality check flagged the generated text): "
                      + ", ".join(f"{r.setting} {r.max_new_tokens}" for r in degenerate), ""]
        for chart in charts.model_charts(model, rows, out_dir) + scaling.charts(model, rows, out_dir):
            lines += [f"![{chart.caption}]({chart.path.name})", "", f"*{chart.caption}*", ""]
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
            hardware = {r.job.run_id: hardware_text(tracking.read_json(store, r.job.run_id,
                                                                       tracking.ENVIRONMENT_FILE), r.device)
                        for r in longest.values()}
            comparison = cpu_vs_gpu(rows, samples, {k: v for k, v in hardware.items() if v})
            lines += [f"### CPU vs GPU: {model}", "",
                      "The comparison of seed 000, from the same runs (inference time and speed at every "
                      "length measured; the other rows from the longest).", "", comparison, ""]
    skipped = skipped_table(jobs)
    if skipped:
        lines += [f"## {SKIPPED}", "", skipped, ""]
    lines += [f"## {UNFINISHED}", ""]
    lines += [failures_table(failed), ""] if failed else ["None: every job finished.", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    if log and parent_run_id:
        sweep_run = tracking.RunWriter(store, parent_run_id)
        sweep_run.log_folder(out_dir, "report")
        sweep_run.describe("Report: artifacts `report/report.md` and charts.\n\n" + summary(jobs))
    return report


def _environment(store, rows: List[Row]) -> Optional[str]:
    """One line about the software and machines, from the runs' environment.json."""

    devices, first = [], None  # each device once: the CPU of the CPU runs, the GPU of the CUDA runs
    for device in DEVICE_ORDER:
        row = next((r for r in rows if r.device == device), None)
        env = row and tracking.read_json(store, row.job.run_id, tracking.ENVIRONMENT_FILE)
        text = hardware_text(env, device)
        first = first or env
        if text and text not in devices:
            devices.append(text)
    if not first:
        return None
    packages = first.get("packages", {})
    versions = ", ".join(f"{p} {packages[p]}" for p in ("torch", "transformers", "bitsandbytes") if packages.get(p))
    commit = (first.get("git_commit") or "")[:10]
    return "; ".join(devices + ([versions] if versions else [])) + (f"; qsweep commit {commit}" if commit else "")
