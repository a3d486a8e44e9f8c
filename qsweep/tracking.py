"""Every MLflow call of qsweep lives here: the store, sweep parent runs, job runs, and reading runs back.

The client API is used throughout (no fluent `mlflow.start_run`), so no run is ever left active by an
exception: a job run ends FINISHED, FAILED (with a one-line `error` tag and the traceback) or KILLED.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from qsweep.config import TrackingConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE_DIR = PROJECT_ROOT / "mlruns"
PARENT_RUN_ENV = "QSWEEP_PARENT_RUN_ID"  # set by the sweep callback, read by every job of the sweep
MAX_PARAM_CHARS = 6000  # MLflow cuts longer param values
MAX_NOTE_CHARS = 8000  # a run description is a tag: MLflow keeps 8000 characters of a tag

# Tags that identify a run; names are part of qsweep's interface.
TAG_HASH, TAG_ERROR, TAG_KIND = "config_hash", "error", "qsweep.kind"
# host id:pid:start time of the process that ends the run: lets a later run close it if that process died
TAG_OWNER = "qsweep.owner"
TAG_SKIPPED_PREFIX = "qsweep.skipped."  # on a sweep run: qsweep.skipped.<config_hash> = the run it points to
TAG_WEIGHTS = "weights_sha256"  # local checkpoint folders: what the folder held when measured
# The MLflow UI opens an experiment of this kind on its runs table and charts, not the GenAI overview.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
RUN_TAGS = ("model", "precision", "device", "weights", "max_new_tokens", "setting")

for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


class StoreUnavailable(RuntimeError):
    pass


def _check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is unreachable."""
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
    except OSError as err:
        raise ConnectionError(f"no MLflow server answers at {uri} ({getattr(err, 'reason', err)})") from None


def store_uri(tracking: TrackingConfig) -> str:
    if tracking.uri:
        return tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{DEFAULT_STORE_DIR / 'mlflow.db'}"


@dataclasses.dataclass
class Store:
    client: "object"  # mlflow.MlflowClient
    experiment_id: str
    uri: str


def open_store(tracking: TrackingConfig, create: bool = True) -> Store:
    """Open (and on first use create, unless create=False) the store and the experiment."""
    from mlflow import MlflowClient

    uri = store_uri(tracking)
    artifact_location = None
    try:
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not create and not db.is_file():
                raise StoreUnavailable(f"no MLflow store at {db}: run a sweep first, or give its tracking URI")
            db.parent.mkdir(parents=True, exist_ok=True)
            artifact_location = (db.parent / "artifacts").as_uri()
        elif uri.startswith(("http://", "https://")):
            _check_server(uri)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is None and not create:
            raise StoreUnavailable(f"no experiment named {tracking.experiment!r} in the MLflow store {uri}")
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(tracking.experiment, artifact_location=artifact_location))
        if create and (experiment is None or EXPERIMENT_KIND[0] not in experiment.tags):
            client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    except StoreUnavailable:
        raise
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise StoreUnavailable(f"cannot open the MLflow store {uri}: {first_line}; "
                               "check tracking.uri (or MLFLOW_TRACKING_URI)") from None
    store = Store(client, experiment_id, uri)
    if create:
        close_orphans(store)
    return store


def host_id() -> str:
    """Where this process's pids mean something: the host name and, on Linux, the pid namespace (two
    containers with one host name share a store but not their pids)."""
    import socket

    try:
        return f"{socket.gethostname()}/pidns-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


def _owner() -> str:
    import psutil

    me = psutil.Process()
    return f"{host_id()}:{me.pid}:{me.create_time():.3f}"


def _owner_alive(owner: str) -> bool:
    import psutil

    _, pid, started = owner.rsplit(":", 2)
    try:  # the start time tells a reused pid from the original process
        return f"{psutil.Process(int(pid)).create_time():.3f}" == started
    except (psutil.NoSuchProcess, ValueError):
        return False


