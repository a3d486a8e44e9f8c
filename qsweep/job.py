"""One job: prepare the checkpoint, measure in a worker process, record the result as one MLflow run.

The worker returns plain data and this process owns the run, so a worker that crashes, is killed or
hangs still ends as a FAILED run, and the other jobs of the sweep go on.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from qsweep import (artifacts, backends, console, emulation, environment, identity, measure, prompts, quality,
                    results, sources, trackers, tracking, worker)
from qsweep.config import ConfigError, RunConfig, TrackingConfig
from qsweep.confighash import config_hash, flatten, to_yaml


def run_job(cfg: RunConfig, tags: Optional[dict] = None) -> tracking.RunRecord:
    """Measure one configuration (device already resolved) into one run, tagged with `tags` on top."""
    started = time.perf_counter()
    store, name, run_id = tracking.open_store(cfg.tracking), identity.run_name(cfg), None
    try:
        run_tags = {**identity.run_tags(cfg), **emulation.check(cfg), **(tags or {})}  # says when emulated
        with tracking.job_run(store, name, run_tags, _sweep_run()) as run:
            run_id = run.run_id
            run.log_params(flatten(dataclasses.asdict(cfg)))
            run.log_text(to_yaml(cfg), tracking.CONFIG_FILE)
            results.record_inputs(run, cfg)
            if tracking.TAG_LOGGED_MODEL in run_tags:  # a fine-tuned checkpoint: list its model as an input
                tracking.link_model(run, run_tags[tracking.TAG_LOGGED_MODEL])
            recording_s = time.perf_counter() - started
            # what the backend can never run (a CPU-only build on cuda) before what this machine lacks: one line
            # each, before any work
            backends.get(cfg.backend.name).check(cfg)
            check_inputs(cfg)
            environment.require_device(cfg.device.name)
            isolated, timeout = cfg.runner.isolation == "process", cfg.runner.timeout_s
            prepared, prepare_spent = _prepare_once(cfg, timeout) if isolated else (None, worker.Spent())
            # the registry travels with the job: a worker forked from the fork server has only the default one
            measuring = partial(measure_job, registry=tuple(trackers.REGISTRY))
            result, spent = worker.call_timed(measuring, cfg, isolated, timeout, warm=reuses_worker(cfg))
            if prepared is not None and prepared.converted_now:  # the measuring worker found them made
                result = dataclasses.replace(result, conversion="made")
            phases = dataclasses.replace(
                result.phases, phase_worker_start_s=prepare_spent.start_s + spent.start_s,
                phase_imports_s=spent.init_s, phase_recording_s=recording_s,
                phase_prepare_s=result.phases.phase_prepare_s + prepare_spent.fn_s)
            # a hub file this job downloaded: what it held, now that it is here
            late = {} if tracking.TAG_WEIGHTS in run_tags else identity.weights_tag(cfg)
            results.record(run, result, phases, started, late)
            if (result.runtime_tokenizer or "").startswith("differs"):  # scored on the checkpoint's ids all the same
                console.say(f"{name}: the runtime's own tokenizer splits {result.runtime_tokenizer[9:]} otherwise "
                            "than the checkpoint's; every runtime was fed the checkpoint's token ids")
    except Exception as err:
        if run_id is None:  # the store refused the run: nothing was recorded, so say it loudly
            raise
        if not tracking.reachable(store):  # the run cannot even be ended: say so in one line
            raise tracking.StoreUnavailable(f"the MLflow server {store.uri} went away while {name} ran: its run "
                                            "was not recorded") from None
        console.say(f"{name} FAILED: {tracking.one_line(err)}")
    finally:
        if cfg.runner.isolation == "inline":
            _free_memory()  # 0.5 s of gc in a process holding torch, MLflow and Hydra: only where a model was
    return tracking.get_run(store, run_id)


_prepared = set()  # what this process has already prepared in a worker (the files stay made)


def _prepare_once(cfg: RunConfig, timeout: float):
    """The checkpoint's and backend's files, made in a fresh worker (a first conversion leaves gigabytes of RSS
    behind: not in the measuring worker), once per sweep for each model, precision and backend."""
    key = json.dumps([dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.precision),
                      dataclasses.asdict(cfg.backend), cfg.paths.cache_dir], sort_keys=True)
    if key in _prepared:
        return None, worker.Spent()
    prepared, spent = worker.call_timed(prepare_files, cfg, True, timeout)
    _prepared.add(key)
    return prepared, spent


def record_invalid(raw: DictConfig, err: ConfigError) -> tracking.RunRecord:
    """A config that fails validation is a FAILED run naming the field, like any other failed job."""
    store = tracking.open_store(OmegaConf.to_object(raw.tracking) if "tracking" in raw else TrackingConfig())
    plain = OmegaConf.to_container(raw, resolve=True)
    plain.pop("hydra", None)
    name, run_id = identity.run_name(raw), None
    try:
        with tracking.job_run(store, name, {}, _sweep_run()) as run:
            run_id = run.run_id
            run.log_params(flatten(plain))
            raise err
    except ConfigError:
        console.say(f"{name} FAILED: {tracking.one_line(err)}")
    return tracking.get_run(store, run_id)


def completed_job(cfg: RunConfig) -> Optional[tracking.RunRecord]:
    """For sweep.skip_completed: the newest FINISHED run of this config_hash (and, for a local checkpoint folder or
    file, of the weights it holds now), as a SKIPPED record; None when there is none."""
    store, the_hash = tracking.open_store(cfg.tracking), config_hash(cfg)
    done = tracking.find_by_hash(store, the_hash, finished_only=True)
    weights = identity.weights_tag(cfg).get(tracking.TAG_WEIGHTS)
    if weights and done:  # the same path, but does it still hold the weights that were measured?
        # a run recorded without the tag (a single-file checkpoint, before it had one) cannot tell: its hash decides
        same = [run for run in done if run.tags.get(tracking.TAG_WEIGHTS, weights) == weights]
        if not same:
            console.say(f"{done[0].name}: config_hash {the_hash} is FINISHED in run {done[0].run_id}, but "
                        f"{cfg.model.name_or_path} holds other weights now: measuring it again")
        done = same
    if not done:
        return None
    if _sweep_run():  # for the sweep's summary, whichever process runs this job
        tracking.record_skip(store, _sweep_run(), the_hash, done[0].run_id)
    console.say(f"{done[0].name} skipped: config_hash {the_hash} already FINISHED in run {done[0].run_id} "
                "(sweep.skip_completed=true)")
    return dataclasses.replace(done[0], status="SKIPPED")


def reuses_worker(cfg: RunConfig) -> bool:
    """Whether the job measures in the sweep's warm worker (runner.reuse_worker). On a GPU it spares each job
    the CUDA initialisation (10-20 s on the H200); on the CPU a fresh worker costs a fraction of a second and
    keeps what earlier jobs left in the process (a tokenizer, freed but fragmented heap) out of peak_rss_gb."""
    return cfg.runner.reuse_worker == "always" or (cfg.runner.reuse_worker == "cuda" and cfg.device.name == "cuda")


def check_inputs(cfg: RunConfig) -> None:
    """Bad input seen without loading anything: a missing or broken model file, a chat template asked of a local
    model without one (a hub model's is checked once its tokenizer is there)."""
    prompts.require_template(cfg.generation, cfg.model.name_or_path, sources.has_chat_template(cfg.model))


def prepare_files(cfg: RunConfig) -> backends.Files:
    """Convert, download or create the weights, and the backend's files, if that was never done."""
    backend = backends.get(cfg.backend.name)
    return backend.prepare(cfg, sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser()))


