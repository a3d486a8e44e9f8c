"""The config hash that identifies a run, and the two forms a config is recorded in: config.yaml and flat
MLflow params. What is hashed is what is measured; paths inside the project are kept portable, so a run
has the same identity in every clone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from qsweep import config
from qsweep.config import HASHED_SECTIONS, ROOT_REFERENCE, TARGET, BackendConfig, GenerationConfig, RunConfig


def portable(path: str) -> str:
    """An absolute path inside this project as ${qsweep.root:}/..., so that a checkpoint the project makes
    (models/gemma-3-270m-ft) has the same identity in every clone, and a recorded config finds it in the
    clone that reproduces it. Hub ids and paths elsewhere are returned as they are."""
    root = config.PROJECT_ROOT  # looked up at each call, like the ${qsweep.root:} resolver
    if not Path(path).is_absolute() or not Path(path).is_relative_to(root):
        return path
    return f"{ROOT_REFERENCE}/{Path(path).relative_to(root).as_posix()}"


# Fields added after the first stores were written: hashed only where they differ from their default, so
# every config that existed before keeps its config_hash (tests/test_hash_pins.py).
LATER_FIELDS = {"backend": {"name": BackendConfig.name},
                "generation": {"prompt_tokens": None, "repeat_until_spread": None,
                               "repeat_time_cap_s": GenerationConfig.repeat_time_cap_s,
                               "chat_template": GenerationConfig.chat_template},
                "model": {"gguf_file": None},
                "quality": {"windows": None, "text": "builtin", "text_field": "text", "max_tokens": None,
                            "method": "qsweep", "context": None}}


def hashed_fields(cfg: RunConfig) -> dict:
    fields = {section: asdict(getattr(cfg, section)) for section in HASHED_SECTIONS}
    fields["model"].pop("missing_hint")  # advice in an error message, not what is measured
    # where the backend's code is, not what is measured; and its options only where set (null: the precision's)
    fields["backend"] = {k: v for k, v in fields["backend"].items() if k != TARGET and v is not None}
    fields["model"]["name_or_path"] = portable(cfg.model.name_or_path)
    if cfg.generation.repeat_until_spread is None:  # fixed repeats: the adaptive repeats' time cap changes nothing
        fields["generation"]["repeat_time_cap_s"] = GenerationConfig.repeat_time_cap_s
    for section, default in LATER_FIELDS.items():
        for key, value in default.items():
            if fields[section][key] == value:
                del fields[section][key]
        if not fields[section]:
            del fields[section]
    return fields


def to_yaml(cfg: RunConfig) -> str:
    """The run's config.yaml: the validated config, with paths inside the project kept portable."""
    recorded = OmegaConf.structured(cfg)
    recorded.model.name_or_path = portable(cfg.model.name_or_path)
    return OmegaConf.to_yaml(recorded)


def config_hash(cfg: RunConfig) -> str:
    """12 hex chars of SHA-256 over the canonical JSON of what is measured: key order never matters."""
    canonical = json.dumps(hashed_fields(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def flatten(data: Any, prefix: str = "") -> Dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} for MLflow params; lists stay whole, as JSON."""
    if isinstance(data, dict):
        out: Dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data if isinstance(data, str) else json.dumps(data)}
