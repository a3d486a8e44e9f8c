"""The worker process: results and exceptions come back; kills and hangs become clear errors."""

import os
import signal
import time

import pytest

from qsweep import worker


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


def test_a_hung_worker_is_stopped_at_its_time_limit():
    start = time.monotonic()
    with pytest.raises(worker.WorkerDied, match=r"timed out after 3 s"):
        worker.call(hang, None, isolated=True, timeout_s=3)
    assert time.monotonic() - start < 30
