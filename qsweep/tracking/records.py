"""Reading runs back, as typed records, for summaries, reports, resume and reproduce."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from qsweep.tracking.names import KIND_JOB, KIND_SWEEP, TAG_ERROR, TAG_HASH, TAG_KIND
from qsweep.tracking.runs import skipped_run_ids
from qsweep.tracking.store import Store, StoreUnavailable

MAX_RESULTS = 50000


@dataclasses.dataclass
class RunRecord:
    """One run as qsweep reads it back. status is MLflow's, or SKIPPED for a job that a resumed sweep
    skipped in favour of this (earlier) run."""
    run_id: str
    name: str
    status: str
    metrics: Dict[str, float]
    tags: Dict[str, str]
    params: Dict[str, str] = dataclasses.field(default_factory=dict)
    experiment_id: str = ""
    start_time: int = 0  # ms since the epoch
    end_time: Optional[int] = None

    @property
    def config_hash(self) -> Optional[str]:
        return self.tags.get(TAG_HASH)

    @property
    def error(self) -> Optional[str]:
        return self.tags.get(TAG_ERROR)


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.metrics),
                     dict(run.data.tags), dict(run.data.params), run.info.experiment_id, run.info.start_time,
                     run.info.end_time)


def _search(store: Store, query: str, newest_first: bool = False, experiments=None) -> List[RunRecord]:
    from mlflow.exceptions import MlflowException

    try:
        runs = store.client.search_runs(experiments or [store.experiment_id], filter_string=query,
                                        order_by=[f"attributes.start_time {'DESC' if newest_first else 'ASC'}"],
                                        max_results=MAX_RESULTS)
    except MlflowException as err:  # e.g. a malformed --filter
        raise StoreUnavailable(f"cannot search runs where {query}: {' '.join(str(err).split())[:300]}") from None
    return [_record(run) for run in runs]


def get_run(store: Store, run_id: str) -> RunRecord:
    from mlflow.exceptions import MlflowException

    try:
        return _record(store.client.get_run(run_id))
    except MlflowException as err:
        raise StoreUnavailable(f"no run {run_id} in {store.uri} ({' '.join(str(err).split())[:200]})") from None


def sweep_jobs(store: Store, sweep_run_id: str) -> List[RunRecord]:
    """The job runs a sweep measured, oldest first."""
    return _search(store, f"tags.mlflow.parentRunId = '{sweep_run_id}'")


def skipped_jobs(store: Store, sweep_run_id: str) -> List[RunRecord]:
    """The earlier runs that the sweep's skipped jobs stand for, with status SKIPPED."""
    return [dataclasses.replace(get_run(store, run_id), status="SKIPPED")
            for run_id in skipped_run_ids(store, sweep_run_id)]


def latest_sweep(store: Store) -> Optional[RunRecord]:
    runs = store.client.search_runs([store.experiment_id], filter_string=f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return _record(runs[0]) if runs else None


def find_jobs(store: Store, filter_string: str = "") -> List[RunRecord]:
    """Job runs of the experiment matching an MLflow filter (e.g. "tags.model = 'gpt2'"), oldest first."""
    return _search(store, f"tags.`{TAG_KIND}` = '{KIND_JOB}'" + (f" and {filter_string}" if filter_string else ""))


def _experiments(store: Store) -> List[str]:
    """The store's experiment, or every active experiment when it has none (a store opened for reading)."""
    return ([store.experiment_id] if store.experiment_id else
            [e.experiment_id for e in store.client.search_experiments(max_results=MAX_RESULTS)])


def find_by_hash(store: Store, prefix: str, finished_only: bool = False) -> List[RunRecord]:
    """Job runs whose config_hash starts with `prefix` (hex only; a whole hash matches itself), newest
    first: in the store's experiment, or in every active experiment when it has none."""
    query = f"tags.{TAG_HASH} LIKE '{prefix}%'" + (" AND attributes.status = 'FINISHED'" if finished_only else "")
    return _search(store, query, newest_first=True, experiments=_experiments(store))


def find_runs(store: Store, filter_string: str = "") -> List[RunRecord]:
    """Runs of every kind (jobs, sweeps, fine-tunes) matching an MLflow filter, oldest first."""
    return _search(store, filter_string, experiments=_experiments(store))


def experiment_name(store: Store, experiment_id: str) -> str:
    return store.client.get_experiment(experiment_id).name


def read_artifact(store: Store, run_id: str, path: str) -> Optional[str]:
    """The text of one artifact of a run, or None when the run has no such artifact."""
    folder = str(Path(path).parent) if "/" in path else None
    if path not in {a.path for a in store.client.list_artifacts(run_id, folder)}:
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar on stderr
    with tempfile.TemporaryDirectory() as tmp:
        return Path(store.client.download_artifacts(run_id, path, tmp)).read_text()


def read_json(store: Store, run_id: str, path: str):
    """A JSON artifact of a run, or None when the run has none."""
    text = read_artifact(store, run_id, path)
    return None if text is None else json.loads(text)
