"""Scale-out on existing engines: Hydra's joblib and submitit launchers, and an MLflow server backed by
PostgreSQL, as a team or a cluster would run them."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import Sweep

TINY = ["model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=8", "generation.repeats=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def test_eight_parallel_joblib_jobs_against_a_fresh_sqlite_store_lose_nothing(tmp_path):
    sweep = Sweep(tmp_path, new_store=True)  # the eight processes race to create it
    seeds = ",".join(str(i) for i in range(8))  # 8 jobs that differ only in their random weights
    result = sweep.run("-m", *TINY, f"model.seed={seeds}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8",
                       "runner.isolation=inline")  # joblib's processes isolate the jobs already
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_sweep(sweep.client(), jobs=8)


def _postgres_bin() -> Path:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    if not found:
        pytest.skip("PostgreSQL is not installed (.ci/run installs the Debian package postgresql)")
    return Path(found).resolve().parent


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (one for the module), run as the postgres user when we are root
    (PostgreSQL refuses to run as root), in a folder that user can reach."""
    bin_dir, port = _postgres_bin(), free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="qsweep-pg-"))
    if as_user:
        os.chmod(data, 0o700)
        shutil.chown(data, "postgres")
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-c", "CREATE DATABASE mlflow"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """An MLflow server on that database, shared by the tests of the module (each in its own experiment)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", postgres,
         "--artifacts-destination", str(tmp_path_factory.mktemp("server") / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start: " + server.stderr.read().decode()[-2000:])
            time.sleep(1)
    try:
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_submitit_sweep_with_two_parallel_jobs_reaches_a_postgres_backed_server(tmp_path, mlflow_server):
    sweep = Sweep(tmp_path)
    result = sweep.run("-m", *TINY, "precision=fp32,bf16", "hydra/launcher=local",
                       f"tracking.uri={mlflow_server}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_sweep(MlflowClient(mlflow_server), jobs=2)


@pytest.mark.slow
def test_parallel_jobs_logging_the_same_prompts_all_record_them(mlflow_server):
    """Jobs that start together log the same prompts dataset at once: the server's unique key on
    (experiment, name, digest) lets one insert win; every run must still end up with the dataset."""
    from qsweep.config import TrackingConfig
    from qsweep.tracking.runs import RunWriter
    from qsweep.tracking import open_store

    store = open_store(TrackingConfig(uri=mlflow_server, experiment="same-prompts"))  # not the sweep's
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
