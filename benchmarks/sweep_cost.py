"""Where a sweep's wall time goes: measured work (model loading, warm-up and timed generation, quality
evaluation) against the rest (worker start, environment record, MLflow logging, Hydra between jobs).

    python benchmarks/sweep_cost.py --store sqlite:///$PWD/mlruns/mlflow.db   # the latest sweep
    python benchmarks/sweep_cost.py --store ... --sweep RUN_ID               # a given sweep
"""

import argparse
import json

from qsweep import tracking
from qsweep.config import TrackingConfig


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
    jobs_s = sum((j.end_time - j.start_time) / 1000 for j in jobs)
    # timed work: median latency x timed generations (the sum, up to the spread between samples)
    timed_s = sum(j.metrics.get("latency_s", 0) * j.metrics.get("timed_samples", 0) for j in jobs)
    warmup_s = sum(j.metrics.get("latency_s", 0) * int(j.params.get("generation.warmup", 0)) for j in jobs)
    load_s = sum(j.metrics.get("load_time_s", 0) for j in jobs)
    quality_s = sum(j.metrics.get("quality_time_s", 0) for j in jobs)
    measured = timed_s + warmup_s + load_s + quality_s
    print(json.dumps({
        "sweep": parent.name, "jobs": len(jobs), "sweep_wall_s": round(sweep_s, 1),
        "job_runs_s": round(jobs_s, 1), "load_s": round(load_s, 1), "timed_generation_s": round(timed_s, 1),
        "warmup_generation_s": round(warmup_s, 1), "quality_s": round(quality_s, 1),
        "rest_s": round(sweep_s - measured, 1), "rest_share": round(1 - measured / sweep_s, 3)}))


if __name__ == "__main__":
    main()
