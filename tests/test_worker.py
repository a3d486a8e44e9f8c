"""The worker process: results and exceptions come back; kills and hangs become clear errors."""

import os
import signal
import time

import pytest
import torch

from conftest import compose_cfg
from qsweep import tracking, worker
from qsweep.config import validate
from qsweep.job import reuses_worker


def pid_of_worker(_):
    return os.getpid()


def raise_value_error(message):
    raise ValueError(message)


def kill_myself(_):
    os.kill(os.getpid(), signal.SIGKILL)


def hang(_):
    time.sleep(60)


def test_an_isolated_call_runs_in_another_process():
    assert worker.call(pid_of_worker, None, isolated=True, timeout_s=120) != os.getpid()
    assert worker.call(pid_of_worker, None, isolated=False, timeout_s=120) == os.getpid()


def test_the_worker_exception_comes_back_with_its_type_and_traceback():
    with pytest.raises(ValueError, match="bad prompt") as err:
        worker.call(raise_value_error, "bad prompt", isolated=True, timeout_s=120)
    assert "raise_value_error" in err.value.remote_traceback


def test_a_killed_worker_is_named_by_its_signal(monkeypatch):
    monkeypatch.setattr(worker, "kernel_oom_kills", lambda: 7)  # the host's count: another process's kill
    with pytest.raises(worker.WorkerDied, match="worker killed by signal 9"):
        worker.call(kill_myself, None, isolated=True, timeout_s=120)


def test_a_worker_ended_by_the_kernels_oom_killer_is_out_of_memory(monkeypatch):
    assert isinstance(worker.kernel_oom_kills(), int)  # Linux says how many processes it killed for memory
    counts = iter([7, 8])  # the kernel's count before the worker started and after it died
    monkeypatch.setattr(worker, "kernel_oom_kills", lambda: next(counts))
    with pytest.raises(worker.WorkerOutOfMemory) as err:
        worker.call(kill_myself, None, isolated=True, timeout_s=120)
    assert tracking.one_line(err.value).startswith("out_of_memory: worker killed by the kernel's out-of-memory")


def test_a_killed_worker_is_not_called_out_of_memory_when_the_kernel_killed_nothing(monkeypatch):
    monkeypatch.setattr(worker, "kernel_oom_kills", lambda: 7)
    with pytest.raises(worker.WorkerDied) as err:
        worker.call(kill_myself, None, isolated=True, timeout_s=120)
    assert not isinstance(err.value, worker.WorkerOutOfMemory)
    assert tracking.one_line(err.value) == "WorkerDied: worker killed by signal 9"


def test_a_hung_worker_is_stopped_at_its_time_limit():
    start = time.monotonic()
    with pytest.raises(worker.WorkerDied, match=r"timed out after 3 s"):
        worker.call(hang, None, isolated=True, timeout_s=3)
    assert time.monotonic() - start < 30


def run_out_of_cuda_memory(_):
    # what the CUDA caching allocator raises; no GPU here to make it raise for real
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                 "of 79.19 GiB of which 1.25 GiB is free.")


def run_out_of_cpu_memory(_):
    return torch.empty(10**13, dtype=torch.uint8)  # 10 TB: the allocator refuses at once


@pytest.mark.parametrize("fn", [run_out_of_cuda_memory, run_out_of_cpu_memory])
def test_running_out_of_memory_in_the_worker_is_recorded_as_out_of_memory(fn):
    with pytest.raises(RuntimeError) as err:
        worker.call(fn, None, isolated=True, timeout_s=120)
    line = tracking.one_line(err.value)
    assert line.startswith("out_of_memory: ") and "allocate" in line and "\n" not in line
    assert tracking.one_line(ValueError("bad prompt")) == "ValueError: bad prompt"


# --- the warm worker: one process for a sweep's jobs, replaced after any failure ---

def warm(fn, arg=None, timeout_s=120):
    return worker.call_timed(fn, arg, isolated=True, timeout_s=timeout_s, warm=True)


def test_the_warm_worker_runs_job_after_job_in_one_process_initialised_once():
    first, spent = warm(pid_of_worker)
    second, again = warm(pid_of_worker)
    assert first == second != os.getpid()
    assert again.init_s == 0 and again.start_s < 5 and again.fn_s >= 0


@pytest.mark.parametrize("failure", [raise_value_error, kill_myself])
def test_a_failure_replaces_the_warm_worker_and_the_next_job_runs(failure):
    before, _ = warm(pid_of_worker)
    with pytest.raises((ValueError, worker.WorkerDied)):
        warm(failure, "bad prompt")
    after, _ = warm(pid_of_worker)
    assert after not in (before, os.getpid())


def test_a_warm_worker_over_its_time_limit_is_replaced():
    before, _ = warm(pid_of_worker)
    with pytest.raises(worker.WorkerDied, match=r"timed out after 2 s"):
        warm(hang, timeout_s=2)
    after, _ = warm(pid_of_worker)
    assert after != before


def peak_rss_of_a_job(megabytes):
    """A job that holds `megabytes` in a reference cycle (freed only by the garbage collector) and reports
    the peak RSS the memory tracker measured for it."""
    from qsweep.trackers.memory import MemoryTracker

    tracker = MemoryTracker("cpu")
    with tracker.track():
        leftover = [torch.ones(megabytes * 2**20, dtype=torch.uint8)]
        leftover.append(leftover)  # a cycle: still there when the job returns
    return tracker.result().peak_rss_gb


def test_a_small_job_after_a_big_one_in_the_warm_worker_reports_its_own_peak():
    warm(pid_of_worker)
    big, _ = warm(peak_rss_of_a_job, 600)
    small, _ = warm(peak_rss_of_a_job, 10)
    assert big - small > 0.4  # GB: the big job's 600 MB (0.56 GiB) are not the small job's


def threads_after(set_to):
    if set_to:
        torch.set_num_threads(set_to)
    return torch.get_num_threads()


def test_a_jobs_thread_count_does_not_carry_over_to_the_next():
    default, _ = warm(threads_after, None)
    warm(threads_after, default + 3)
    assert warm(threads_after, None)[0] == default


def test_cuda_jobs_reuse_the_warm_worker_and_cpu_jobs_get_a_fresh_one_unless_told():
    def reuses(*overrides):
        return reuses_worker(validate(compose_cfg(*overrides)))

    assert reuses("device=cuda") and not reuses("device=cpu")
    assert reuses("device=cpu", "runner.reuse_worker=always")
    assert not reuses("device=cuda", "runner.reuse_worker=never")