def close_orphans(store: Store, sweep_run_id: Optional[str] = None) -> List[str]:
    """End as KILLED the RUNNING runs whose process died without ending them (a SIGKILL, an OOM kill, a
    power cut; or, with sweep_run_id, the jobs of that interrupted sweep that ran in a parallel launcher's
    workers), so no run stays RUNNING forever. Only runs owned by processes of this host are judged: on a
    shared server, another machine's (or container's) runs may well be alive. Returns their names."""
    host = host_id()
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_OWNER}` LIKE '{host}:%'"
    if sweep_run_id:
        query += f" and tags.mlflow.parentRunId = '{sweep_run_id}'"
    closed = []
    for run in store.client.search_runs([store.experiment_id], query, max_results=1000):
        owner = run.data.tags[TAG_OWNER]
        if owner.rsplit(":", 2)[0] != host or _owner_alive(owner):  # LIKE treats "_" in a name as a wildcard
            continue
        pid = owner.rsplit(":", 2)[1]
        store.client.set_tag(run.info.run_id, TAG_ERROR, (
            f"interrupted: the sweep was stopped while this job ran in its worker (pid {pid})" if sweep_run_id else
            f"orphaned: its process (pid {pid} on {host}) ended without ending the run (killed by SIGKILL or out "
            "of memory?); closed by a later qsweep"))
        store.client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_name)
    if closed and not sweep_run_id:
        print(f"qsweep: {len(closed)} run(s) left RUNNING by a process that no longer exists, now KILLED: "
              + ", ".join(closed), flush=True)
    return closed


def _create_run(store: Store, run_name: str, tags: dict):
    """Every qsweep run starts here, tagged with the process that must end it."""
    return store.client.create_run(store.experiment_id, run_name=run_name,
                                   tags={TAG_OWNER: _owner(), **{k: str(v) for k, v in tags.items()}})


def open_existing(uri: str) -> Store:
    """Open a store that must already exist, to read runs back (reproduce); never creates one.
    It has no experiment of its own (experiment_id ""): searches cover every experiment."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise StoreUnavailable(f"no MLflow store at {uri}: the file does not exist; "
                               "give the store the run was recorded in with --tracking-uri (or MLFLOW_TRACKING_URI)")
    try:
        if uri.startswith(("http://", "https://")):
            _check_server(uri)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise StoreUnavailable(f"cannot open the MLflow store {uri}: {first_line}; "
                               "check --tracking-uri (or MLFLOW_TRACKING_URI)") from None
    return Store(client, "", uri)


def one_line(err: BaseException) -> str:
    """The `error` tag: the exception's type and message on one line. Running out of memory is a result,
    named out_of_memory: torch.OutOfMemoryError on CUDA, a RuntimeError from the CPU allocator."""
    text = " ".join(str(err).split()) or type(err).__name__
    out_of_memory = type(err).__name__ == "OutOfMemoryError" or "DefaultCPUAllocator: can't allocate memory" in text
    return f"{'out_of_memory' if out_of_memory else type(err).__name__}: {text}"[:500]


class JobRun:
    """What a job records into its MLflow run."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id

    def set_tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self.store.client.set_tag(self.run_id, key, str(value))

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.store.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, *results) -> None:
        """Log dataclasses of metrics: each field is a metric; None means not measured."""
        import time
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for r in results
                   for k, v in dataclasses.asdict(r).items() if v is not None]
        self.store.client.log_batch(self.run_id, metrics=metrics)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.store.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, data, artifact_file: str) -> None:
        self.store.client.log_dict(self.run_id, data, artifact_file)


@contextmanager
def job_run(store: Store, run_name: str, parent_run_id: Optional[str],
            extra_tags: Optional[dict] = None) -> Iterator[JobRun]:
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tags = {TAG_KIND: "job", **(extra_tags or {})}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = _create_run(store, run_name, tags)
    with _ended_by_outcome(JobRun(store, run.info.run_id)) as job:
        yield job


@contextmanager
def _ended_by_outcome(run: JobRun) -> Iterator[JobRun]:
    """Ends the run as its block ends: FINISHED, FAILED (one-line `error` tag + traceback) or KILLED."""
    client = run.store.client
    try:
        yield run
    except KeyboardInterrupt:
        client.set_terminated(run.run_id, "KILLED")
        raise
    except Exception as err:
        run.set_tags({TAG_ERROR: one_line(err)})
        # a worker's exception carries the traceback from its own process
        run.log_text(getattr(err, "remote_traceback", "") + traceback.format_exc(), "traceback.txt")
        client.set_terminated(run.run_id, "FAILED")
        raise
    else:
        client.set_terminated(run.run_id, "FINISHED")


def start_sweep(store: Store, run_name: str, tags: dict) -> str:
    return _create_run(store, run_name, {TAG_KIND: "sweep", **tags}).info.run_id


def end_sweep(store: Store, run_id: str, status: str) -> None:
    if store.client.get_run(run_id).info.status == "RUNNING":
        store.client.set_terminated(run_id, status)


def delete_run(store: Store, run_id: str) -> None:
    store.client.set_terminated(run_id, "KILLED")
    store.client.delete_run(run_id)


def sweep_jobs(store: Store, parent_run_id: str) -> List[dict]:
    """The job runs of a sweep, oldest first, as plain dicts for summaries and reports."""
    runs = store.client.search_runs([store.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                    order_by=["attributes.start_time ASC"], max_results=10000)
    return [_as_dict(run) for run in runs]


def get_job(store: Store, run_id: str) -> dict:
    return _as_dict(store.client.get_run(run_id))


def find_by_hash(store: Store, prefix: str, finished_only: bool = False) -> List[dict]:
    """Job runs whose config_hash starts with `prefix` (a whole hash matches itself), newest first:
    in the store's experiment, or in every active experiment when it has none. Prefix is hex only."""
    experiments = ([store.experiment_id] if store.experiment_id else
                   [e.experiment_id for e in store.client.search_experiments(max_results=50000)])
    query = f"tags.{TAG_HASH} LIKE '{prefix}%'" + (" AND attributes.status = 'FINISHED'" if finished_only else "")
    runs = store.client.search_runs(experiments, filter_string=query,
                                    order_by=["attributes.start_time DESC"], max_results=50000)
    return [{**_as_dict(run), "experiment_id": run.info.experiment_id, "start_time": run.info.start_time}
            for run in runs]


def experiment_name(store: Store, experiment_id: str) -> str:
    return store.client.get_experiment(experiment_id).name


def read_artifact(store: Store, run_id: str, path: str) -> Optional[str]:
    """The text of one artifact of a run, or None when the run has no such artifact."""
    import tempfile

    if path not in {a.path for a in store.client.list_artifacts(run_id)}:
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar on stderr
    with tempfile.TemporaryDirectory() as tmp:
        return Path(store.client.download_artifacts(run_id, path, tmp)).read_text()


def mark_skipped(store: Store, sweep_run_id: str, config_hash: str, run_id: str) -> None:
    """A job of the sweep skipped (sweep.skip_completed) for the FINISHED run it points to. Recorded on the
    sweep's run, not in memory: with the joblib or submitit launchers the job runs in another process."""
    store.client.set_tag(sweep_run_id, f"{TAG_SKIPPED_PREFIX}{config_hash}", run_id)


def skipped_jobs(store: Store, sweep_run_id: str) -> List[dict]:
    """The sweep's skipped jobs, as the runs they point to with status SKIPPED."""
    tags = store.client.get_run(sweep_run_id).data.tags
    return [{**get_job(store, run_id), "status": "SKIPPED"}
            for key, run_id in sorted(tags.items()) if key.startswith(TAG_SKIPPED_PREFIX)]


def note_skipped(store: Store, sweep_run_id: str, skipped: List[dict]) -> None:
    """On a sweep's parent run: how many jobs were skipped and the runs they point to."""
    store.client.set_tag(sweep_run_id, "skipped_jobs", str(len(skipped)))
    store.client.log_dict(sweep_run_id, [{"name": job["name"], TAG_HASH: job["tags"].get(TAG_HASH),
                                          "run_id": job["run_id"]} for job in skipped], "skipped_jobs.json")


def _as_dict(run) -> dict:
    return {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


# --- train_merge: a fine-tune is a run of its own (experiment `train_merge` by default) -------------

TRAIN_KIND = "train_merge"


class TrainRun(JobRun):
    """What a fine-tune records: a JobRun, plus metrics by name and metrics per training step."""

    def log_values(self, metrics: dict, step: int = 0) -> None:
        import time
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.store.client.log_batch(self.run_id, metrics=items)

    def log_step(self, step: int, **metrics: float) -> None:
        self.log_values(metrics, step)


@contextmanager
def train_run(store: Store, run_name: str, tags: dict) -> Iterator[TrainRun]:
    """Like job_run: ends FINISHED, FAILED (with `error` tag and traceback) or KILLED, never left active."""
    run = _create_run(store, run_name, {TAG_KIND: TRAIN_KIND, **tags})
    with _ended_by_outcome(TrainRun(store, run.info.run_id)) as train:
        yield train


# --- reading sweeps back, for reports --------------------------------------------------------------

def latest_sweep(store: Store) -> Optional[dict]:
    """The newest sweep parent run of the experiment, or None."""
    runs = store.client.search_runs([store.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return _as_dict(runs[0]) if runs else None


def find_jobs(store: Store, filter_string: str = "") -> List[dict]:
    """Job runs of the experiment matching an MLflow filter (e.g. "tags.model = 'gpt2'"), oldest first."""
    where = f"tags.`{TAG_KIND}` = 'job'" + (f" and {filter_string}" if filter_string else "")
    runs = store.client.search_runs([store.experiment_id], filter_string=where,
                                    order_by=["attributes.start_time ASC"], max_results=10000)
    return [_as_dict(run) for run in runs]


def read_json_artifact(store: Store, run_id: str, path: str):
    """A JSON artifact of a run, or None when the run has none."""
    import json
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small file is noise
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = store.client.download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())
    except Exception:
        return None


def log_report(store: Store, run_id: str, folder: Path, artifact_path: str = "report") -> None:
    """Attach a report folder to a (sweep parent) run."""
    store.client.log_artifacts(run_id, str(folder), artifact_path)


def set_description(store: Store, run_id: str, markdown: str) -> None:
    """The run's description, shown as Markdown on its page in the MLflow UI."""
    store.client.set_tag(run_id, "mlflow.note.content", markdown[:MAX_NOTE_CHARS])
