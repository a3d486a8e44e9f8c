"""One job of a sweep: config -> model -> measurement -> tracking, recorded as one MLflow run.

The measurement (`measure_job`) runs in a worker process by default and returns plain data; this
process owns the MLflow run, so a worker that crashes, is killed or hangs still ends as a FAILED run.
"""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from qsweep import environment, measure, models, quality, sources, tracking, worker
from qsweep.config import ConfigError, RunConfig, TrackingConfig, config_hash, flatten, to_yaml, validate


@dataclass
class LoadMetrics:
    """Names are the MLflow metric names."""
    load_time_s: float
    model_footprint_gb: float


@dataclass
class JobResult:
    """Everything a measurement produced, as plain data that crosses process boundaries."""
    load: LoadMetrics
    speed: measure.SpeedMetrics
    memory: measure.MemoryMetrics
    precision: models.PrecisionReport
    texts: List[dict]
    environment: dict
    quality: Optional[quality.QualityResult] = None  # None: not applicable (random weights, no tokenizer)


def run_name(model: str, precision: str, device: str, max_new_tokens) -> str:
    return f"{model}-{precision}-{device}-{max_new_tokens}"


def run_tags(cfg: RunConfig) -> dict:
    return {tracking.TAG_HASH: config_hash(cfg), "model": cfg.model.name, "precision": cfg.precision.name,
            "device": cfg.device.name, "weights": cfg.model.weights,
            "max_new_tokens": cfg.generation.max_new_tokens,
            "setting": f"{cfg.device.name.upper()} {cfg.precision.name.upper()}",
            "mlflow.runName": run_name(cfg.model.name, cfg.precision.name, cfg.device.name,
                                       cfg.generation.max_new_tokens), **weights_tag(cfg)}


def weights_tag(cfg: RunConfig) -> dict:
    """A local checkpoint folder is hashed by its path (config_hash), and a path can be rewritten (a new
    fine-tune): the weights_sha256 tag says which weights were measured."""
    folder = sources.local_folder(cfg.model) if cfg.model.weights == "pretrained" else None
    if folder is None or not (folder / "config.json").is_file():
        return {}  # a missing checkpoint fails in the worker, with its remedy
    return {tracking.TAG_WEIGHTS: sources.weights_sha256(folder)}


def worker_preload() -> Tuple[str, ...]:
    """What the fork server imports once, so that no job's worker pays it again. Beyond this module,
    the modeling code every model loads lazily and bitsandbytes (3 to 5 s per job on 2 cores;
    benchmarks/RESULTS.md, sweep cost), but only where there is no GPU: bitsandbytes queries the GPU
    when imported, and a fork server that has initialised CUDA forks workers that cannot use it."""
    if torch.cuda.is_available():
        return ("qsweep.job",)
    return ("qsweep.job", "transformers.modeling_utils", "transformers.modeling_layers",
            "transformers.activations", "transformers.generation.utils", "bitsandbytes")


def run_job(raw: DictConfig, tags: Optional[dict] = None) -> Tuple[tracking.Store, str, bool]:
    """Measure one configuration into one MLflow run (with `tags` on top): (store, run id, succeeded).
    A failure is recorded in the run, not raised, so the other jobs of a sweep go on."""
    plain = OmegaConf.to_container(raw, resolve=True)
    plain.pop("hydra", None)
    store = tracking.open_store(OmegaConf.to_object(raw.tracking) if "tracking" in raw else TrackingConfig())
    name = run_name(raw.model.name, raw.precision.name, raw.device.name, raw.generation.max_new_tokens)
    run_id = None
    try:
        with tracking.job_run(store, name, os.environ.get(tracking.PARENT_RUN_ENV), tags) as run:
            run_id = run.run_id
            run.log_params(flatten(plain))
            cfg = validate(raw)  # a bad value fails here, as a FAILED run that says which field
            run.set_tags(run_tags(cfg))
            run.log_text(to_yaml(cfg), "config.yaml")
            isolated, preload = cfg.runner.isolation == "process", worker_preload()
            if isolated:  # a first conversion leaves gigabytes of RSS behind: not in the measured process
                worker.call(prepare_checkpoint, cfg, True, cfg.runner.timeout_s, preload)
            result = worker.call(measure_job, cfg, isolated, cfg.runner.timeout_s, preload)
            _record(run, result)
        return store, run_id, True
    except Exception as err:
        if run_id is None:  # the store refused the run: nothing was recorded, so say it loudly
            raise
        print(f"qsweep: {name} FAILED: {tracking.one_line(err)}", flush=True)
        return store, run_id, False
    finally:
        gc.collect()  # inline jobs share this process: free the model before the next one loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def completed_job(raw: DictConfig) -> Optional[dict]:
    """For sweep.skip_completed: the newest FINISHED run of this config_hash in the experiment, as a
    summary row with status SKIPPED that points to it; None when there is none (or the config is bad,
    which run_job then records as a FAILED run)."""
    try:
        cfg = validate(raw)
    except ConfigError:
        return None
    store, the_hash = tracking.open_store(cfg.tracking), config_hash(cfg)
    done = tracking.find_by_hash(store, the_hash, finished_only=True)
    weights = weights_tag(cfg).get(tracking.TAG_WEIGHTS)
    if weights and done:  # the same path, but does it still hold the weights that were measured?
        same = [run for run in done if run["tags"].get(tracking.TAG_WEIGHTS) == weights]
        if not same:
            print(f"qsweep: {done[0]['name']}: config_hash {the_hash} is FINISHED in run {done[0]['run_id']}, but "
                  f"{cfg.model.name_or_path} holds other weights now: measuring it again", flush=True)
        done = same
    if not done:
        return None
    if os.environ.get(tracking.PARENT_RUN_ENV):  # for the sweep's summary, whichever process runs this job
        tracking.mark_skipped(store, os.environ[tracking.PARENT_RUN_ENV], the_hash, done[0]["run_id"])
    print(f"qsweep: {done[0]['name']} skipped: config_hash {the_hash} already FINISHED in run "
          f"{done[0]['run_id']} (sweep.skip_completed=true)", flush=True)
    return {**done[0], "status": "SKIPPED"}


