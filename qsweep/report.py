"""Tables from MLflow runs: the end-of-sweep summary."""

from __future__ import annotations

from typing import List

SUMMARY_COLUMNS = (  # (header, metric, format)
    ("tokens/s", "tokens_per_s", "{:.2f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
    ("latency s", "latency_s", "{:.3f}"),
    ("TTFT s", "ttft_s", "{:.3f}"),
    ("load s", "load_time_s", "{:.1f}"),
    ("footprint GB", "model_footprint_gb", "{:.3g}"),
    ("peak RSS GB", "peak_rss_gb", "{:.2f}"),
    ("peak VRAM GB", "peak_vram_gb", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("KL vs fp32", "kl_div_vs_fp32", "{:.4f}"),
)


def _cell(run: dict, metric: str, fmt: str) -> str:
    value = run["metrics"].get(metric)
    return "-" if value is None else fmt.format(value)


def markdown_table(headers: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary(jobs: List[dict]) -> str:
    headers = ["run", "status", "config_hash", *(h for h, _, _ in SUMMARY_COLUMNS), "degenerate", "error"]
    rows = [[job["name"], _status(job), job["tags"].get("config_hash", "-"),
             *(_cell(job, metric, fmt) for _, metric, fmt in SUMMARY_COLUMNS), _degenerate(job),
             job["tags"].get("error", "")] for job in jobs]
    skipped = sum(job["status"] == "SKIPPED" for job in jobs)
    failed = sum(job["status"] not in ("FINISHED", "SKIPPED") for job in jobs)
    broken = [f"{job['name']} ({job['tags'].get('degenerate_reason', '?')})" for job in jobs
              if job["metrics"].get("degenerate_output") == 1]
    return (markdown_table(headers, rows) +
            f"\n\n{len(jobs) - failed - skipped} of {len(jobs)} jobs finished, {failed} failed" +
            (f", {skipped} skipped (already FINISHED: the SKIPPED rows show those runs)." if skipped else ".") +
            (f"\nDegenerate output, so speed figures of broken text: {', '.join(broken)}." if broken else ""))


def _status(job: dict) -> str:
    """A skipped job (sweep.skip_completed) points to the earlier run it stands for."""
    return f"SKIPPED = run {job['run_id']}" if job["status"] == "SKIPPED" else job["status"]


def _degenerate(job: dict) -> str:
    """yes (why) / no / - (quality not measured)."""
    flag = job["metrics"].get("degenerate_output")
    if flag is None:
        return "-"
    return f"yes ({job['tags'].get('degenerate_reason', '?')})" if flag == 1 else "no"
