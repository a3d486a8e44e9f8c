import dataclasses
import glob
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from qsweep.config import register_schemas, validate
from qsweep.environment import on_this_machine

ROOT = Path(__file__).resolve().parents[1]
register_schemas()
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from tiny_gemma import make_tiny_gemma  # noqa: E402,F401  (the stand-in the GPU kit runs, also the tests' model)


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory):
    """No network in tests, and a cache of their own: one for the whole run, shared by pytest-xdist's workers
    (`make test` runs two), so that the bundled Gemma is converted and each random-weight checkpoint made once
    (the cache builds each thing under a file lock). A caller's QSWEEP_CACHE is used instead when set."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    run_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's folder is <the run's folder>/popen-gwN
        run_root = run_root.parent
    os.environ.setdefault("QSWEEP_CACHE", str(run_root / "qsweep-cache"))
    _EMPTY_STORE["folder"] = tmp_path_factory.mktemp("empty_store")


_EMPTY_STORE = {}


def empty_store() -> Path:
    """An MLflow SQLite store as MLflow creates it, made once per session: creating one runs MLflow's schema
    migrations (about 2 s of CPU), which every test's new store would otherwise repeat in its first process."""
    db = _EMPTY_STORE["folder"] / "mlflow.db"
    if not db.exists():
        MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


# The modules that took longest under `make test` (--durations, two processes): they start first, so that neither
# process is left with a long one at the end while the other idles (make test passes --no-loadscope-reorder).
LONGEST_FIRST = ("test_architectures", "test_backends", "test_resume", "test_scale_out", "test_interrupt", "test_report",
                 "test_bad_input", "test_credentials")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: the others keep their order


