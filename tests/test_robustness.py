"""Sweeps survive a killed or hung job: it becomes a FAILED run, the others still run and finish."""

import time

import pytest

from conftest import measuring_workers

# two jobs: a long one (4000 timed generations: minutes even on a fast machine) and a short one (4)
TINY = ["model=tiny-gpt2", "device=cpu", "generation.warmup=0", "generation.max_new_tokens=64",
        "generation.repeats=1000,1"]


def by_repeats(sweep):
    return {r.data.params["generation.repeats"]: (r.info.status, r.data.tags.get("error", ""))
            for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"}


@pytest.mark.slow
def test_a_job_over_its_time_limit_fails_and_the_next_runs(sweep):
    result = sweep.run("-m", *TINY, "runner.timeout_s=20")  # the short job needs a few seconds, even on a busy machine
    assert result.returncode != 0
    runs = by_repeats(sweep)
    assert runs["1000"] == ("FAILED", "WorkerDied: timed out after 20 s (runner.timeout_s)")
    assert runs["1"][0] == "FINISHED"


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_recorded_and_the_sweep_goes_on(sweep, request):
    process = sweep.start("-m", *TINY)
    request.addfinalizer(lambda: process.poll() is None and process.kill())  # never leave it running
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:  # the first job's worker, once it measures
        victim = next(iter(measuring_workers(process.pid)), None)
    assert victim is not None, "no worker process appeared"
    victim.kill()
    out, _ = process.communicate(timeout=600)
    assert process.returncode != 0
    runs = by_repeats(sweep)
    assert runs["1000"] == ("FAILED", "WorkerDied: worker killed by signal 9")
    assert runs["1"][0] == "FINISHED"
    assert "1 of 2 jobs finished, 1 failed" in out
