"""Credentials in URIs, kept out of everything qsweep records, prints or leaves behind.

A tracking URI, an artifact location or a model or data URI may carry a password or token: user info
(`postgresql://qs:PASSWORD@host/db`, a token standing alone as the user, `https://hf_TOKEN@host`) or a query
parameter (`?password=`, a signed URL's `sig=`). Whatever
qsweep writes to a store (params, tags, artifacts), prints (console lines, errors, log records) or leaves in
Hydra's output folder passes through redact(), which keeps scheme, user, host, port and database, so a reader
still knows where the runs went (`postgresql://qs:***@host/db`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# Secrets MLflow's client and libpq read from the environment: never printed, even without their URI.
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")
SERVER_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
# scheme://user:SECRET@ (the secret may hold an unescaped @: the last one before the host ends it), also as
# Hydra saves an override, its colons escaped (http\://user\:SECRET@host)
_USER_INFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*\\?://[^\s:/@'\"\\]*)(?P<colon>\\?:)"
                        r"(?P<secret>[^\s/'\"]+)@")
# scheme://TOKEN@: user info without a password that reads as a token, not a name: a known token prefix
# (Hugging Face, GitHub, GitLab, OpenAI, Databricks) or 20+ token characters with a digit
_TOKEN = (r"(?:(?:hf_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|sk-|dapi)[A-Za-z0-9_-]+"
          r"|(?=[A-Za-z0-9_.~-]*\d)[A-Za-z0-9_.~-]{20,})")
_TOKEN_USER = re.compile(rf"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)(?P<secret>{_TOKEN})@")
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|secret|sig|signature|"
                    r"x-amz-signature|x-amz-security-token|x-goog-signature)=)(?P<secret>[^&;\s'\"]+)", re.I)
_MIN_LITERAL = 4  # a shorter secret is not hunted as plain text: it would mask ordinary words
_seen: set = set()  # secrets met in URIs: an error message may quote one without its URI


def _hide(match: re.Match) -> str:
    _seen.update({match["secret"], unquote(match["secret"])})
    head = match["head"]
    return head + MASK if head.endswith("=") else f"{head}{match.groupdict().get('colon') or ''}{MASK}@"


def redact(text: str) -> str:
    """`text` with every password or token in a URI replaced by ***, and every secret already met (in a URI
    or one of SECRET_VARIABLES) too, wherever it stands."""
    if not text:
        return text
    text = _QUERY.sub(_hide, _TOKEN_USER.sub(_hide, _USER_INFO.sub(_hide, text)))
    secrets = _seen | {os.environ.get(name) or "" for name in SECRET_VARIABLES}
    for secret in sorted((s for s in secrets if len(s) >= _MIN_LITERAL), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def without_password(uri: str) -> str:
    """The URI for a command a user pastes: user info without its password, which the command then reads
    from the environment (PGPASSWORD or ~/.pgpass for PostgreSQL, the MLFLOW_TRACKING_* variables for a
    server)."""
    parts = urlsplit(uri)
    if parts.password is None and not _TOKEN_USER.match(uri):
        return _QUERY.sub(lambda m: m["head"] + MASK, uri)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host if parts.password is None else f"{parts.username}@{host}"))


def has_password(uri: str) -> bool:
    return urlsplit(uri).password is not None


def server_user_info(uri: str) -> tuple:
    """An http(s) URI's user info, split off: (the URI without it, user, password); user and password None
    where it has none."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return bare, unquote(parts.username or ""), None if parts.password is None else unquote(parts.password)


def redact_files(paths: Iterable[Path]) -> None:
    """Rewrite files in place (Hydra's .hydra/*.yaml, multirun.yaml), redacted; missing ones are skipped."""
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        clean = redact(text)
        if clean != text:
            path.write_text(clean)


def guard_logging() -> None:
    """Every log record of this process is redacted as it is made: Hydra's launcher logs each job's overrides,
    MLflow and SQLAlchemy may log a URI, and a record reaches the console and Hydra's job log file alike. A
    record factory survives Hydra's reconfiguring of handlers; installed once."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacting(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format: logging reports it when it is emitted
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:  # the formatter uses exc_text as it is
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    redacting.redacts = True
    logging.setLogRecordFactory(redacting)
