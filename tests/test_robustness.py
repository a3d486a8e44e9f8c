"""Sweeps survive a killed or hung job: it becomes a FAILED run, the others still run and finish."""

import time

import pytest

from conftest import Sweep, measuring_workers

# three jobs: two long ones (thousands of timed generations: minutes even on a fast machine) and a short one (4),
# which needs a few seconds, even on a busy machine, well inside the time limit
JOBS = ["-m", "model=tiny-gpt2", "device=cpu", "generation.warmup=0", "generation.max_new_tokens=64",
        "generation.repeats=1000,999,1", "runner.timeout_s=20"]


@pytest.fixture(scope="module")
def killed_then_timed_out(tmp_path_factory):
    """One sweep: the first job's worker is killed once it measures, the second runs past its time limit, the
    third is short. Its exit code, its output and its runs by number of repeats: (status, error)."""
    sweep = Sweep(tmp_path_factory.mktemp("robustness"))
    process = sweep.start(*JOBS)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:  # the first job's worker, once it measures
            victim = next(iter(measuring_workers(process.pid)), None)
        assert victim is not None, "no worker process appeared"
        victim.kill()
        out, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:  # never leave it running
            process.kill()
    runs = {r.data.params["generation.repeats"]: (r.info.status, r.data.tags.get("error", ""))
            for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"}
    return process.returncode, out, runs


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_recorded_and_the_sweep_goes_on(killed_then_timed_out):
    returncode, out, runs = killed_then_timed_out
    assert returncode != 0
    assert runs["1000"] == ("FAILED", "WorkerDied: worker killed by signal 9")
    assert runs["1"][0] == "FINISHED"
    assert "1 of 3 jobs finished, 2 failed" in out


@pytest.mark.slow
def test_a_job_over_its_time_limit_fails_and_the_next_runs(killed_then_timed_out):
    returncode, _, runs = killed_then_timed_out
    assert returncode != 0
    assert runs["999"] == ("FAILED", "WorkerDied: timed out after 20 s (runner.timeout_s)")
    assert runs["1"][0] == "FINISHED"
