"""Credentials: never recorded or printed, whichever way they are given; MLflow's own ways to authenticate
against a real `mlflow server --app-name basic-auth` (one for the module), and a PostgreSQL store with a
password."""

import logging
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from mlflow import MlflowClient

from conftest import Sweep, mlflow_server
from qsweep import credentials
from qsweep.config import TrackingConfig
from qsweep.tracking import store as stores

TINY = ["model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=4", "generation.repeats=1",
        "generation.warmup=0", "quality.windows=1"]
ADMIN_PW, ALICE_PW, BOB_PW = "Adm1n-known-4711", "Al1ce-known-secret-77", "B0b-known-0815"


def nowhere(secret: str, *texts: str, folders=()) -> None:
    """The secret in none of the texts, nor in any file under the folders."""
    for text in texts:
        assert secret not in text, text[max(0, text.find(secret) - 300):text.find(secret) + 100]
    for folder in folders:
        for path in Path(folder).rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The sweep failed with one `qsweep: error:` line and no traceback; that line."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("qsweep: error:")]
    return line


# --- redaction as functions --------------------------------------------------------------------------------

def test_redaction_hides_the_secret_and_keeps_where_the_runs_went():
    assert (credentials.redact("tracking.uri=postgresql+psycopg2://qs:Pa55word@db.lan:5438/mlf and more")
            == "tracking.uri=postgresql+psycopg2://qs:***@db.lan:5438/mlf and more")
    assert credentials.redact("http://alice:p@ss-word1@127.0.0.1:5137/x") == "http://alice:***@127.0.0.1:5137/x"
    assert (credentials.redact("- tracking.uri=http\\://alice\\:Hydra-esc@h\\:5000")  # as Hydra saves an override
            == "- tracking.uri=http\\://alice\\:***@h\\:5000")
    assert credentials.redact("s3://b/k?X-Amz-Signature=abcd1234&x=1") == "s3://b/k?X-Amz-Signature=***&x=1"
    assert credentials.redact("sqlite:////tmp/mlruns/mlflow.db http://h:5000/a@b") == (
        "sqlite:////tmp/mlruns/mlflow.db http://h:5000/a@b")  # nothing to hide: unchanged
    # a token standing alone as the user (git's and the hub's form); a user name stays
    assert credentials.redact("model.path=https://hf_Tok3nAlone@huggingface.co/org/m") == (
        "model.path=https://***@huggingface.co/org/m")
    assert credentials.redact("http://a1b2c3d4e5f6a7b8c9d0e1f2@h:5000") == "http://***@h:5000"
    assert credentials.redact("https://alice@mlflow.lan https://alice.smith.longname.here@h") == (
        "https://alice@mlflow.lan https://alice.smith.longname.here@h")
    assert credentials.without_password("https://hf_Tok3nAlone@h:5000") == "https://h:5000"
    assert credentials.without_password("https://alice@h:5000") == "https://alice@h:5000"
    # once met in a URI, the secret is hidden wherever it stands (an error may quote it alone)
    assert credentials.redact("authentication failed for password Pa55word") == (
        "authentication failed for password ***")


def test_printed_commands_name_the_store_without_its_password(tmp_path):
    uri = "postgresql+psycopg2://qs:Pa55w0rd-cmd@127.0.0.1:5438/mlf"
    command = stores.ui_command(uri)
    assert "Pa55w0rd-cmd" not in command and "postgresql+psycopg2://qs@127.0.0.1:5438/mlf" in command
    assert "PGPASSWORD" in command
    report = stores.report_command(stores.Store(None, "1", uri), "abc")
    assert report.endswith("--tracking-uri postgresql+psycopg2://qs@127.0.0.1:5438/mlf")


def test_log_records_are_redacted_whoever_logs_them(caplog):
    credentials.guard_logging()
    with caplog.at_level(logging.INFO):
        logging.getLogger("hydra.launcher").info("\t#%d : %s", 0, "tracking.uri=http://bob:L0gged-pw@h:1")
    assert caplog.messages == ["\t#0 : tracking.uri=http://bob:***@h:1"]


