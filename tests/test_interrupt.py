"""Ctrl-C and SIGTERM: the current job run and the sweep end as KILLED, nothing stays RUNNING,
and the summary says what finished. A process killed outright cannot end its runs: the next qsweep
process on the same host closes them."""

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import measuring_workers
from qsweep import tracking
from qsweep.config import TrackingConfig

# three jobs: a short one, then a long one (100 repeats) that is interrupted, then one never started
JOBS = ["-m", "model=tiny-gpt2", "device=cpu", "generation.warmup=0", "generation.max_new_tokens=64",
        "generation.repeats=1,100,2"]


def wait_for(predicate, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def start_until_the_long_job_runs(sweep, request) -> subprocess.Popen:
    sweep.create_store()
    process = sweep.start(*JOBS, start_new_session=True)
    request.addfinalizer(lambda: process.poll() is None and os.killpg(process.pid, signal.SIGKILL))

    def long_job_running():
        experiment = sweep.client().get_experiment_by_name("qsweep")
        return experiment is not None and any(
            r.data.params.get("generation.repeats") == "100" and r.info.status == "RUNNING" for r in sweep.runs())

    assert wait_for(long_job_running), process.communicate(timeout=60)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_leaves_nothing_running(sweep, how, request):
    process = start_until_the_long_job_runs(sweep, request)
    assert wait_for(lambda: measuring_workers(process.pid)), "no worker started measuring"
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    else:
        process.send_signal(signal.SIGTERM)  # e.g. a scheduler stopping the job
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    runs = sweep.runs()
    status = {r.data.params.get("generation.repeats", "sweep"): r.info.status for r in runs}
    assert status == {"1": "FINISHED", "100": "KILLED", "sweep": "KILLED"}  # the third never started
    assert "sweep interrupted" in out and "1 of 2 jobs finished" in out
    assert "1 of 3 jobs never started. To finish the sweep, run the same command with sweep.skip_completed=true" \
        in out
    assert "interrupted; finished runs are kept" in err and "Traceback" not in err


@pytest.mark.slow
def test_runs_of_a_sweep_killed_outright_are_closed_by_the_next_run(sweep, request):
    process = start_until_the_long_job_runs(sweep, request)
    os.killpg(process.pid, signal.SIGKILL)  # no handler runs in a killed process: its runs stay RUNNING
    process.communicate(timeout=60)
    left = [r for r in sweep.runs() if r.info.status == "RUNNING"]
    assert sorted(r.data.params.get("generation.repeats", "sweep") for r in left) == ["100", "sweep"]

    result = sweep.run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=2", "generation.repeats=1")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {r.info.run_id: r for r in sweep.runs()}
    for run in left:
        closed = runs[run.info.run_id]
        assert closed.info.status == "KILLED"
        assert closed.data.tags["error"].startswith(f"orphaned: its process (pid {process.pid} on ")
    assert "qsweep: 2 run(s) left RUNNING by a process that no longer exists, now KILLED" in result.stdout
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_no_worker_outlives_a_sweep_killed_outright(sweep, request):
    # one job of 1000 repeats: minutes of work that must stop with the sweep
    process = sweep.start("model=tiny-gpt2", "device=cpu", "generation.warmup=0", "generation.max_new_tokens=64",
                          "generation.repeats=1000", start_new_session=True)
    request.addfinalizer(lambda: process.poll() is None and os.killpg(process.pid, signal.SIGKILL))
    sweeper = psutil.Process(process.pid)

    assert wait_for(lambda: measuring_workers(process.pid)), "no worker started measuring"
    helpers = sweeper.children(recursive=True)  # the fork server and the worker
    process.kill()  # the sweep alone, not its process group: nothing of it runs to stop its helpers
    process.wait(timeout=60)  # (not communicate: a live worker holds the sweep's stdout open)
    _, alive = psutil.wait_procs(helpers, timeout=15)
    assert not alive, [p.cmdline()[-1][:80] for p in alive]


def test_only_runs_of_dead_processes_on_this_host_are_closed(tmp_path):
    store = tracking.open_store(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    mine = tracking.start_sweep(store, "alive", {})  # owned by this very process
    host = tracking.host_id()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owners = {"dead": f"{host}:{dead.stdout.strip()}:1.000",
              "reused-pid": f"{host}:{os.getpid()}:1.000",  # this pid, but not this process's start time
              "elsewhere": f"another-host:{dead.stdout.strip()}:1.000",  # a cluster node's run: not ours to judge
              # a container with this host name but pids of its own
              "other-container": f"{socket.gethostname()}/pidns-1:{dead.stdout.strip()}:1.000"}
    ids = {name: store.client.create_run(store.experiment_id, run_name=name,
                                         tags={tracking.TAG_OWNER: owner}).info.run_id
           for name, owner in owners.items()}
    assert sorted(tracking.close_orphans(store)) == ["dead", "reused-pid"]
    status = {name: store.client.get_run(run_id).info.status for name, run_id in {**ids, "alive": mine}.items()}
    assert status == {"dead": "KILLED", "reused-pid": "KILLED", "elsewhere": "RUNNING", "other-container": "RUNNING",
                      "alive": "RUNNING"}


@pytest.mark.slow
def test_a_hugging_face_token_never_reaches_the_store(sweep, tmp_path):
    secret = "hf_qsweepTestSecret0123456789"
    result = sweep.run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=2", "generation.repeats=1",
                       env={"HF_TOKEN": secret, "HUGGING_FACE_HUB_TOKEN": secret})
    assert result.returncode == 0, result.stderr[-2000:]
    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "environment.json" for p in stored) and any(p.name == "mlflow.db" for p in stored)
    assert not [p for p in stored if secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_sigterm_to_a_parallel_sweep_leaves_nothing_running(sweep, request):
    """With joblib the jobs run in the launcher's worker processes, which end with the sweep."""
    sweep.create_store()
    process = sweep.start("-m", "model=tiny-gpt2", "device=cpu", "generation.warmup=0", "generation.max_new_tokens=64",
                          "generation.repeats=1000,1001", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          start_new_session=True)
    request.addfinalizer(lambda: process.poll() is None and os.killpg(process.pid, signal.SIGKILL))

    def both_jobs_running():
        return sweep.client().get_experiment_by_name("qsweep") is not None and sum(
            r.info.status == "RUNNING" and "generation.repeats" in r.data.params for r in sweep.runs()) == 2

    assert wait_for(both_jobs_running), process.communicate(timeout=60)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    status = {r.data.params.get("generation.repeats", "sweep"): r.info.status for r in sweep.runs()}
    assert status == {"1000": "KILLED", "1001": "KILLED", "sweep": "KILLED"}, status
    assert all(r.data.tags["error"].startswith("interrupted: the sweep was stopped")
               for r in sweep.runs() if "generation.repeats" in r.data.params)


@pytest.mark.slow
def test_a_command_that_stops_at_a_config_error_leaves_no_helper_behind(sweep):
    """The fork server starts importing torch before the config is read; a command refused at its config
    must not leave it running (it holds the command's stdout and stderr: whoever reads them would wait)."""
    marker = f"qsweep-test-{os.getpid()}-{time.monotonic_ns()}"
    process = sweep.start("model=gpt3", env={"QSWEEP_TEST_MARKER": marker})
    assert process.wait(timeout=120) == 1  # not communicate(): that would wait for whoever holds its output
    process.stdout.close()
    process.stderr.close()

    def marked():
        found = []
        for candidate in psutil.process_iter():
            try:
                if candidate.environ().get("QSWEEP_TEST_MARKER") == marker:
                    found.append(candidate)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found

    _, alive = psutil.wait_procs(marked(), timeout=5)
    assert not alive, [p.cmdline()[-1][:80] for p in alive]


def test_a_second_sigterm_inside_the_close_out_still_ends_the_run_killed(tmp_path, monkeypatch):
    """`timeout` signals its child and then the child's process group: the same SIGTERM twice. The second must
    not break the close-out the first set off (on a busy machine it lands there), or the run stays RUNNING."""
    from qsweep import signals

    monkeypatch.setattr(signals, "received", [])
    reason = signals.stop_reason
    monkeypatch.setattr(signals, "stop_reason", lambda: signals._interrupt(signal.SIGTERM, None) or reason())
    store = tracking.open_store(TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db"))
    with pytest.raises(KeyboardInterrupt):
        with tracking.job_run(store, "cut", {}):
            signals._interrupt(signal.SIGTERM, None)  # the first: unwinds the job
    (run,) = store.client.search_runs([store.experiment_id])
    assert run.info.status == "KILLED" and signals.received == [signal.SIGTERM, signal.SIGTERM]
    assert run.data.tags["error"] == reason()  # the first SIGTERM's reason (CI runs the tests under `timeout`)
    assert "SIGTERM" in run.data.tags["error"]
