"""SIGTERM unwinds like Ctrl-C, so a run being measured ends as KILLED instead of staying RUNNING."""

import signal

received = []  # signals received: an interrupt raised inside a finalizer (gc, weakref callback) is lost


def _interrupt(signum, frame):
    received.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def raise_if_swallowed() -> None:
    """Between jobs: an interrupt that came during gc was swallowed; stop here instead."""
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")
