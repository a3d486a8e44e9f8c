"""The measured artifact: the file or folder a runtime loaded (llama.cpp's GGUF, CTranslate2's converted
folder, the checkpoint folder transformers loads), named in the job's run, so that what recommend, register
and export hand over is exactly what was measured, or they say that it is gone or changed.

A job records the artifact's path, its stamp (bytes and newest modification time: cheap, where a checksum
of gigabytes would cost every job seconds) and the tokenizer folder it ran with. The checksum is taken
when the artifact is handed over.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from qsweep.tracking import TAG_ARTIFACT, TAG_ARTIFACT_STAMP, TAG_ARTIFACT_TOKENIZER, RunRecord

TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "chat_template*")


class ArtifactUnavailable(RuntimeError):
    """The run's artifact cannot be handed over; the message says why and what to do."""


def tags(files, checkpoint) -> dict:
    """What a job records of the artifact it measured (files: backends.Files; checkpoint: sources.Checkpoint)."""
    path = Path(files.artifact or files.path).resolve()
    return {TAG_ARTIFACT: str(path), TAG_ARTIFACT_STAMP: stamp(path),
            TAG_ARTIFACT_TOKENIZER: str(Path(checkpoint.tokenizer_path).resolve()) if checkpoint.tokenizer_path else ""}


def files(path: Path) -> List[Path]:
    """The file itself, or a folder's files (in subfolders too) in name order."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def stamp(path: Path) -> str:
    found = files(path)
    return (f"{sum(p.stat().st_size for p in found)} bytes, "
            f"modified {max((p.stat().st_mtime_ns for p in found), default=0)}")


def sha256(path: Path) -> str:
    """Of a file's bytes; of a folder: of each file's relative name and bytes, in name order."""
    return digest_of(files(path), (lambda file: str(file.relative_to(path))) if path.is_dir() else None)


def digest_of(paths: List[Path], name: Optional[Callable[[Path], str]] = None) -> str:
    """SHA-256 (hex) of the files' bytes in order, each preceded by name(file) where `name` is given."""
    digest = hashlib.sha256()
    for file in paths:
        if name is not None:
            digest.update(name(file).encode())
        with open(file, "rb") as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path  # the GGUF file, or a folder
    tokenizer: Optional[Path]  # the folder of the tokenizer it was run with; None: it has none (random weights)
    run: RunRecord


def measured(run: RunRecord) -> Artifact:
    """The artifact run measured, as it is on this machine now: refused (ArtifactUnavailable, one line) when the
    run recorded none, or when it is gone or holds something else now."""
    recorded = run.tags.get(TAG_ARTIFACT)
    again = f"measure it again (`python -m qsweep reproduce {run.config_hash}`) and hand that run over"
    if not recorded:
        raise ArtifactUnavailable(f"run {run.run_id} ({run.name}) does not name the files it measured (recorded by "
                                  f"an older qsweep): {again}")
    path = Path(recorded)
    if not path.exists():
        raise ArtifactUnavailable(f"{path}, which run {run.run_id} measured, is gone (another machine's run, or a "
                                  f"cleared cache): {again}")
    if stamp(path) != run.tags.get(TAG_ARTIFACT_STAMP):
        raise ArtifactUnavailable(f"{path} has changed since run {run.run_id} measured it "
                                  f"({run.tags.get(TAG_ARTIFACT_STAMP)}; now {stamp(path)}): {again}")
    tokenizer = run.tags.get(TAG_ARTIFACT_TOKENIZER)
    return Artifact(path, Path(tokenizer) if tokenizer else None, run)


def link_or_copy(source: Path, target: Path) -> str:
    """The file, or the folder's files, at target: hard links where both are on one file system (no second
    copy of gigabytes; deleting the cache leaves them), else copies. Returns "linked" or "copied"."""
    how = "linked"
    for file in files(source):
        out = target if source.is_file() else target / file.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, out)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(file, out)
            how = "copied"
    return how


def tokenizer_files(folder: Path) -> List[Path]:
    """A checkpoint folder's tokenizer files (what CTranslate2's folder lacks to turn text into tokens)."""
    return sorted({p for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if p.is_file()})
