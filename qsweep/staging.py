"""Write files and folders so that no reader ever sees half of one: build beside the target, then rename.

Checkpoints, references and fine-tunes are shared by parallel jobs through the cache; a job killed while
writing must leave either the old thing or nothing, never a torn one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """write(staging file), then renamed over `path` in one step. Readable by all, like the cache around it
    (mkstemp makes a private file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(handle)
    try:
        write(Path(staging))
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def replace_folder(target: Path, build: Callable[[Path], None]) -> None:
    """build(staging folder), then put in place of `target`, replacing what was there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        build(staging)
        if target.exists():
            old = target.with_name(f".{target.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_once(target: Path, build: Callable[[Path], None], marker: str = "config.json") -> None:
    """build(staging folder), renamed to `target` when done, under a file lock: parallel jobs never see
    half a checkpoint, and it is made once. `marker` is the file that says it is complete."""
    if (target / marker).is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / marker).is_file():  # another job built it while we waited
            return
        replace_folder(target, build)
