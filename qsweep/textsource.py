"""Which text quality is scored on (quality.text): the built-in text, wikitext-2's raw test split, or the
user's own file (plain text, or JSONL with a field to read). Reading and checking only: no torch, so the
config checks it before any model loads, and its identity (name, SHA-256) goes with the run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BUILTIN, WIKITEXT = "builtin", "wikitext-2"
# wikitext-2-raw-v1's test split (Merity et al. 2016, CC BY-SA 3.0): its non-empty lines, so not byte-identical
# to llama.cpp's download (scripts/get-wikitext-2.sh); README.md and LICENSE beside it say where it is from.
WIKITEXT_FILE = ("data", "wikitext-2", "wiki.test.raw")


class TextError(ValueError):
    """The text cannot be scored; the message says why and how to fix it."""


@dataclass(frozen=True)
class EvalText:
    name: str  # builtin, wikitext-2, or the file's path
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _packaged(*parts: str):
    return resources.files("qsweep").joinpath(*parts)


def _jsonl(path: Path, field: str) -> str:
    """The `field` of every non-empty line, joined by blank lines."""
    parts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TextError(f"{path} line {number} is not JSON ({e.msg}): a .jsonl file holds one JSON object a line")
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            has = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise TextError(f"{path} line {number} has no text field {field!r} (it has: {has}): name the field "
                            "to read with quality.text_field=<field>")
        parts.append(record[field])
    return "\n\n".join(parts)


def read(spec: str, field: str = "text") -> EvalText:
    """The text `spec` names (quality.text); TextError when it is missing, empty or has no `field`."""
    if spec == BUILTIN:
        return EvalText(BUILTIN, _packaged("data", "eval_text.txt").read_text(encoding="utf-8"))
    if spec == WIKITEXT:
        return EvalText(WIKITEXT, _packaged(*WIKITEXT_FILE).read_text(encoding="utf-8"))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TextError(f"no such file: {path}: use quality.text=builtin, {WIKITEXT}, or the path of a text "
                        "or .jsonl file")
    text = _jsonl(path, field) if path.suffix == ".jsonl" else path.read_text(encoding="utf-8")
    if not text.strip():
        raise TextError(f"{path} has no text to score: give a non-empty file")
    return EvalText(str(path), text)
