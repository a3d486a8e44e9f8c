"""What a job measured, as plain data that crosses process boundaries, and how it is recorded in its run:
metrics, tags and the artifacts that the report and reproduce read back."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from qsweep import measure, quality, textsource, trackers
from qsweep.backends import PrecisionCheck
from qsweep.config import RunConfig
from qsweep.tracking import (CONFIG_FILE, CONTEXT_EVAL, CONTEXT_PROMPTS, ENVIRONMENT_FILE, GENERATIONS_FILE,
                             GENERATIONS_MARKDOWN, GENERATIONS_TABLE, PRECISION_FILE, QUALITY_FILE,
                             TAG_CONVERSION, TAG_DEGENERATE_REASON, TAG_PRECISION_CHECK, TAG_QUALITY,
                             TAG_QUALITY_REFERENCE, TAG_QUALITY_SCORES, TAG_QUALITY_TEXT, TAG_QUALITY_TEXT_SHA256,
                             TAG_RUNTIME_TOKENIZER, RunWriter)


@dataclass
class LoadMetrics:
    """Names are the MLflow metric names."""
    load_time_s: float
    model_footprint_gb: float  # the size of what the runtime loaded
    conversion_time_s: Optional[float] = None  # making the backend's files from the checkpoint (once)


@dataclass
class JobPhases:
    """Where a job's wall time went, in seconds; names are the MLflow metric names. With load_time_s, quality_time_s
    and the speed metrics phase_warmup_s and phase_generation_s they make up job_wall_s."""
    job_wall_s: float = 0.0  # the job, from its start to its run's last write
    phase_worker_start_s: float = 0.0  # starting worker processes, handing work and answers across
    phase_imports_s: float = 0.0  # a new worker's imports and CUDA initialisation (0 in a warm worker)
    phase_prepare_s: float = 0.0  # checkpoint preparation: random weights, conversions (~0 once made)
    phase_environment_s: float = 0.0  # the environment record (software versions, CPU, GPU, git commit)
    phase_recording_s: float = 0.0  # MLflow: creating the run, params, datasets, artifacts
    fixed_cost_s: float = 0.0  # job_wall_s - (load_time_s + phase_warmup_s + phase_generation_s + quality_time_s)


@dataclass
class JobResult:
    load: LoadMetrics
    speed: measure.SpeedMetrics
    precision: PrecisionCheck
    texts: List[dict]  # per prompt: prompt, output, prompt_ids, output_ids (+ fp32_output, fp32_output_ids)
    environment: dict
    quality: Optional[quality.QualityResult] = None  # None: not applicable (random weights, no tokenizer)
    conversion: Optional[str] = None  # made (by this job) or reused; None: the backend loads the checkpoint
    phases: Optional[JobPhases] = None  # the worker's part: prepare, environment (the job adds the rest)
    tracked: List[trackers.Result] = field(default_factory=list)  # one per tracker the job ran (memory, energy, ...)
    runtime_tokenizer: Optional[str] = None  # prompts.own_splits: None where the runtime has no tokenizer of its own
    artifact: Dict[str, str] = field(default_factory=dict)  # the artifact's tags (artifacts.tags)


def texts(prompts: List[str], generations: List[measure.Generation], tokenizer) -> List[dict]:
    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer else " ".join(map(str, ids))

    return [{"prompt": prompt, "output": decode(g.output_ids), "prompt_ids": g.prompt_ids,
             "output_ids": g.output_ids} for prompt, g in zip(prompts, generations)]


def add_fp32_outputs(texts: List[dict], fp32_outputs: List[List[int]], tokenizer) -> None:
    for text, fp32_ids in zip(texts, fp32_outputs):
        text["fp32_output"] = tokenizer.decode(fp32_ids, skip_special_tokens=True)
        text["fp32_output_ids"] = fp32_ids


def record_inputs(run: RunWriter, cfg: RunConfig) -> None:
    """The job's inputs as datasets: the prompts (from the run's config.yaml) and, for real weights, the
    evaluation text of the quality metrics; each with the digest of its content."""
    prompts = list(cfg.generation.prompts)
    run.log_dataset("prompts", {"prompt": prompts}, f"{run.artifact_uri()}/{CONFIG_FILE}",
                    _digest(json.dumps(prompts)), CONTEXT_PROMPTS)
    if cfg.model.weights == "pretrained":
        text = textsource.read(cfg.quality.text, cfg.quality.text_field)
        source = str(quality.eval_text_file()) if text.name == textsource.BUILTIN else text.name
        run.log_dataset("eval_text", {"line": text.text.splitlines()}, source, _digest(text.text), CONTEXT_EVAL)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def generation_table(result: JobResult) -> Dict[str, list]:
    """One row per prompt: the prompt, this run's output, fp32's, how many leading tokens are fp32's, and
    why the output is broken ("none"; "not_applicable" without quality metrics)."""
    judged = result.quality.details.get("degenerate_by_prompt") if result.quality else None
    return {"prompt": [t["prompt"] for t in result.texts],
            "output": [t["output"] for t in result.texts],
            "fp32_output": [t.get("fp32_output") for t in result.texts],
            "matching_tokens": [quality.matching_tokens(t["output_ids"], t["fp32_output_ids"])
                                if "fp32_output_ids" in t else None for t in result.texts],
            "degenerate_reason": judged or [quality.NOT_APPLICABLE] * len(result.texts)}


def record(run: RunWriter, result: JobResult, phases: JobPhases, started: float,
           more_tags: Optional[dict] = None) -> None:
    """The result into its run, in few writes: one upload of the artifacts, one batch of metrics and tags (with
    `more_tags`). `phases` gets the recording time and the job's wall time up to the last write (`started`:
    perf_counter)."""
    begin = time.perf_counter()
    files = {PRECISION_FILE: result.precision.details, ENVIRONMENT_FILE: result.environment,
             GENERATIONS_FILE: result.texts, GENERATIONS_MARKDOWN: "\n\n".join(map(_markdown, result.texts))}
    tags = {TAG_PRECISION_CHECK: result.precision.summary, TAG_QUALITY: quality.NOT_APPLICABLE, **result.artifact,
            **(more_tags or {})}
    tags.update({name: value for tracked in result.tracked for name, value in tracked.tags.items()})
    if result.conversion:
        tags[TAG_CONVERSION] = result.conversion
    if result.runtime_tokenizer:
        tags[TAG_RUNTIME_TOKENIZER] = result.runtime_tokenizer
    if result.quality is not None:
        files[QUALITY_FILE] = result.quality.details
        tags.update({TAG_QUALITY: "measured", TAG_DEGENERATE_REASON: result.quality.degenerate_reason,
                     TAG_QUALITY_REFERENCE: result.quality.reference, TAG_QUALITY_SCORES: result.quality.scores,
                     TAG_QUALITY_TEXT: result.quality.details["text"],
                     TAG_QUALITY_TEXT_SHA256: result.quality.details["text_sha256"]})
    run.log_files(files)
    run.log_table(generation_table(result), GENERATIONS_TABLE)
    phases.phase_recording_s += time.perf_counter() - begin
    phases.job_wall_s = time.perf_counter() - started
    measured = (result.load.load_time_s + result.speed.phase_warmup_s + result.speed.phase_generation_s
                + (result.quality.metrics.quality_time_s if result.quality else 0.0))
    phases.fixed_cost_s = phases.job_wall_s - measured
    run.log(result.load, result.speed, *(tracked.metrics() for tracked in result.tracked),
            result.quality.metrics if result.quality else {}, phases, tags=tags)


def time_line(jobs: list, sweep_wall_s: float) -> str:
    """The sweep summary's line on where the time went (jobs: RunRecords with the phase metrics)."""
    timed = [j.metrics for j in jobs if "fixed_cost_s" in j.metrics]
    if not timed or sweep_wall_s <= 0:
        return ""
    generation = sum(m.get("phase_generation_s", 0.0) for m in timed)
    return (f"timed generation: {generation / sweep_wall_s:.0%} of the sweep's {sweep_wall_s:.1f} s; median fixed "
            f"cost per job {statistics.median(m['fixed_cost_s'] for m in timed):.2f} s (the rest of a job besides "
            "loading, warm-up, timed generation and quality)")


def _markdown(text: dict) -> str:
    """One prompt of generations.md: this run's output, and fp32's next to it when there is one."""
    if "fp32_output" not in text:
        return f"### {text['prompt']}\n{text['output']}"
    return f"### {text['prompt']}\n**this run:**\n{text['output']}\n\n**fp32:**\n{text['fp32_output']}"
