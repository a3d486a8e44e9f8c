"""Ctrl-C and SIGTERM unwind as KeyboardInterrupt, so a run being measured ends as KILLED instead of staying
RUNNING, and both are remembered: an interrupt raised inside a finalizer (gc, a weakref callback) is lost,
and the waits and job starts check for it."""

import signal

received = []  # signals received: an interrupt raised inside a finalizer (gc, weakref callback) is lost


def _interrupt(signum, frame):
    received.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def raise_if_swallowed() -> None:
    """An interrupt that came during gc was swallowed: stop here instead."""
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")
