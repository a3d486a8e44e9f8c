"""Ctrl-C and SIGTERM unwind as KeyboardInterrupt, so a run being measured ends as KILLED instead of staying
RUNNING, and both are remembered: an interrupt raised inside a finalizer (gc, a weakref callback) is lost,
and the waits and job starts check for it. A run they end says which one stopped it (stop_reason)."""

import os
import signal

received = []  # signals received: an interrupt raised inside a finalizer (gc, weakref callback) is lost


def _interrupt(signum, frame):
    received.append(signum)
    # The first signal unwinds; later ones are only remembered, so that they cannot break the close-out of the
    # runs it set off: `timeout` (and Slurm) signal the process and then its whole process group, so the
    # same SIGTERM arrives twice, and on a busy machine the second lands inside that close-out.
    if len(received) == 1:
        raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def raise_if_swallowed() -> None:
    """An interrupt that came during gc was swallowed: stop here instead."""
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")


def stop_reason() -> str:
    """What stopped this process, for the `error` tag of the run it ends as KILLED: the user (Ctrl-C), a time
    limit (SIGTERM under `timeout` or a Slurm job), or a SIGTERM from elsewhere."""
    if not received or received[0] == signal.SIGINT:
        return "interrupted by the user (Ctrl-C, SIGINT)"
    if received[0] != signal.SIGTERM:
        return f"stopped by signal {received[0]}"
    limit = _time_limit()
    return (f"stopped by the time limit: SIGTERM, {limit}" if limit else
            "stopped by SIGTERM (a `kill`, or a time limit qsweep cannot see)")


def _time_limit() -> str:
    """`timeout` (coreutils) among this process's ancestors, or the Slurm job it runs in; "" when neither."""
    import psutil

    try:
        for parent in psutil.Process().parents():
            if parent.name() == "timeout":
                return f"from `timeout {_duration(parent.cmdline()[1:])}` (pid {parent.pid})"
    except psutil.Error:
        pass
    job = os.environ.get("SLURM_JOB_ID")
    return f"from Slurm job {job} (its time limit, or scancel)" if job else ""


def _duration(args) -> str:
    """The limit in `timeout [-k 10] [-s TERM] 300 command ...`: its first argument that is not an option."""
    words = iter(args)
    for word in words:
        if word in ("-k", "-s", "--kill-after", "--signal"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return "?"
