"""Scale-out on existing engines: Hydra's joblib and submitit launchers, and an MLflow server backed by
PostgreSQL, as a team or a cluster would run them."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient

from conftest import Sweep, mlflow_server

TINY = ["model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=8", "generation.repeats=1"]


def check_sweep(client: MlflowClient, jobs: int) -> None:
    experiment = client.get_experiment_by_name("qsweep")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("qsweep.kind") == "job"]
    parents = [r for r in runs if r.data.tags.get("qsweep.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == jobs
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"tokens_per_s", "latency_s", "ttft_s", "peak_rss_gb"} <= set(run.data.metrics)
        assert "generations.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_four_parallel_joblib_jobs_against_a_fresh_sqlite_store_lose_nothing(tmp_path):
    # four processes are enough to race for the new store; each costs a full import of torch and MLflow
    sweep = Sweep(tmp_path, new_store=True)  # the four processes race to create it
    seeds = ",".join(str(i) for i in range(4))  # 4 jobs that differ only in their random weights
    result = sweep.run("-m", *TINY, f"model.seed={seeds}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
                       "runner.isolation=inline")  # joblib's processes isolate the jobs already
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_sweep(sweep.client(), jobs=4)


@pytest.fixture(scope="module")
def server_on_postgres(postgres, tmp_path_factory):
    """An MLflow server on that database, shared by the tests of the module (each in its own experiment)."""
    folder = tmp_path_factory.mktemp("server")
    with mlflow_server(folder, "--backend-store-uri", postgres.uri, "--artifacts-destination", str(folder / "artifacts"),
                       "--workers", "2") as server:
        yield server.uri


@pytest.mark.slow
def test_a_submitit_sweep_with_two_parallel_jobs_reaches_a_postgres_backed_server(tmp_path, server_on_postgres):
    sweep = Sweep(tmp_path)
    result = sweep.run("-m", *TINY, "precision=fp32,bf16", "hydra/launcher=local",
                       f"tracking.uri={server_on_postgres}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_sweep(MlflowClient(server_on_postgres), jobs=2)


@pytest.mark.slow
def test_parallel_jobs_logging_the_same_prompts_all_record_them(server_on_postgres):
    """Jobs that start together log the same prompts dataset at once: the server's unique key on
    (experiment, name, digest) lets one insert win; every run must still end up with the dataset."""
    from qsweep.config import TrackingConfig
    from qsweep.tracking.runs import RunWriter
    from qsweep.tracking import open_store

    store = open_store(TrackingConfig(uri=server_on_postgres, experiment="same-prompts"))  # not the sweep's
    writers = [RunWriter(store, store.client.create_run(store.experiment_id).info.run_id) for _ in range(8)]
    start = threading.Barrier(len(writers))

    def log(writer: RunWriter) -> None:
        start.wait()
        writer.log_dataset("prompts", {"prompt": ["a", "b"]}, "file:///prompts.json", "same-digest", "eval")

    with ThreadPoolExecutor(len(writers)) as pool:
        list(pool.map(log, writers))  # re-raises a writer's failure
    for writer in writers:
        inputs = store.client.get_run(writer.run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("prompts", "same-digest")]
