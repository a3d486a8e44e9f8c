"""Sanity checks on what the GPU kit recorded: one PASS/FAIL line each, exit 1 when any fails.

    python benchmarks/gpu/checks.py --tracking-uri sqlite:////tmp/gpu-store/mlflow.db

- every finished job: TTFT < latency;
- every finished CUDA job: peak_vram_gb (torch's allocations) <= gpu_mem_used_gb (NVML, the whole device);
- per model on CUDA: weight footprint int4 < int8 < fp16 (model_footprint_gb);
- every finished CUDA job's environment.json records gpu_name, driver and cuda;
- every finished CUDA job: energy per output token > 0 (NVML's counter), else the energy_unavailable reason;
- its average power between its idle power (less 5 %: both are NVML readings) and the GPU's power limit;
- per model on CUDA: J per output token of fp16, int8 and int4 side by side (int4 / fp16), so the first lent
  GPU answers what a token costs at each precision;
- no run (job, sweep, fine-tune) left RUNNING;
- with --overhead FILE (benchmarks/overhead.py's JSON lines): qsweep's timed loop >= 0.97 of a bare generate;
- and, to read, which jobs failed and why, and whether fp16 came out degenerate on CUDA.

The check functions take RunRecords (tests/test_gpu_kit.py feeds them hand-made ones); main() reads the store.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FOOTPRINT_ORDER = ("int4", "int8", "fp16")  # smallest first
ENV_KEYS = ("gpu_name", "driver", "cuda")
ENERGY_ORDER = ("fp16", "int8", "int4")
IDLE_TOLERANCE = 0.95  # idle power is a power reading before the job; the average comes from the energy counter


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _finished(runs):
    return [r for r in runs if r.status == "FINISHED"]


def _cuda(runs):
    return [r for r in runs if r.tags.get("device") == "cuda"]


def _names(runs, limit: int = 6) -> str:
    names = [r.name for r in runs]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def ttft_below_latency(jobs) -> Check:
    timed = [r for r in _finished(jobs) if "ttft_s" in r.metrics and "latency_s" in r.metrics]
    bad = [r for r in timed if not r.metrics["ttft_s"] < r.metrics["latency_s"]]
    if not timed:
        return Check("TTFT < latency", False, "no finished job has both ttft_s and latency_s")
    return Check("TTFT < latency", not bad, f"{len(timed) - len(bad)}/{len(timed)} finished jobs"
                 + (f"; not in {_names(bad)}" if bad else ""))


def vram_within_device_memory(jobs) -> Check:
    cuda = _cuda(_finished(jobs))
    missing = [r for r in cuda if "peak_vram_gb" not in r.metrics or "gpu_mem_used_gb" not in r.metrics]
    bad = [r for r in cuda if r not in missing and r.metrics["peak_vram_gb"] > r.metrics["gpu_mem_used_gb"]]
    if not cuda:
        return Check("peak_vram_gb <= gpu_mem_used_gb", False, "no finished CUDA job")
    detail = f"{len(cuda) - len(bad) - len(missing)}/{len(cuda)} finished CUDA jobs"
    detail += f"; exceeded in {_names(bad)}" if bad else ""
    detail += f"; missing a metric in {_names(missing)}" if missing else ""
    return Check("peak_vram_gb <= gpu_mem_used_gb", not bad and not missing, detail)


def footprint_order(jobs) -> Check:
    """int4 < int8 < fp16 weight bytes, per model on CUDA (the precisions it has of these three)."""
    sizes: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in _cuda(_finished(jobs)):
        if r.tags.get("precision") in FOOTPRINT_ORDER and "model_footprint_gb" in r.metrics:
            sizes[r.tags.get("model", r.name)][r.tags["precision"]].append(r.metrics["model_footprint_gb"])
    compared, bad = [], []
    for model, by_precision in sorted(sizes.items()):
        present = [(p, statistics.median(by_precision[p])) for p in FOOTPRINT_ORDER if p in by_precision]
        if len(present) < 2:
            continue
        text = " < ".join(f"{p} {gb:.3f}" for p, gb in present)
        ordered = all(a[1] < b[1] for a, b in zip(present, present[1:]))
        (compared if ordered else bad).append(f"{model} ({text} GB)")
    if not compared and not bad:
        return Check("footprint int4 < int8 < fp16", False, "no model has two of int4, int8, fp16 finished on CUDA")
    return Check("footprint int4 < int8 < fp16", not bad,
                 "; ".join(compared + [f"NOT ORDERED: {b}" for b in bad]))


def environment_recorded(jobs, environment: Callable[[str], Optional[dict]]) -> Check:
    cuda = _cuda(_finished(jobs))
    bad = []
    for r in cuda:
        env = environment(r.run_id) or {}
        missing = [key for key in ENV_KEYS if not env.get(key)]
        if missing:
            bad.append(f"{r.name} (no {', '.join(missing)})")
    if not cuda:
        return Check("environment.json: gpu_name, driver, cuda", False, "no finished CUDA job")
    seen = environment(cuda[0].run_id) or {}
    return Check("environment.json: gpu_name, driver, cuda", not bad,
                 f"{len(cuda) - len(bad)}/{len(cuda)} finished CUDA jobs"
                 + (f" (e.g. {seen.get('gpu_name')}, driver {seen.get('driver')}, CUDA {seen.get('cuda')})"
                    if not bad else f"; missing in {', '.join(bad[:6])}"))


def energy_measured(jobs) -> Check:
    cuda = _cuda(_finished(jobs))
    bad = [r for r in cuda if not r.metrics.get("energy_per_output_token_j", 0) > 0]
    if not cuda:
        return Check("energy per output token > 0", False, "no finished CUDA job")
    return Check("energy per output token > 0", not bad, f"{len(cuda) - len(bad)}/{len(cuda)} finished CUDA jobs"
                 + ("; none in " + "; ".join(f"{r.name} ({r.tags.get('energy_unavailable', 'no energy metric')})"
                                              for r in bad[:6]) if bad else ""))


def power_within_limits(jobs) -> Check:
    keys = ("idle_power_w", "avg_power_w", "power_limit_w")
    rows = [r for r in _cuda(_finished(jobs)) if all(k in r.metrics for k in keys)]
    if not rows:
        return Check("idle <= average power <= limit", False, "no finished CUDA job has " + ", ".join(keys))
    bad = [r for r in rows if not IDLE_TOLERANCE * r.metrics["idle_power_w"] <= r.metrics["avg_power_w"]
           <= r.metrics["power_limit_w"]]
    seen = [r.metrics["avg_power_w"] for r in rows]
    detail = (f"{len(rows) - len(bad)}/{len(rows)} CUDA jobs with energy; average {min(seen):.0f}-{max(seen):.0f} W, "
              f"idle {statistics.median(r.metrics['idle_power_w'] for r in rows):.0f} W (median), limit "
              f"{rows[0].metrics['power_limit_w']:.0f} W")
    return Check("idle <= average power <= limit", not bad, detail + "".join(
        f"; {r.name}: {' / '.join(f'{k} {r.metrics[k]:.0f}' for k in keys)}" for r in bad[:6]))


def energy_by_precision(jobs) -> Check:
    """J per output token of fp16, int8, int4 per model on CUDA (median over its runs); passes when some model
    has both int4 and fp16."""
    joules: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in _cuda(_finished(jobs)):
        if r.tags.get("precision") in ENERGY_ORDER and "energy_per_output_token_j" in r.metrics:
            joules[r.tags.get("model", r.name)][r.tags["precision"]].append(r.metrics["energy_per_output_token_j"])
    lines, compared = [], False
    for model, by_precision in sorted(joules.items()):
        median = {p: statistics.median(v) for p, v in by_precision.items()}
        text = ", ".join(f"{p} {median[p]:.4f}" for p in ENERGY_ORDER if p in median)
        if "int4" in median and "fp16" in median:
            compared, text = True, text + f" (int4/fp16 {median['int4'] / median['fp16']:.2f}x)"
        lines.append(f"{model}: {text}")
    return Check("J per output token, int4 vs fp16", compared,
                 "; ".join(lines) or "no finished CUDA job of fp16, int8 or int4 has energy_per_output_token_j")


def none_running(runs) -> Check:
    running = [r for r in runs if r.status == "RUNNING"]
    return Check("no run left RUNNING", not running,
                 f"{len(runs)} runs" + (f"; RUNNING: {_names(running)}" if running else ""))


def jobs_finished(jobs) -> Check:
    failed = [r for r in jobs if r.status != "FINISHED"]
    detail = f"{len(jobs) - len(failed)}/{len(jobs)} jobs FINISHED"
    if failed:
        detail += "; " + "; ".join(f"{r.name} {r.status}: {r.tags.get('error', '?')}" for r in failed[:8])
    return Check("every job finished", bool(jobs) and not failed, detail)


def fp16_note(jobs) -> str:
    """Informational: which fp16 CUDA runs with quality came out degenerate (gemma's fp16 overflow on CPU)."""
    rows = [r for r in _cuda(_finished(jobs)) if r.tags.get("precision") == "fp16" and "degenerate_output" in r.metrics]
    if not rows:
        return "INFO fp16 on CUDA: no fp16 CUDA run with quality metrics"
    return "INFO fp16 on CUDA: " + "; ".join(
        f"{r.name} degenerate={int(r.metrics['degenerate_output'])} ({r.tags.get('degenerate_reason', '?')})"
        for r in rows)


def overhead_ratio(rows: List[dict], target: float = 0.97) -> Check:
    """benchmarks/overhead.py on CUDA: qsweep's tokens/s over a bare generate's, per setting, and no thread of
    qsweep's alive beside its timed generations."""
    detail = ", ".join(f"{r['setting']} {r['ratio']:.3f} ({r['qsweep_tokens_per_s']:.0f} vs "
                       f"{r['library_tokens_per_s']:.0f} tok/s, {r.get('extra_threads', '?')} extra threads)"
                       for r in rows) or "no overhead result"
    return Check(f"overhead ratio >= {target}, no extra thread", bool(rows) and all(
        r["ratio"] >= target and r.get("extra_threads") == 0 for r in rows), detail)


def run_checks(jobs, all_runs, environment) -> List[Check]:
    return [ttft_below_latency(jobs), vram_within_device_memory(jobs), footprint_order(jobs),
            environment_recorded(jobs, environment), energy_measured(jobs), power_within_limits(jobs),
            energy_by_precision(jobs), none_running(all_runs), jobs_finished(jobs)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--overhead", type=Path, help="benchmarks/overhead.py's JSON lines, to check the ratio")
    args = parser.parse_args(argv)
    from qsweep import tracking
    from qsweep.config import TrackingConfig

    try:
        store = tracking.open_store(TrackingConfig(uri=args.tracking_uri), create=False)
    except tracking.StoreUnavailable as err:
        print(f"FAIL store: {err}")
        return 1
    jobs = tracking.find_jobs(store)
    # every run of every experiment (jobs, sweeps, fine-tunes), for the RUNNING check
    all_runs = tracking.find_runs(tracking.open_for_reading(args.tracking_uri))
    checks = run_checks(jobs, all_runs, lambda run_id: tracking.read_json(store, run_id, tracking.ENVIRONMENT_FILE))
    print(fp16_note(jobs))
    if args.overhead:
        import json

        lines = args.overhead.read_text().splitlines() if args.overhead.is_file() else []
        checks.append(overhead_ratio([json.loads(line) for line in lines if line.startswith("{")]))
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
