"""The one channel through which qsweep's library code tells the user what it does: `qsweep: ...` lines
on stdout, flushed at once (a sweep's log interleaves several processes)."""

import sys


def say(message: str, prefix: str = "qsweep") -> None:
    print(f"{prefix}: {message}", flush=True)


def refuse(message: str, prefix: str = "qsweep") -> None:
    """A one-line error on stderr (bad input, an unreachable store)."""
    print(f"{prefix}: error: {message}", file=sys.stderr, flush=True)
