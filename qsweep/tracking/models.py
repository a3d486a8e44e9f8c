"""Registered models. A fine-tuned checkpoint as MLflow models: a logged model (MLflow 3) made by the fine-tune
run, holding its held-out losses, and a version of a registered model (one per checkpoint folder name; each
fine-tune is a new version) whose source is the folder: the weights are never copied into the store. A pick of
`qsweep recommend --register` likewise: a version whose source is the measured artifact's folder, with an alias.
Runs that measure the checkpoint name it in tags, list the logged model among their inputs and log their
metrics to it too, so the model's page lists them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

from qsweep.tracking.names import TAG_CHECKPOINT
from qsweep.tracking.runs import RunWriter
from qsweep.tracking.store import Store

MODEL_TYPE = "merged-checkpoint"


def register_checkpoint(run: RunWriter, folder: Path, params: dict, tags: Dict[str, str]) -> dict:
    """The logged model and a new registered model version for the checkpoint `folder`, made by `run`.
    Returns what the checkpoint's train_merge.json keeps: logged_model_id, registered_model, model_version."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client, name = run.store.client, folder.name
    experiment_id = client.get_run(run.run_id).info.experiment_id
    tags = {TAG_CHECKPOINT: str(folder), **tags}
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run.run_id,
                                       params={k: str(v) for k, v in params.items()},
                                       tags=tags, model_type=MODEL_TYPE)
    try:
        client.create_registered_model(name, description="Fine-tuned, merged checkpoints made by train_merge")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=folder.as_uri(), run_id=run.run_id,
                                          tags={"logged_model_id": model.model_id, **tags},
                                          description=f"logged model {model.model_id}")
    # what MLflow's own register_model records: the UI's model page lists its versions from this tag
    client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [{"name": name, "version": str(version.version)}])})
    run.model_id = model.model_id  # the run's metrics from now on describe the checkpoint
    return {"logged_model_id": model.model_id, "registered_model": name, "model_version": str(version.version)}


def model_ready(run: RunWriter) -> None:
    """The checkpoint's metrics are logged: its logged model is READY."""
    run.store.client.finalize_logged_model(run.model_id, "READY")


def link_model(run: RunWriter, model_id: str) -> bool:
    """List the logged model among the run's inputs, and log the run's metrics to it too (its page lists the
    run). False when the model is not in this run's store (the fine-tune recorded elsewhere): the run's tags
    still name it."""
    from mlflow.entities import LoggedModelInput
    from mlflow.exceptions import MlflowException

    try:
        run.store.client.get_logged_model(model_id)
    except MlflowException:
        return False
    run.store.client.log_inputs(run.run_id, models=[LoggedModelInput(model_id)])
    run.model_id = model_id
    return True


def register_artifact(store: Store, name: str, source: Path, run_id: str, tags: Dict[str, str], description: str,
                      alias: str) -> Tuple[str, bool]:
    """A version of the registered model `name` made by run `run_id`, whose source is the folder `source` as it
    lies (nothing is copied into the store), tagged; `alias` moved to it. Registering the same run and folder
    again reuses its version. Returns the version and whether it is new."""
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        client.create_registered_model(name, description="Settings picked by `qsweep recommend --register`: the "
                                       "artifact each measured; the alias points at the latest pick")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    same = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if v.source == source.as_uri()]
    version = same[0] if same else client.create_model_version(name, source=source.as_uri(), run_id=run_id,
                                                               tags=tags, description=description)
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version), not same
