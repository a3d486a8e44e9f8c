"""Ctrl-C and SIGTERM: the current job run and the sweep end as KILLED, nothing stays RUNNING,
and the summary says what finished."""

import os
import signal
import subprocess
import time

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_leaves_nothing_running(sweep, how, request):
    sweep.create_store()
    process = sweep.start(*JOBS, start_new_session=True)
    request.addfinalizer(lambda: process.poll() is None and os.killpg(process.pid, signal.SIGKILL))

    def long_job_running():
        experiment = sweep.client().get_experiment_by_name("qsweep")
        return experiment is not None and any(
            r.data.params.get("generation.repeats") == "100" and r.info.status == "RUNNING" for r in sweep.runs())

    assert wait_for(long_job_running), process.communicate(timeout=60)
    time.sleep(3)  # the worker is measuring now
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
    assert "interrupted; finished runs are kept" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_hugging_face_token_never_reaches_the_store(sweep, tmp_path):
    secret = "hf_qsweepTestSecret0123456789"
    result = sweep.run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=2", "generation.repeats=1",
                       env={"HF_TOKEN": secret, "HUGGING_FACE_HUB_TOKEN": secret})
    assert result.returncode == 0, result.stderr[-2000:]
    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "environment.json" for p in stored) and any(p.name == "mlflow.db" for p in stored)
    assert not [p for p in stored if secret.encode() in p.read_bytes()]