def compose_cfg(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


RESTAURANT_PROMPTS = list(compose_cfg("generation=restaurant").generation.prompts)  # the fine-tune's dialogue


def compose_run(*overrides: str):
    """What run.py makes of these overrides: the validated config, with device=auto resolved here."""
    return on_this_machine(validate(compose_cfg(*overrides)))


def write_gguf(path: Path, architecture: str) -> Path:
    """A small Q8_0 GGUF file of `architecture`: one tensor and the header keys qsweep reads (no model)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    weights = np.random.default_rng(0).standard_normal((4, 64), dtype=np.float32)
    writer.add_tensor("token_embd.weight", gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def transformers_runtime(cache_dir: Path, *overrides: str):
    """A model as the transformers backend loads it: a Runtime, what measure.py times."""
    from qsweep import backends, sources

    cfg = compose_run(*overrides)
    checkpoint = sources.resolve(cfg.model, cache_dir)
    transformers = backends.get("transformers")
    return transformers.load(cfg, checkpoint, transformers.prepare(cfg, checkpoint))


class Sweep:
    """`python run.py ...` in a subprocess against a store in tmp_path: a copy of the empty store unless there
    is one already, or `new_store` (where the test is about qsweep creating the store itself)."""

    def __init__(self, tmp_path: Path, new_store: bool = False):
        self.tmp_path = tmp_path
        db = tmp_path / "mlflow.db"
        self.uri = f"sqlite:///{db}"
        if not new_store and not db.exists():
            shutil.copyfile(empty_store(), db)

    def _command(self, args):
        return [sys.executable, str(ROOT / "run.py"), *args,
                f"hydra.run.dir={self.tmp_path}/outputs", f"hydra.sweep.dir={self.tmp_path}/multirun"]

    def _env(self, extra=None):
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, **(extra or {})}

    def run(self, *args: str, timeout: int = 900, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(args), env=self._env(env), capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str, start_new_session: bool = False, env=None) -> subprocess.Popen:
        """The sweep as a running process, for tests that signal or kill parts of it."""
        return subprocess.Popen(self._command(args), env=self._env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=start_new_session)

    def create_store(self):
        """Create the database before a test polls it beside a running sweep (SQLite set-up is not
        safe against a second process doing the same at once)."""
        MlflowClient(self.uri).search_experiments()

    def runs(self):
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("qsweep")
        return client.search_runs([experiment.experiment_id], max_results=1000)

    def client(self):
        return MlflowClient(self.uri)

    def report(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m qsweep report ...` from tmp_path, with this store as MLFLOW_TRACKING_URI."""
        return subprocess.run([sys.executable, "-m", "qsweep", "report", *args], cwd=self.tmp_path, env=self._env(),
                              capture_output=True, text=True, timeout=600)


def printed_report_args(stdout: str) -> list:
    """The arguments of the `python -m qsweep report ...` command that a sweep printed at its end."""
    (hint,) = [line for line in stdout.splitlines() if line.startswith("qsweep: charts and report.md: ")]
    command = shlex.split(hint.split(": ", 2)[2])
    assert command[:4] == ["python", "-m", "qsweep", "report"], hint
    return command[4:]


@pytest.fixture
def sweep(tmp_path):
    return Sweep(tmp_path)


def measuring_workers(sweep_pid: int) -> list:
    """The sweep's worker processes that are busy measuring. A worker is a grandchild of the sweep (the
    fork server, a child busy importing torch at first, forks it); processes that vanish while looked at
    are skipped."""
    import psutil

    busy = []
    for process in psutil.Process(sweep_pid).children(recursive=True):
        try:
            if process.ppid() != sweep_pid and process.cpu_percent(interval=0.5) > 20:
                busy.append(process)
        except psutil.NoSuchProcess:
            pass
    return busy


def fine_tune(base: Path, out: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m train_merge` on the tiny Gemma `base` (small, fast settings; `overrides` on top), saving
    the merged checkpoint to `out` and recording into the store `uri`."""
    return subprocess.run(
        [sys.executable, "-m", "train_merge", "model.name=tiny-gemma", f"model.name_or_path={base}",
         "data.limit_train=16", "data.limit_heldout=8", "data.max_length=128", "train.max_steps=2", "train.lr=1e-2",
         "train.device=cpu", "train.num_threads=1", "eval.max_new_tokens=4", f"merge.output_dir={out}",
         f"tracking.uri={uri}", f"hydra.run.dir={out.parent}/outputs", *overrides],
        cwd=out.parent.parent, capture_output=True, text=True, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    if not found:
        pytest.skip("PostgreSQL is not installed (.ci/run installs the Debian package postgresql)")
    return Path(found).resolve().parent


@dataclasses.dataclass
class Postgres:
    uri: str  # postgresql+psycopg2://postgres:PASSWORD@127.0.0.1:port/mlflow
    password: str
    bin_dir: Path


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (one per test process) whose TCP connections need the password,
    run as the postgres user when we are root (PostgreSQL refuses to run as root), in a folder that user can reach."""
    bin_dir, port, password = _postgres_bin(), free_port(), "Pg-9f3Kq-known-secret"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="qsweep-pg-"))
    if as_user:
        os.chmod(data, 0o700)
        shutil.chown(data, "postgres")
    (data / "pw").write_text(password)
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", f"--pwfile={data / 'pw'}"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-c", "CREATE DATABASE mlflow"], check=True, capture_output=True,
                       env={**os.environ, "PGPASSWORD": password})
        yield Postgres(f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/mlflow", password, bin_dir)
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@dataclasses.dataclass
class Server:
    uri: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)


@contextmanager
def mlflow_server(folder: Path, *args: str, env=None):
    """`mlflow server <args>` on a free port of 127.0.0.1 until the block ends (its log in folder/server.log)."""
    port, log = free_port(), folder / "server.log"
    # No job execution: qsweep sends the server no jobs, and it would start six Huey consumer processes, each a
    # full MLflow import
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", *args, "--host", "127.0.0.1",
                                    "--port", str(port)], env=env, stdout=out, stderr=out, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 300  # a minute on an idle 2-core machine; much more under others' load
    while True:
        try:
            urllib.request.urlopen(server.uri + "/health", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("mlflow server did not start: " + log.read_text()[-2000:])
            time.sleep(1)
    try:
        yield server
    finally:
        server.stop()
