"""Writing runs: job, sweep and fine-tune runs, each ended by the outcome of the block that owns it.

The client API is used throughout (no fluent `mlflow.start_run`), so no run is ever left active by an
exception: a run ends FINISHED, FAILED (with a one-line `error` tag and the traceback) or KILLED. Every
text a run records (params, tags, text and JSON artifacts) passes through credentials.redact.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from qsweep import signals
from qsweep.credentials import redact
from qsweep.tracking import owners
from qsweep.tracking.names import (KIND_JOB, KIND_SWEEP, KIND_TRAIN, SKIPPED_FILE, TAG_ERROR, TAG_HASH, TAG_KIND,
                                   TAG_NOTE, TAG_OWNER, TAG_SKIPPED_JOBS, TAG_SKIPPED_PREFIX, TRACEBACK_FILE)
from qsweep.tracking.store import Store, refusal

MAX_PARAM_CHARS = 6000  # MLflow cuts longer param values
MAX_NOTE_CHARS = 8000  # a run description is a tag: MLflow keeps 8000 characters of a tag


def one_line(err: BaseException) -> str:
    """The `error` tag: the exception's type and message on one line. Running out of memory is a result,
    named out_of_memory: torch.OutOfMemoryError on CUDA, a RuntimeError from the CPU allocator, a MemoryError
    (Python's, or a worker ended by the kernel's out-of-memory killer)."""
    text = " ".join(str(err).split()) or type(err).__name__
    out_of_memory = (type(err).__name__ == "OutOfMemoryError" or isinstance(err, MemoryError)
                     or "DefaultCPUAllocator: can't allocate memory" in text)
    return f"{'out_of_memory' if out_of_memory else type(err).__name__}: {text}"[:500]


class RunWriter:
    """What qsweep records into one open run."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id
        self.model_id: Optional[str] = None  # the logged model this run's metrics also describe (MLflow 3)

    def set_tags(self, tags: dict) -> None:
        self.log(tags=tags)

    def log(self, *groups, tags: Optional[dict] = None, step: int = 0) -> None:
        """Metrics and tags in one write. Each group is a dataclass (each field a metric) or a dict; None means
        not measured. With a model_id set, the metrics are also the logged model's (listed on its page)."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        values = [(k, v) for g in groups for k, v in (dataclasses.asdict(g) if dataclasses.is_dataclass(g)
                                                       else g).items()]
        self.store.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step, model_id=self.model_id)
                                                          for k, v in values if v is not None],
                                    tags=[RunTag(k, redact(str(v))) for k, v in (tags or {}).items()])

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.store.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, *groups, step: int = 0) -> None:
        self.log(*groups, step=step)

    def artifact_uri(self) -> str:
        return self.store.client.get_run(self.run_id).info.artifact_uri

    def log_text(self, text: str, artifact_file: str) -> None:
        self.store.client.log_text(self.run_id, redact(text), artifact_file)

    def log_json(self, data, artifact_file: str) -> None:
        import json

        self.store.client.log_dict(self.run_id, json.loads(redact(json.dumps(data))), artifact_file)

    def log_files(self, files: Dict[str, object]) -> None:
        """Several artifacts in one upload: a str is written as text, anything else as JSON."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            for name, content in files.items():
                Path(folder, name).write_text(redact(content if isinstance(content, str)
                                                     else json.dumps(content, indent=2)))
            self.store.client.log_artifacts(self.run_id, folder)

    def log_folder(self, folder: Path, artifact_path: str) -> None:
        self.store.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_table(self, columns: Dict[str, list], artifact_file: str) -> None:
        """An MLflow table (listed in the run's mlflow.loggedArtifacts tag): the UI's evaluation view shows
        the same table of several runs side by side."""
        self.store.client.log_table(self.run_id, columns, artifact_file)

    def log_dataset(self, name: str, columns: Dict[str, list], source: str, digest: str, context: str) -> None:
        """A dataset input of the run: its name, digest, source, schema and row count (not its rows), so runs
        on different inputs are told apart (the UI's Datasets column, search_runs' datasets.digest)."""
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.exceptions import MlflowException

        source = redact(source)
        with warnings.catch_warnings():  # MLflow registers its local source type twice, and says so
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            try:
                dataset = from_pandas(pd.DataFrame(columns), source=source, name=name, digest=digest)
            except MlflowException:  # a source MLflow cannot resolve (a tracking server's mlflow-artifacts:/...)
                dataset = from_pandas(pd.DataFrame(columns), source=CodeDatasetSource({"source": source}), name=name,
                                      digest=digest)
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        try:
            self.store.client.log_inputs(self.run_id, inputs)
        except MlflowException:
            # parallel jobs logging the same prompts race on the store's unique (experiment, name, digest) key;
            # the loser's second try finds the dataset the winner inserted (anything else fails again)
            time.sleep(0.5)
            self.store.client.log_inputs(self.run_id, inputs)

    def describe(self, markdown: str) -> None:
        """The run's description, shown as Markdown on its page in the MLflow UI."""
        self.set_tags({TAG_NOTE: markdown[:MAX_NOTE_CHARS]})


