"""What a job is called and tagged with: one name per job (progress line, run, summary), the tags that
identify its run, and, for a local checkpoint folder, which weights it held and which fine-tune made it."""

from __future__ import annotations

import json
from pathlib import Path

from qsweep import backends, sources
from qsweep.config import BackendConfig, PrecisionConfig, RunConfig
from qsweep.confighash import config_hash
from qsweep.environment import resolve_device
from qsweep.tracking import (TAG_BACKEND, TAG_BATCH_SIZE, TAG_COMPILE, TAG_DEVICE, TAG_FINE_TUNE_RUN, TAG_HASH,
                             TAG_LOGGED_MODEL, TAG_MAX_NEW_TOKENS, TAG_MODEL, TAG_MODEL_VERSION, TAG_PRECISION,
                             TAG_PROMPT_TOKENS, TAG_QUANT_TYPE, TAG_RUNTIME, TAG_SETTING, TAG_WEIGHTS,
                             TAG_WEIGHTS_KIND)

DEFAULT_BACKEND = BackendConfig().name
DEFAULT_QUANT_TYPE = PrecisionConfig.quant_type


def run_name(cfg) -> str:
    """gemma-3-270m-int4-cpu-128; then, where they differ from the defaults, the 4-bit type, the batch size,
    the prompt length, compilation and the backend: gemma-3-270m-int4-fp4-cpu-64-b16-p512-llama-cpp. Takes
    a RunConfig or a composed DictConfig (the sweep's progress line, a config that failed validation):
    device=auto is named by what it means on this machine."""
    gen, backend = cfg.generation, cfg.backend.name
    return (f"{cfg.model.name}-{precision_label(cfg).replace(' ', '-')}-{resolve_device(cfg.device.name)}-"
            f"{gen.max_new_tokens}"
            + (f"-b{gen.batch_size}" if gen.batch_size != 1 else "")
            + (f"-p{gen.prompt_tokens}" if gen.prompt_tokens is not None else "")
            + ("-compiled" if getattr(gen, "compile", False) else "")
            + ("" if backend == DEFAULT_BACKEND else f"-{backend}"))


def precision_label(cfg) -> str:
    """int4, or int4 fp4 for bitsandbytes' 4-bit FP4 (NF4 is int4's default; other runtimes have their own
    types, which the setting names): what the name and the setting show."""
    quant_type = getattr(cfg.precision, "quant_type", DEFAULT_QUANT_TYPE) if _bitsandbytes(cfg) else DEFAULT_QUANT_TYPE
    return cfg.precision.name + (f" {quant_type}" if quant_type != DEFAULT_QUANT_TYPE else "")


def _bitsandbytes(cfg) -> bool:
    """precision.quant_type is bitsandbytes' setting: only backend=transformers uses it."""
    return cfg.backend.name == DEFAULT_BACKEND


def run_tags(cfg: RunConfig) -> dict:
    """What the run measured, one value per tag (the report reads these), and the UI's label (setting): the
    runtime's own quantization (the runtime tag: GGUF type, CTranslate2 compute type), never a setting it
    does not use."""
    quant_type = {TAG_QUANT_TYPE: cfg.precision.quant_type} \
        if cfg.precision.quantization == "int4" and _bitsandbytes(cfg) else {}
    runtime = backends.get(cfg.backend.name).label(cfg)
    return {TAG_HASH: config_hash(cfg), TAG_MODEL: cfg.model.name, TAG_PRECISION: cfg.precision.name,
            **quant_type, TAG_COMPILE: str(cfg.generation.compile).lower(),
            TAG_DEVICE: cfg.device.name, TAG_BACKEND: cfg.backend.name,
            TAG_RUNTIME: runtime, TAG_WEIGHTS_KIND: cfg.model.weights,
            TAG_MAX_NEW_TOKENS: cfg.generation.max_new_tokens, TAG_BATCH_SIZE: cfg.generation.batch_size,
            TAG_PROMPT_TOKENS: cfg.generation.prompt_tokens or "text",
            TAG_SETTING: f"{cfg.device.name.upper()} {precision_label(cfg).upper()}"
                         + (" compiled" if cfg.generation.compile else "")
                         + ("" if _bitsandbytes(cfg) else f" {runtime}"), **weights_tag(cfg),
            **fine_tune_tags(cfg)}


def weights_tag(cfg: RunConfig) -> dict:
    """A local checkpoint folder is hashed by its path (config_hash), and a path can be rewritten (a new
    fine-tune): the weights_sha256 tag says which weights were measured."""
    folder = sources.local_folder(cfg.model) if cfg.model.weights == "pretrained" else None
    if folder is None or not (folder / "config.json").is_file():
        return {}  # a missing checkpoint fails in the worker, with its remedy
    return {TAG_WEIGHTS: sources.weights_sha256(folder, Path(cfg.paths.cache_dir).expanduser())}


def fine_tune_tags(cfg: RunConfig) -> dict:
    """For a checkpoint made by train_merge (its train_merge.json): the fine-tune's run, and the logged model
    and registered model version it became."""
    folder = sources.local_folder(cfg.model) if cfg.model.weights == "pretrained" else None
    if folder is None or not (folder / sources.PROVENANCE_FILE).is_file():
        return {}
    made = json.loads((folder / sources.PROVENANCE_FILE).read_text())
    tags = {TAG_FINE_TUNE_RUN: made["mlflow_run_id"]}
    if "logged_model_id" in made:  # checkpoints made before train_merge registered them have none
        tags.update({TAG_LOGGED_MODEL: made["logged_model_id"],
                     TAG_MODEL_VERSION: f"{made['registered_model']}/{made['model_version']}"})
    return tags
