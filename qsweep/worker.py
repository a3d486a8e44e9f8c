"""Run one function in a fresh process with a time limit, so a crash, a kill, a hang or leaked memory
stays inside one job. The parent waits on a pipe (waking twice a second to check for a lost Ctrl-C; it burns no core).

Workers are forked from a fork server that has imported torch and transformers once (and never
touches CUDA), so a job starts in a fraction of a second instead of paying seconds of imports."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import traceback
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from qsweep import signals

CHECK_EVERY_S = 0.5


class WorkerDied(RuntimeError):
    """The worker process ended without an answer: killed, crashed, or over its time limit."""


class WorkerOutOfMemory(WorkerDied, MemoryError):
    """The kernel's out-of-memory killer ended the worker: a result (the `error` tag says out_of_memory)."""


def kernel_oom_kills() -> Optional[int]:
    """How many processes the kernel's out-of-memory killer has ended since boot (None where /proc/vmstat
    does not say). It counts the whole host: a kill elsewhere during a job would be taken for the job's."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _exit_when_the_caller_dies(caller_alive) -> None:
    """A worker must not outlive the sweep that waits for it: the sweep killed outright (SIGKILL) cannot
    stop it, and no parent-death signal reaches it (its parent is the fork server). The caller holds the
    other end of this pipe; the read sees EOF the moment the caller is gone, however it ended."""
    caller_alive.poll(None)
    os._exit(1)


def _child(fn: Callable, arg: Any, conn, caller_alive) -> None:
    threading.Thread(target=_exit_when_the_caller_dies, args=(caller_alive,), daemon=True).start()
    try:
        result = ("ok", fn(arg))
    except BaseException as err:  # report everything, Ctrl-C included, to the parent
        err.remote_traceback = traceback.format_exc()
        try:
            pickle.dumps(err)
            result = ("error", err)
        except Exception:  # an exception that cannot cross processes: keep its words
            result = ("error", RuntimeError(f"{type(err).__name__}: {err}"))
            result[1].remote_traceback = err.remote_traceback
    conn.send(result)
    conn.close()


@lru_cache(maxsize=1)
def preload() -> Tuple[str, ...]:
    """What the fork server imports once, so that no job's worker pays it again: the job module, and
    the modeling code every model loads lazily and bitsandbytes (3 to 5 s per job on 2 cores;
    benchmarks/RESULTS.md, sweep cost), but only where there is no GPU: bitsandbytes queries the GPU
    when imported, and a fork server that has initialised CUDA forks workers that cannot use it."""
    import torch

    if torch.cuda.is_available():
        return ("qsweep.job",)
    return ("qsweep.job", "transformers.modeling_utils", "transformers.modeling_layers",
            "transformers.activations", "transformers.generation.utils", "bitsandbytes")


def _context():
    if multiprocessing.get_start_method(allow_none=True) not in (None, *multiprocessing.get_all_start_methods()):
        # Inside a joblib (loky) worker the start method is "loky", which a new child cannot resolve.
        multiprocessing.set_start_method("spawn", force=True)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # Never plain fork: the sweep process may hold CUDA state. The fork server is a clean process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload()))  # takes effect when the fork server starts (first call)
    return context


def call(fn: Callable, arg: Any, isolated: bool, timeout_s: float) -> Any:
    """fn(arg), in a fresh process when isolated; its exceptions are re-raised here."""
    if not isolated:
        return fn(arg)
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    caller_alive, caller_alive_keeper = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(fn, arg, sender, caller_alive), daemon=True)
    oom_kills = kernel_oom_kills()
    process.start()
    sender.close()  # so the read below sees EOF the moment the worker dies
    caller_alive.close()
    try:
        deadline = time.monotonic() + timeout_s
        while not receiver.poll(CHECK_EVERY_S):  # wakes twice a second: no core is burnt
            signals.raise_if_swallowed()  # a Ctrl-C lost in a finalizer still stops the sweep
            if time.monotonic() > deadline:
                raise WorkerDied(f"timed out after {timeout_s:g} s (runner.timeout_s)")
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join()
            code = process.exitcode
            if code == -9 and oom_kills is not None and (kernel_oom_kills() or 0) > oom_kills:
                raise WorkerOutOfMemory("worker killed by the kernel's out-of-memory killer (signal 9): a smaller "
                                        "batch, prompt or precision needs less memory") from None
            raise WorkerDied(f"worker killed by signal {-code}" if code is not None and code < 0
                             else f"worker exited with code {code} without a result") from None
        process.join(timeout=30)  # it exits by itself once the answer is sent
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        caller_alive_keeper.close()
    if status == "error":
        raise payload
    return payload
