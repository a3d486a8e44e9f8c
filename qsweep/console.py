"""The one channel through which qsweep tells the user what it does: `qsweep: ...` lines and tables on
stdout, flushed at once (a sweep's log interleaves several processes); errors and interruptions on stderr.
Every line is redacted: a password or token in a URI never reaches the terminal or a log."""

import sys

from qsweep.credentials import redact

GAP = "\n"


def say(message: str, prefix: str = "qsweep", gap: bool = False) -> None:
    """One `prefix: message` line; gap: after a blank line, where it follows a table."""
    print(redact(f"{GAP if gap else ''}{prefix}: {message}"), flush=True)


def show(block: str, gap: bool = True) -> None:
    """A table, summary or report as it is; gap: after a blank line that sets it apart from the log lines."""
    print(redact(f"{GAP if gap else ''}{block}"), flush=True)


def refuse(message: str, prefix: str = "qsweep") -> None:
    """A one-line error on stderr (bad input, an unreachable store)."""
    print(redact(f"{prefix}: error: {message}"), file=sys.stderr, flush=True)


def interrupted(outcome: str, prefix: str = "qsweep") -> None:
    """Ctrl-C or SIGTERM, on stderr: what became of the runs."""
    print(f"{prefix}: interrupted; {outcome}", file=sys.stderr, flush=True)