# --- a real basic-auth MLflow server -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` with users alice and bob (default permission READ), and an experiment
    `team` that alice made (bob may read it, not write to it)."""
    folder = tmp_path_factory.mktemp("auth-server")
    (folder / "auth.ini").write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder}/auth.db\nadmin_username = admin\n"
        f"admin_password = {ADMIN_PW}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    with mlflow_server(folder, "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                       "--artifacts-destination", str(folder / "artifacts"), "--workers", "1",
                       env={"MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"),
                            "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-only"}) as server:
        api = f"{server.uri}/api/2.0/mlflow"
        for user, password in (("alice", ALICE_PW), ("bob", BOB_PW)):
            requests.post(f"{api}/users/create", json={"username": user, "password": password},
                          auth=("admin", ADMIN_PW), timeout=30).raise_for_status()
        made = requests.post(f"{api}/experiments/create", json={"name": "team"}, auth=("alice", ALICE_PW), timeout=30)
        requests.post(f"{api}/experiments/set-experiment-tag", auth=("alice", ALICE_PW), timeout=30, json={
            "experiment_id": made.json()["experiment_id"], "key": stores.EXPERIMENT_KIND[0],
            "value": stores.EXPERIMENT_KIND[1]}).raise_for_status()
        yield server.uri, folder


def as_user(user: str, password: str) -> dict:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.mark.slow
@pytest.mark.parametrize("given", ["command line", "MLFLOW_TRACKING_URI"])
def test_user_info_in_the_server_uri_records_the_sweep_and_the_password_is_nowhere(tmp_path, auth_server, given):
    uri, server_folder = auth_server
    with_password = uri.replace("http://", f"http://alice:{ALICE_PW}@")
    sweep, experiment_name = Sweep(tmp_path), f"alice-own-{given.split()[0].lower()}"
    if given == "command line":
        result = sweep.run("-m", *TINY, f"tracking.uri={with_password}", f"tracking.experiment={experiment_name}")
    else:  # the tracking section left at its default (null): MLflow's own variable names the server
        result = sweep.run("-m", *TINY, f"tracking.experiment={experiment_name}",
                           env={"MLFLOW_TRACKING_URI": with_password})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(uri)
    os.environ.update(as_user("alice", ALICE_PW))
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        runs = client.search_runs([experiment.experiment_id])
        (job,) = [r for r in runs if r.data.tags.get("qsweep.kind") == "job"]
        assert job.info.status == "FINISHED", job.data.tags.get("error")
        if given == "command line":  # the redacted form still says where the runs went: scheme, user, host, port
            assert job.data.params["tracking.uri"] == uri.replace("http://", "http://alice:***@")
        recorded = [client.download_artifacts(job.info.run_id, "config.yaml", str(tmp_path))]
    finally:
        for name in as_user("", ""):
            os.environ.pop(name)
    if given == "command line":
        assert "tracking.uri=http\\://alice\\:***@127.0.0.1" in result.stdout  # Hydra's launcher line, redacted
    assert f"in {uri}, 1 jobs" in result.stdout  # the sweep names the server by its address, without user info
    nowhere(ALICE_PW, result.stdout, result.stderr, folders=[tmp_path, server_folder])  # + the Hydra folder
    assert Path(recorded[0]).is_file()


def test_mlflow_variables_authenticate_and_a_wrong_password_is_refused_in_one_line(auth_server, monkeypatch):
    from qsweep.tracking import open_store, start_sweep, end_sweep

    uri, _ = auth_server
    for name, value in as_user("alice", ALICE_PW).items():
        monkeypatch.setenv(name, value)
    store = open_store(TrackingConfig(uri=uri, experiment="team"))
    run_id = start_sweep(store, "by-variables", {})
    end_sweep(store, run_id, "FINISHED")
    assert store.client.get_run(run_id).info.status == "FINISHED"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "Wr0ng-password")
    with pytest.raises(stores.StoreUnavailable) as refused:
        open_store(TrackingConfig(uri=uri, experiment="team"))
    message = str(refused.value)
    assert uri in message and "MLFLOW_TRACKING_USERNAME" in message and "401" in message
    assert "\n" not in message and "Wr0ng-password" not in credentials.redact(message)


@pytest.mark.slow
def test_a_wrong_password_stops_the_sweep_before_any_model_loads(tmp_path, auth_server):
    uri, _ = auth_server
    result = Sweep(tmp_path).run("-m", *TINY, f"tracking.uri={uri}", env=as_user("alice", "Wr0ng-pw-sweep"))
    line = one_error_line(result)
    assert uri in line and "MLFLOW_TRACKING_PASSWORD" in line, line
    assert "job 1" not in result.stdout  # no job started, so no model loaded
    nowhere("Wr0ng-pw-sweep", result.stdout, result.stderr, folders=[tmp_path])


@pytest.mark.slow
def test_a_read_only_user_gets_one_line_and_leaves_no_run(tmp_path, auth_server):
    uri, _ = auth_server
    result = Sweep(tmp_path).run("-m", *TINY, f"tracking.uri={uri}", "tracking.experiment=team",
                                 env=as_user("bob", BOB_PW))
    line = one_error_line(result)
    assert "bob" in line and "permission" in line and "EDIT" in line, line
    assert "job 1" not in result.stdout
    api, alice = f"{uri}/api/2.0/mlflow", ("alice", ALICE_PW)
    team = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "team"}, auth=alice,
                        timeout=30).json()["experiment"]["experiment_id"]
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [team]}, auth=alice, timeout=30).json()
    assert all(run["info"]["run_name"] == "by-variables" for run in runs.get("runs", [])), runs  # alice's only


@pytest.mark.slow
def test_a_server_that_goes_away_mid_sweep_keeps_what_finished_and_says_what_did_not(tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    with mlflow_server(folder, "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination",
                       str(folder / "artifacts"), "--workers", "1") as server:
        sweep = Sweep(tmp_path)
        process = sweep.start("-m", *TINY, "precision=fp32,bf16", f"tracking.uri={server.uri}",
                              env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
        for line in process.stdout:  # the server goes away as the second job starts
            if line.startswith("qsweep: job 2/2"):
                server.stop()
                break
        _, stderr = process.communicate(timeout=600)
    assert process.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "went away during the sweep" in line]
    store = MlflowClient(f"sqlite:///{folder}/mlflow.db")  # read behind the dead server
    runs = store.search_runs([store.get_experiment_by_name("qsweep").experiment_id])
    finished = [r for r in runs if r.data.tags.get("qsweep.kind") == "job" and r.info.status == "FINISHED"]
    assert [r.data.tags["precision"] for r in finished] == ["fp32"]
    assert "Recorded: job 1 (" in line and "Not recorded: job 2 (" in line and "skip_completed" in line, line


# --- a PostgreSQL store with a password --------------------------------------------------------------------

def test_pgpassword_keeps_the_database_password_out_of_the_uri(postgres, monkeypatch):
    import mlflow.store.db.utils

    bare = credentials.without_password(postgres.uri)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")  # nor a ~/.pgpass of the machine's
    retried = mlflow.store.db.utils.create_sqlalchemy_engine_with_retry  # 10 tries over 100 s
    monkeypatch.setattr(mlflow.store.db.utils, "create_sqlalchemy_engine_with_retry",
                        lambda uri: pytest.fail("a refused password reached MLflow's retries"))
    with pytest.raises(stores.StoreUnavailable) as refused:
        stores.connect(TrackingConfig(uri=bare, experiment="pg-env"))
    assert "no password supplied" in str(refused.value) and "\n" not in str(refused.value)
    monkeypatch.setattr(mlflow.store.db.utils, "create_sqlalchemy_engine_with_retry", retried)
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    assert stores.connect(TrackingConfig(uri=bare, experiment="pg-env")).experiment_id


@pytest.mark.slow
def test_a_postgres_password_is_nowhere_in_the_store_the_output_or_the_hydra_folder(tmp_path, postgres):
    artifacts = tmp_path / "artifacts"
    MlflowClient(postgres.uri).create_experiment("pg-secret", artifact_location=artifacts.as_uri())
    result = Sweep(tmp_path).run("-m", *TINY, f"tracking.uri={postgres.uri}", "tracking.experiment=pg-secret")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(postgres.uri)
    runs = client.search_runs([client.get_experiment_by_name("pg-secret").experiment_id])
    (job,) = [r for r in runs if r.data.tags.get("qsweep.kind") == "job"]
    assert job.info.status == "FINISHED", job.data.tags.get("error")
    assert job.data.params["tracking.uri"] == postgres.uri.replace(postgres.password, "***")
    where = urlsplit(postgres.uri)
    dump = subprocess.run([str(postgres.bin_dir / "pg_dump"), "-h", where.hostname, "-p", str(where.port), "-U",
                           "postgres", "mlflow"], env={**os.environ, "PGPASSWORD": postgres.password},
                          capture_output=True, text=True, check=True).stdout
    assert job.info.run_id in dump  # the whole store: params, tags, metrics, run names
    assert any(artifacts.rglob("config.yaml")) and any(tmp_path.rglob(".hydra/overrides.yaml"))
    nowhere(postgres.password, result.stdout, result.stderr, dump, folders=[tmp_path])
