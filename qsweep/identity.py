"""What a job is called and tagged with: one name per job (progress line, run, summary), the tags that
identify its run, and, for a local checkpoint folder, which weights it held and which fine-tune made it."""

from __future__ import annotations

import json
from pathlib import Path

from qsweep import backends, gguf_source, sources
from qsweep import gguf_files
from qsweep.config import GGUF_PRECISION, BackendConfig, PrecisionConfig, RunConfig
from qsweep.confighash import config_hash
from qsweep.environment import resolve_device
from qsweep.tracking import (TAG_BACKEND, TAG_BATCH_SIZE, TAG_COMPILE, TAG_DEVICE, TAG_FINE_TUNE_RUN, TAG_HASH,
                             TAG_LOGGED_MODEL, TAG_MAX_NEW_TOKENS, TAG_MODEL, TAG_MODEL_VERSION, TAG_PRECISION,
                             TAG_PROMPT_TOKENS, TAG_QUALITY_UNAVAILABLE, TAG_QUANT_TYPE, TAG_RUNTIME, TAG_SETTING,
                             TAG_WEIGHTS, TAG_WEIGHTS_KIND, TAG_WEIGHTS_ORIGIN)

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
    types, which the setting names), or a GGUF model's own type (gguf Q4_K_M): what the name and the setting
    show."""
    if cfg.precision.name == GGUF_PRECISION:
        return f"{GGUF_PRECISION} {gguf_source.file_type(cfg.model) or 'file'}"
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
                         + ("" if _bitsandbytes(cfg) or cfg.precision.name == GGUF_PRECISION else f" {runtime}"),
            **weights_tag(cfg),
            **fine_tune_tags(cfg), **origin_tags(cfg)}


def origin_tags(cfg: RunConfig) -> dict:
    """Weights dequantized from a quantized file (the bundled Gemma; a GGUF model of a quantized type, on every
    runtime): its type, for the provenance note; and for a GGUF transformers cannot read, why there is no quality
    reference. Nothing where a GGUF cannot be read now (the job fails with the reason)."""
    if not cfg.model.is_gguf:
        origin = sources.quantized_origin(cfg.model)
        return {TAG_WEIGHTS_ORIGIN: origin} if origin else {}
    try:
        described = gguf_source.describe(cfg.model)
    except (gguf_source.GgufUnavailable, OSError):
        return {}
    why = gguf_source.without_reference(described["architecture"])
    quantized = described["file_type"] not in gguf_files.WRITTEN_HERE
    return {**({TAG_WEIGHTS_ORIGIN: described["file_type"]} if quantized else {}),
            **({TAG_QUALITY_UNAVAILABLE: why} if why else {})}


def weights_tag(cfg: RunConfig) -> dict:
    """A local checkpoint folder or GGUF file is hashed by its path (config_hash), and a path can be rewritten (a
    new fine-tune, a new download or quantization): the weights_sha256 tag says which weights were measured."""
    if cfg.model.weights != "pretrained":
        return {}
    if cfg.model.is_gguf:
        try:
            path = gguf_source.locate(cfg.model, download=False)
        except gguf_source.GgufUnavailable:
            path = None
    else:
        folder = sources.local_folder(cfg.model)
        path = folder if folder is not None and (folder / "config.json").is_file() else None
    if path is None:
        return {}  # missing, or a hub file not downloaded yet: the job fails or downloads it, and says so
    return {TAG_WEIGHTS: sources.weights_sha256(path, Path(cfg.paths.cache_dir).expanduser())}


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