def prepare_checkpoint(cfg: RunConfig) -> None:
    """Convert, download or create the weights if that was never done (a quick check otherwise)."""
    sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())


def measure_job(cfg: RunConfig) -> JobResult:
    """Load the model and measure it; runs in the worker process. No MLflow here."""
    if cfg.device.num_threads:
        torch.set_num_threads(cfg.device.num_threads)
    # Done already by prepare_checkpoint (isolated); inline, a first conversion happens here, untimed.
    checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    memory = measure.MemoryTracker(cfg.device.name)
    with memory.track():
        loaded = models.load(cfg, checkpoint)
        prompt_ids = measure.encode_prompts(cfg.generation.prompts, loaded.tokenizer, loaded.model.config,
                                            cfg.model.seed)
        measure.check_context(prompt_ids, cfg.generation.max_new_tokens, loaded.model.config)
        try:
            speed, generations = measure.generate_timed(loaded.model, prompt_ids, cfg.generation,
                                                        cfg.device.name)
        except RuntimeError as err:
            raise models.explain_backend_error(err, cfg.precision, cfg.device.name) from err
    texts = _texts(cfg.generation.prompts, generations, loaded.tokenizer)
    judged = None  # quality: after the timed and memory-tracked region, so it cannot change their figures
    if quality.applicable(cfg, loaded.tokenizer):
        judged = quality.evaluate(cfg, loaded, generations, [t["output"] for t in texts])
        for text, fp32_ids in zip(texts, judged.fp32_outputs):
            text["fp32_output"] = loaded.tokenizer.decode(fp32_ids, skip_special_tokens=True)
            text["fp32_output_ids"] = fp32_ids
    return JobResult(
        load=LoadMetrics(loaded.load_time_s, loaded.model.get_memory_footprint() / measure.GB),
        speed=speed, memory=memory.metrics(), precision=loaded.precision, texts=texts,
        environment=environment.collect(), quality=judged)


def _record(run: tracking.JobRun, result: JobResult) -> None:
    run.log_metrics(result.load, result.speed, result.memory)
    run.set_tags({"precision_check": _describe(result.precision)})
    run.log_json(asdict(result.precision), "precision_check.json")
    run.log_json(result.environment, "environment.json")
    run.log_json(result.texts, "generations.json")
    run.log_text("\n\n".join(map(_markdown, result.texts)), "generations.md")
    if result.quality is None:
        run.set_tags({"quality": quality.NOT_APPLICABLE})
        return
    run.log_metrics(result.quality.metrics)
    run.set_tags({"quality": "measured", "degenerate_reason": result.quality.degenerate_reason,
                  "quality_reference": result.quality.reference})
    run.log_json(result.quality.details, "quality.json")


def _markdown(text: dict) -> str:
    """One prompt of generations.md: this run's output, and fp32's next to it when there is one."""
    if "fp32_output" not in text:
        return f"### {text['prompt']}\n{text['output']}"
    return f"### {text['prompt']}\n**this run:**\n{text['output']}\n\n**fp32:**\n{text['fp32_output']}"


def _describe(report: models.PrecisionReport) -> str:
    dtypes = ", ".join(f"{d}:{n}" for d, n in sorted(report.weight_dtypes.items()))
    return (f"int8 linear={report.linear_8bit}, int4 linear={report.linear_4bit}"
            f"{' (' + report.quant_type + ')' if report.quant_type else ''}, "
            f"full linear={report.linear_full}; params by dtype {dtypes}")


def _texts(prompts: List[str], generations: List[measure.Generation], tokenizer) -> List[dict]:
    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer else " ".join(map(str, ids))

    return [{"prompt": prompt, "output": decode(g.output_ids), "prompt_ids": g.prompt_ids,
             "output_ids": g.output_ids} for prompt, g in zip(prompts, generations)]
