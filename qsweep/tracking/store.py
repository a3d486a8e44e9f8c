"""Opening an MLflow store: a SQLite file under the project's mlruns/ by default, or any tracking URI.

A server's credentials travel as MLflow's own variables (user info in an http(s) URI moves there), a
database's password in the URI MLflow connects with, or libpq's PGPASSWORD / ~/.pgpass; what is shown of
either goes through qsweep.credentials.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.request
from pathlib import Path
from typing import Optional

from qsweep import credentials
from qsweep.config import PROJECT_ROOT, TrackingConfig

DEFAULT_STORE_DIR = PROJECT_ROOT / "mlruns"
# The experiment's kind: "Machine learning" in the UI's experiment list. MLflow 3.17's UI ignores it for
# the landing page, which follows its GenAI / Model training switch: the workflowType URL parameter sets it.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_ADDRESS = "http://127.0.0.1:5000"  # where `make ui` serves the default store

for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


class StoreUnavailable(RuntimeError):
    """The store, experiment or run cannot be reached; the message says what to check."""


@dataclasses.dataclass
class Store:
    client: "object"  # mlflow.MlflowClient
    experiment_id: str  # "" for a store opened to read runs of every experiment
    uri: str  # what MLflow connects with: a server's without user info, a database's with its password


def store_uri(tracking: TrackingConfig) -> str:
    if tracking.uri:
        return tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{DEFAULT_STORE_DIR / 'mlflow.db'}"


def _check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is unreachable."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
    except OSError as err:
        raise ConnectionError(f"no MLflow server answers at {uri} ({getattr(err, 'reason', err)})") from None


def _check_sqlite(db: Path) -> None:
    """Fail at once, not after MLflow's minutes of retries, when the SQLite file cannot be opened or is not a
    database (an empty new file is one: MLflow creates its tables in it)."""
    import sqlite3

    connection = sqlite3.connect(db)
    try:
        connection.execute("pragma schema_version")  # opens and reads the file for real
    finally:
        connection.close()


def _check_database(uri: str) -> None:
    """Fail at once, not after MLflow's 100 s of retries, when a database server refuses the connection: a
    missing or wrong password (PGPASSWORD), an unknown host, a database that does not exist. Any other
    failure (a driver that is not installed) is left to MLflow to report."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    except Exception:
        return
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as err:
        raise ConnectionError(first_line(err.orig or err)) from None
    finally:
        engine.dispose()


def _server_uri(uri: str) -> str:
    """An http(s) URI's user info moved to MLflow's own variables, which its client sends with each request:
    the URI MLflow keeps, retries with and quotes in its errors then holds no password."""
    bare, user, password = credentials.server_user_info(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        if os.environ.get("MLFLOW_TRACKING_URI") == uri:  # read again by parts of MLflow that take no client
            os.environ["MLFLOW_TRACKING_URI"] = bare
    return bare


def refusal(err: Exception, uri: str, action: str) -> Optional[StoreUnavailable]:
    """A server's refusal of the credentials (401) or of the permission (403), as the line that says what to
    check; None for any other error."""
    code = getattr(err, "error_code", "")
    if code == "UNAUTHENTICATED":
        given = [name for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
                 if os.environ.get(name)]
        return StoreUnavailable(f"the MLflow server {uri} refused the credentials (401 unauthenticated): check "
                                f"{credentials.SERVER_VARIABLES}"
                                + (f" (set: {', '.join(given)})" if given else " (none is set)"))
    if code == "PERMISSION_DENIED":
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this user")
        return StoreUnavailable(f"the MLflow server {uri} does not let {user} {action} (403 permission denied): ask "
                                "its admin for EDIT permission on the experiment, or record in an experiment of "
                                "your own (tracking.experiment=...)")
    return None


def _client(uri: str, create: bool, hint: str):
    """A client for the store at `uri`, and the URI it connects with; a SQLite file must exist unless
    create."""
    from mlflow import MlflowClient
    from mlflow.store.db.db_types import DATABASE_ENGINES
    from mlflow.utils.uri import get_uri_scheme

    if uri.startswith(("http://", "https://")):
        uri = _server_uri(uri)
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not create and not db.is_file():
            raise StoreUnavailable(f"no MLflow store at {db}: run a sweep first, or {hint}")
        db.parent.mkdir(parents=True, exist_ok=True)
        _check_sqlite(db)
    elif get_uri_scheme(uri) in DATABASE_ENGINES:  # MLflow's own test for a SQLAlchemy store
        _check_database(uri)
    return MlflowClient(tracking_uri=uri), uri


def _artifact_location(uri: str):
    """SQLite stores keep their artifacts beside the database (mlruns/artifacts), not in the cwd."""
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri() if uri.startswith("sqlite:///") else None


def connect(tracking: TrackingConfig, create: bool = True) -> Store:
    """The store and experiment (created on first use unless create=False); owners.open_store is the one
    that records in it."""
    uri = store_uri(tracking)
    try:
        client, uri = _client(uri, create, "give its tracking URI (tracking.uri or MLFLOW_TRACKING_URI)")
        experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is None and not create:
            raise StoreUnavailable(f"no experiment named {tracking.experiment!r} in the MLflow store {uri}")
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(tracking.experiment, artifact_location=_artifact_location(uri)))
        if create and (experiment is None or EXPERIMENT_KIND[0] not in experiment.tags):
            client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    except StoreUnavailable:
        raise
    except Exception as err:
        raise (refusal(err, uri, f"use the experiment {tracking.experiment!r}")
               or StoreUnavailable(f"cannot open the MLflow store {uri}: {first_line(err)}; "
                                   "check tracking.uri (or MLFLOW_TRACKING_URI)")) from None
    return Store(client, experiment_id, uri)


