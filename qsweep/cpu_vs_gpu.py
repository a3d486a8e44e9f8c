"""The CPU-vs-GPU comparison of a model measured on both devices (the fine-tune's question: its CPU fp32 against
the GPU's precisions): one column per setting, CPU first, and the machines each device stands for."""

from __future__ import annotations

from typing import Dict, List, Optional

from qsweep.report_rows import DEVICE_ORDER, Row, by_setting, longest_per_setting
from qsweep.tables import DASH, QUALITY_COLUMNS, cell, fmt, markdown_table


def _quantization(precision: str) -> str:
    return {"int8": "Yes (8-bit, LLM.int8)", "int4": "Yes (4-bit)"}.get(precision, f"No ({precision.upper()})")


def cpu_vs_gpu(rows: List[Row], samples: Dict[str, str], hardware: Dict[str, str]) -> Optional[str]:
    """One column per setting, CPU first; None unless the model was measured on both devices.
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


def environment_line(environments: Dict[str, dict]) -> Optional[str]:
    """One line about the machines and software, from one run's environment.json per device (cpu, cuda):
    each device once, the CPU of the CPU runs and the GPU of the CUDA runs."""
    devices = []
    for device in DEVICE_ORDER:
        text = hardware_text(environments.get(device), device)
        if text and text not in devices:
            devices.append(text)
    first = next((env for env in environments.values() if env), None)
    if not first:
        return None
    packages = first.get("packages", {})
    versions = ", ".join(f"{p} {packages[p]}" for p in ("torch", "transformers", "bitsandbytes") if packages.get(p))
    commit = (first.get("git_commit") or "")[:10]
    return "; ".join(devices + ([versions] if versions else [])) + (f"; qsweep commit {commit}" if commit else "")
