"""Run one function in another process with a time limit, so a crash, a kill, a hang or leaked memory
stays out of the sweep. The parent waits on a pipe (waking twice a second to check for a lost Ctrl-C; it burns no core).

Workers are forked from a fork server that has imported torch and transformers once (and never touches
CUDA). A sweep measures its jobs in one warm worker (`call_timed(..., warm=True)`): its imports and CUDA
initialisation are paid once, not per job; it is replaced after any failure, time-out or death, so a job
that broke it cannot touch the next. Between jobs it frees what the job left (gc, the C heap, the CUDA
cache) and restores torch's thread count, so each job's peak memory is measured from its own start."""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from qsweep import signals

CHECK_EVERY_S = 0.5
# What a job needs, imported once by the fork server (qsweep/preload.py) or on a GPU by the warm worker: the
# modeling code the models import lazily (transformers.activations alone pulls in torch.distributed
# and dynamo: 1.5 s), and bitsandbytes (3 to 5 s per job on 2 cores; benchmarks/RESULTS.md, sweep cost).
MODULES = ("qsweep.job", "transformers.modeling_utils", "transformers.modeling_layers", "transformers.activations",
           "transformers.generation.utils", "bitsandbytes")


class WorkerDied(RuntimeError):
    """The worker process ended without an answer: killed, crashed, or over its time limit."""


class WorkerOutOfMemory(WorkerDied, MemoryError):
    """The kernel's out-of-memory killer ended the worker: a result (the `error` tag says out_of_memory)."""


@dataclass
class Spent:
    """Where one call's wall time went, in seconds."""
    start_s: float = 0.0  # starting the worker process and handing the work and the answer across
    init_s: float = 0.0  # a new warm worker's imports and CUDA initialisation (0 once it is warm)
    fn_s: float = 0.0  # the function itself


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


def _initialise() -> float:
    """A warm worker's one-time set-up: every module a job needs, and on a GPU the CUDA context."""
    start = time.perf_counter()
    for module in MODULES:
        importlib.import_module(module)
    import torch

    if torch.cuda.is_available():
        torch.empty(1, device="cuda")  # creates the context now, not inside the first job's load
    gc.freeze()  # what exists now lives as long as the worker: later collections skip it
    return time.perf_counter() - start


def _outcome(fn: Callable, arg: Any) -> tuple:
    try:
        return "ok", fn(arg)
    except BaseException as err:  # report everything, Ctrl-C included, to the parent
        err.remote_traceback = traceback.format_exc()
        try:
            pickle.dumps(err)
            return "error", err
        except Exception:  # an exception that cannot cross processes: keep its words
            plain = RuntimeError(f"{type(err).__name__}: {err}")
            plain.remote_traceback = err.remote_traceback
            return "error", plain


def _between_jobs(threads: int) -> None:
    """Free what the job left behind, so the next job's peak RSS and VRAM start from the worker's baseline."""
    import torch

    gc.collect()
    torch.set_num_threads(threads)  # a job's device.num_threads must not carry over
    if "torch._dynamo" in sys.modules:  # compiled graphs and their guards: the next job compiles its own
        torch._dynamo.reset()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:  # glibc keeps freed heap pages mapped; hand them back so they do not count as the next job's RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _serve(conn, caller_alive, warm: bool) -> None:
    """The worker: answer (fn, arg) requests one after another until the parent closes the pipe."""
    threading.Thread(target=_exit_when_the_caller_dies, args=(caller_alive,), daemon=True).start()
    init_s = _initialise() if warm else 0.0
    import torch

    threads = torch.get_num_threads()
    while True:
        try:
            fn, arg = conn.recv()
        except (EOFError, KeyboardInterrupt):  # closed by the parent, or Ctrl-C while idle: the parent decides
            return
        start = time.perf_counter()
        status, payload = _outcome(fn, arg)
        conn.send((status, payload, init_s, time.perf_counter() - start))
        init_s = 0.0
        if not warm:
            return
        _between_jobs(threads)


