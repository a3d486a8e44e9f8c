"""Where a sweep's wall time goes: measured work (model loading + timed generation) against the rest
(worker start, warm-up, environment record, MLflow logging, Hydra between jobs).

    python benchmarks/sweep_cost.py --store sqlite:///$PWD/mlruns/mlflow.db   # the latest sweep
"""

import argparse
import json

from mlflow import MlflowClient


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--experiment", default="qsweep")
    args = parser.parse_args()
    client = MlflowClient(args.store)
    experiment = client.get_experiment_by_name(args.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`qsweep.kind` = 'sweep'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    jobs = client.search_runs([experiment.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    sweep_s = (parent.info.end_time - parent.info.start_time) / 1000
    jobs_s = sum((j.info.end_time - j.info.start_time) / 1000 for j in jobs)
    # timed work: median latency x timed generations (the sum, up to the spread between samples)
    timed_s = sum(j.data.metrics.get("latency_s", 0) * j.data.metrics.get("timed_samples", 0) for j in jobs)
    warmup_s = sum(j.data.metrics.get("latency_s", 0) * int(j.data.params.get("generation.warmup", 0))
                   for j in jobs)
    load_s = sum(j.data.metrics.get("load_time_s", 0) for j in jobs)
    measured = timed_s + load_s
    print(json.dumps({
        "sweep": parent.info.run_name, "jobs": len(jobs), "sweep_wall_s": round(sweep_s, 1),
        "job_runs_s": round(jobs_s, 1), "load_s": round(load_s, 1), "timed_generation_s": round(timed_s, 1),
        "warmup_generation_s": round(warmup_s, 1),
        "rest_s": round(sweep_s - measured, 1), "rest_share": round(1 - measured / sweep_s, 3),
        "rest_without_warmup_share": round(1 - (measured + warmup_s) / sweep_s, 3)}))


if __name__ == "__main__":
    main()