def open_for_reading(uri: str) -> Store:
    """A store that must already exist, to read runs of every experiment from (reproduce); never creates
    one."""
    try:
        client, uri = _client(uri, False, "give the store the run was recorded in with --tracking-uri")
        client.search_experiments(max_results=1)
    except StoreUnavailable:
        raise
    except Exception as err:
        raise (refusal(err, uri, "read its experiments")
               or StoreUnavailable(f"cannot open the MLflow store {uri}: {first_line(err)}; "
                                   "check --tracking-uri (or MLFLOW_TRACKING_URI)")) from None
    return Store(client, "", uri)


def runs_url(store: Store, view: str = "") -> str:
    """The UI's page of the experiment's runs, in the Model training view: the tracking server's own
    address, or `make ui`'s for a local store. view: CHART, or ARTIFACT (tables side by side); the run
    table by default."""
    return (f"{_ui_address(store.uri)}/#/experiments/{store.experiment_id}/runs?workflowType=machine_learning"
            + (f"&compareRunsMode={view}" if view else ""))


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """Where to see one run: 'the run in the MLflow UI (make ui): <its page>'."""
    return (f"the run in the MLflow UI ({ui_command(uri)}): "
            f"{_ui_address(uri)}/#/experiments/{experiment_id}/runs/{run_id}")


def _ui_address(uri: str) -> str:
    """The tracking server's own address, or `make ui`'s for a store on disk."""
    return credentials.server_user_info(uri)[0].rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS


def ui_command(uri: str) -> str:
    """What serves the UI of the store at `uri` (runs_url, run_page): `make ui` for the project's store. A
    database's password is not part of the command: libpq reads it from PGPASSWORD or ~/.pgpass."""
    if uri.startswith(("http://", "https://")):
        return "the tracking server"
    if uri == f"sqlite:///{DEFAULT_STORE_DIR / 'mlflow.db'}":
        return "make ui"
    return (f"mlflow ui --backend-store-uri {credentials.without_password(uri)} --host 127.0.0.1 --port 5000"
            + (", with the database password in PGPASSWORD or ~/.pgpass" if credentials.has_password(uri) else ""))


def reachable(store: Store) -> bool:
    """Whether a tracking server still answers, in seconds (MLflow's own retries take minutes); a store on
    disk or in a database is taken to be there."""
    if not store.uri.startswith(("http://", "https://")):
        return True
    try:
        _check_server(store.uri)
    except ConnectionError:
        return False
    return True


def report_command(store: Store, sweep_run_id: str) -> str:
    """The command that reports this sweep, whatever its experiment; it names the store unless
    `qsweep report` opens that one by default."""
    default = store_uri(TrackingConfig())
    return (f"python -m qsweep report --sweep {sweep_run_id}"
            + ("" if store.uri == default else f" --tracking-uri {credentials.without_password(store.uri)}"))


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