class _Worker:
    def __init__(self, warm: bool):
        context = _context()
        self.conn, child_conn = context.Pipe()
        caller_alive, self.caller_alive_keeper = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(child_conn, caller_alive, warm), daemon=True)
        self.process.start()
        child_conn.close()  # so the read below sees EOF the moment the worker dies
        caller_alive.close()

    def run(self, fn: Callable, arg: Any, timeout_s: float, started: float) -> Tuple[Any, Spent]:
        oom_kills = kernel_oom_kills()
        self.conn.send((fn, arg))
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(CHECK_EVERY_S):  # wakes twice a second: no core is burnt
            signals.raise_if_swallowed()  # a Ctrl-C lost in a finalizer still stops the sweep
            if time.monotonic() > deadline:
                raise WorkerDied(f"timed out after {timeout_s:g} s (runner.timeout_s)")
        try:
            status, payload, init_s, fn_s = self.conn.recv()
        except EOFError:
            self.process.join()
            code = self.process.exitcode
            if code == -9 and oom_kills is not None and (kernel_oom_kills() or 0) > oom_kills:
                raise WorkerOutOfMemory("worker killed by the kernel's out-of-memory killer (signal 9): a smaller "
                                        "batch, prompt or precision needs less memory") from None
            raise WorkerDied(f"worker killed by signal {-code}" if code is not None and code < 0
                             else f"worker exited with code {code} without a result") from None
        if status == "error":
            raise payload
        return payload, Spent(time.perf_counter() - started - init_s - fn_s, init_s, fn_s)

    def close(self, kill: bool) -> None:
        if self.conn.closed:
            return
        self.conn.close()  # a worker waiting for work sees EOF and exits
        if kill and self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.caller_alive_keeper.close()


_warm: Optional[_Worker] = None


def call_timed(fn: Callable, arg: Any, isolated: bool, timeout_s: float, warm: bool = False) -> Tuple[Any, Spent]:
    """fn(arg) and where the time went: in this process, in a fresh worker, or (warm) in this process's warm
    worker, started if there is none. Exceptions of fn are re-raised here; any failure ends the worker."""
    global _warm
    started = time.perf_counter()
    if not isolated:
        return fn(arg), Spent(fn_s=time.perf_counter() - started)
    if not warm:
        once = _Worker(warm=False)
        try:
            answer = once.run(fn, arg, timeout_s, started)
        except BaseException:
            once.close(kill=True)
            raise
        once.close(kill=False)  # it exits by itself once the answer is sent
        return answer
    if _warm is None or not _warm.process.is_alive():
        _warm = _Worker(warm=True)
        atexit.register(_warm.close, kill=False)  # a clean exit, before multiprocessing terminates its daemons
    try:
        return _warm.run(fn, arg, timeout_s, started)
    except BaseException:  # an error, a time-out, a death or Ctrl-C: the next job gets a new worker
        _warm.close(kill=True)
        _warm = None
        raise


def call(fn: Callable, arg: Any, isolated: bool, timeout_s: float) -> Any:
    """fn(arg), in a fresh process when isolated; its exceptions are re-raised here."""
    return call_timed(fn, arg, isolated, timeout_s)[0]


def start_fork_server() -> None:
    """Start the fork server now (it imports torch and transformers in parallel with this process's own
    imports), not when the first job needs a worker."""
    if _context().get_start_method() == "forkserver":
        forkserver.ensure_running()
        atexit.register(_stop_fork_server)


def _stop_fork_server() -> None:
    """At this process's exit. A fork server still importing (a sweep that stopped at a config error) would hold
    this process's stdout and stderr open for seconds after it exits, and whoever reads them (a pipe, a test,
    a scheduler's log) would wait for it; once this process is done, nothing needs it. (multiprocessing keeps
    its pid on a private attribute: there is no public way to stop it without waiting for its imports.)"""
    pid = forkserver._forkserver._forkserver_pid
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _context():
    if multiprocessing.get_start_method(allow_none=True) not in (None, *multiprocessing.get_all_start_methods()):
        # Inside a joblib (loky) worker the start method is "loky", which a new child cannot resolve.
        multiprocessing.set_start_method("spawn", force=True)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # Never plain fork: the sweep process may hold CUDA state. The fork server is a clean process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qsweep.preload"])  # takes effect when the fork server starts
    return context