def _create(store: Store, kind: str, run_name: str, tags: dict, parent_run_id: Optional[str] = None) -> RunWriter:
    """Every qsweep run starts here, tagged with its kind and the process that must end it."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tags = {TAG_KIND: kind, TAG_OWNER: owners.this_process(), **tags}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    try:
        run = store.client.create_run(store.experiment_id, run_name=redact(run_name),
                                      tags={k: redact(str(v)) for k, v in tags.items()})
    except Exception as err:  # a user with READ permission only: one line, and no run was made
        raise refusal(err, store.uri, f"create runs in experiment {store.experiment_id}") or err
    return RunWriter(store, run.info.run_id)


@contextmanager
def _ended_by_outcome(run: RunWriter) -> Iterator[RunWriter]:
    """Ends the run as its block ends: FINISHED, FAILED (one-line `error` tag + traceback) or KILLED (an `error`
    tag saying what stopped it)."""
    client = run.store.client
    try:
        yield run
    except KeyboardInterrupt:
        run.set_tags({TAG_ERROR: signals.stop_reason()})
        client.set_terminated(run.run_id, "KILLED")
        raise
    except Exception as err:
        run.set_tags({TAG_ERROR: one_line(err)})
        # a worker's exception carries the traceback from its own process
        run.log_text(getattr(err, "remote_traceback", "") + traceback.format_exc(), TRACEBACK_FILE)
        client.set_terminated(run.run_id, "FAILED")
        raise
    else:
        client.set_terminated(run.run_id, "FINISHED")


@contextmanager
def job_run(store: Store, run_name: str, tags: dict, parent_run_id: Optional[str] = None) -> Iterator[RunWriter]:
    with _ended_by_outcome(_create(store, KIND_JOB, run_name, tags, parent_run_id)) as run:
        yield run


@contextmanager
def train_run(store: Store, run_name: str, tags: dict) -> Iterator[RunWriter]:
    with _ended_by_outcome(_create(store, KIND_TRAIN, run_name, tags)) as run:
        yield run


def start_sweep(store: Store, run_name: str, tags: dict) -> str:
    return _create(store, KIND_SWEEP, run_name, tags).run_id


def end_sweep(store: Store, run_id: str, status: str) -> None:
    if store.client.get_run(run_id).info.status == "RUNNING":
        store.client.set_terminated(run_id, status)


def delete_run(store: Store, run_id: str) -> None:
    store.client.set_terminated(run_id, "KILLED")
    store.client.delete_run(run_id)


# --- skipped jobs (sweep.skip_completed) are recorded on the sweep's run, whichever process ran them ---

def record_skip(store: Store, sweep_run_id: str, config_hash: str, run_id: str) -> None:
    """A job of the sweep stands for the FINISHED run `run_id`. Recorded on the sweep's run, not in memory:
    with the joblib or submitit launchers the job runs in another process."""
    store.client.set_tag(sweep_run_id, f"{TAG_SKIPPED_PREFIX}{config_hash}", run_id)


def skipped_run_ids(store: Store, sweep_run_id: str) -> List[str]:
    tags = store.client.get_run(sweep_run_id).data.tags
    return [run_id for key, run_id in sorted(tags.items()) if key.startswith(TAG_SKIPPED_PREFIX)]


def summarize_skips(store: Store, sweep_run_id: str, skipped: list) -> None:
    """On the sweep's run: how many jobs were skipped, and the runs (RunRecords) they point to."""
    run = RunWriter(store, sweep_run_id)
    run.set_tags({TAG_SKIPPED_JOBS: len(skipped)})
    run.log_json([{"name": job.name, TAG_HASH: job.config_hash, "run_id": job.run_id} for job in skipped],
                 SKIPPED_FILE)