def measure_job(cfg: RunConfig, registry: Optional[tuple] = None) -> results.JobResult:
    """Load the model and measure it with the trackers of `registry` (default: this process's); runs in the
    worker process. No MLflow here."""
    if cfg.device.num_threads:
        torch.set_num_threads(cfg.device.num_threads)
    started = time.perf_counter()
    backend = backends.get(cfg.backend.name)
    # Done already by prepare_files (isolated); inline, a first conversion happens here, untimed.
    checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    files = backend.prepare(cfg, checkpoint)
    prepare_s = time.perf_counter() - started
    # Before the memory is tracked: the tokenizer (the harness's) and the runtime's code (its library, the same
    # for every setting of the runtime; docs/measurement.md)
    backends.tokenizer(checkpoint.tokenizer_path)
    for module in getattr(backend, "LIBRARIES", ()):
        importlib.import_module(module)
    tracked = trackers.Trackers(cfg.device.name, registry)  # every registered tracker this device supports
    with tracked.track():
        runtime = backend.load(cfg, checkpoint, files)
        prompt_ids, prompt_texts = prompts.encode(cfg.generation, runtime.tokenizer, runtime.vocab_size,
                                                  cfg.model.seed)
        measure.check_context(prompt_ids, cfg.generation.max_new_tokens, runtime.context_length)
        speed, generations = measure.generate_timed(runtime, prompt_ids, cfg.generation, cfg.device.name,
                                                     tracked.timed)
    texts = results.texts(prompt_texts, generations, runtime.tokenizer)
    judged = None  # quality: after the tracked region, whose figures were taken when it ended
    try:
        own_splits = prompts.own_splits(runtime, list(cfg.generation.prompts) if cfg.generation.prompt_tokens is None
                                        else [], cfg.quality)
        if quality.applicable(cfg, runtime.tokenizer):
            judged = quality.evaluate(cfg, runtime, checkpoint, generations, [t["output"] for t in texts])
            results.add_fp32_outputs(texts, judged.fp32_outputs, runtime.tokenizer)
    finally:
        runtime.close()
    recorded = time.perf_counter()
    machine = {**_environment(), "torch_threads": torch.get_num_threads()}
    return results.JobResult(
        load=results.LoadMetrics(runtime.load_time_s, runtime.footprint_gb, files.conversion_time_s),
        speed=speed, tracked=tracked.results(), precision=runtime.precision, texts=texts,
        environment=machine, quality=judged, runtime_tokenizer=own_splits,
        artifact=artifacts.tags(files, checkpoint),
        conversion=None if files.conversion_time_s is None else "made" if files.converted_now else "reused",
        phases=results.JobPhases(phase_prepare_s=prepare_s, phase_environment_s=time.perf_counter() - recorded))


@lru_cache(maxsize=1)
def _environment() -> dict:
    """Once per worker: versions, CPU, GPU and the git commit do not change between the jobs of a sweep."""
    return environment.collect()


def _sweep_run() -> Optional[str]:
    return os.environ.get(tracking.PARENT_RUN_ENV)


def _free_memory() -> None:
    gc.collect()  # inline jobs share this process: free the model before the next one loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
