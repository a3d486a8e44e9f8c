"""The worker process: results and exceptions come back; kills and hangs become clear errors."""

import os
import signal
import time

import pytest
import torch

from qsweep import tracking, worker


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


def test_a_killed_worker_is_named_by_its_signal():
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
