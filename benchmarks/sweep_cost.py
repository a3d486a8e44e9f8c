"""Where a sweep's wall time goes: measured work (model loading, warm-up and timed generation, quality
evaluation) against the rest, from the phase metrics each job records (README, "What each metric means"):
worker start, imports and CUDA initialisation, checkpoint preparation, environment record, MLflow recording,
and between the jobs (Hydra, the sweep's own start-up and summary).

    python benchmarks/sweep_cost.py --store sqlite:///$PWD/mlruns/mlflow.db   # the latest sweep
    python benchmarks/sweep_cost.py --store ... --sweep RUN_ID               # a given sweep

Runs recorded before the phase metrics existed get the old estimate of their timed work (median latency x
samples) and no phases.
"""

import argparse
import json
import statistics

from qsweep import tracking
from qsweep.config import TrackingConfig
from qsweep.results import JobPhases

PHASES = [name for name in JobPhases.__dataclass_fields__ if name.startswith("phase_")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--experiment", default="qsweep")
    parser.add_argument("--sweep", metavar="RUN_ID", help="the sweep's parent run (default: the latest sweep)")
    args = parser.parse_args()
    store = tracking.open_store(TrackingConfig(uri=args.store, experiment=args.experiment), create=False)
    parent = tracking.get_run(store, args.sweep) if args.sweep else tracking.latest_sweep(store)
    jobs = tracking.sweep_jobs(store, parent.run_id)
    sweep_s = (parent.end_time - parent.start_time) / 1000

    def total(name, estimate=lambda m: 0.0):
        return sum(j.metrics[name] if name in j.metrics else estimate(j.metrics) for j in jobs)

    timed_s = total("phase_generation_s", lambda m: m.get("latency_s", 0) * m.get("timed_samples", 0))
    warmup_s = total("phase_warmup_s", lambda m: 0.0)
    if not any("phase_warmup_s" in j.metrics for j in jobs):  # old runs: median latency x warm-up generations
        warmup_s = sum(j.metrics.get("latency_s", 0) * int(j.params.get("generation.warmup", 0)) for j in jobs)
    load_s, quality_s = total("load_time_s"), total("quality_time_s")
    measured = timed_s + warmup_s + load_s + quality_s
    fixed = [j.metrics["fixed_cost_s"] for j in jobs if "fixed_cost_s" in j.metrics]
    print(json.dumps({
        "sweep": parent.name, "jobs": len(jobs), "sweep_wall_s": round(sweep_s, 1),
        "sweep_s_per_job": round(sweep_s / max(len(jobs), 1), 2),
        "job_runs_s": round(sum((j.end_time - j.start_time) / 1000 for j in jobs), 1),
        "load_s": round(load_s, 1), "timed_generation_s": round(timed_s, 1),
        "warmup_generation_s": round(warmup_s, 1), "quality_s": round(quality_s, 1),
        "timed_share": round(timed_s / sweep_s, 3), "rest_s": round(sweep_s - measured, 1),
        "rest_share": round(1 - measured / sweep_s, 3),
        **({"fixed_cost_median_s": round(statistics.median(fixed), 3), "fixed_cost_max_s": round(max(fixed), 3),
            **{name: round(total(name), 2) for name in PHASES}} if fixed else {})}))


if __name__ == "__main__":
    main()
