"""Handing a measured setting over: how to run it (what recommend prints under its pick and runner-up),
`qsweep export <config_hash> DEST` (the artifact hard-linked or copied, with a README beside it) and
`qsweep recommend --register NAME` (the pick's artifact as a version of an MLflow registered model, with the
alias `recommended`; the version's source is the artifact where it lies: nothing is copied).
"""

from __future__ import annotations

import datetime
import math
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from qsweep import artifacts, handover, tracking
from qsweep.artifacts import ArtifactUnavailable
from qsweep.tracking import (ALIAS_RECOMMENDED, ENVIRONMENT_FILE, PRECISION_FILE, TAG_ARTIFACT, TAG_ARTIFACT_SHA256,
                             TAG_BACKEND, TAG_BATCH_SIZE, TAG_CONSTRAINTS, TAG_DEVICE, TAG_HASH, TAG_MAX_NEW_TOKENS,
                             TAG_MODEL, TAG_OBJECTIVE, TAG_PICKED_FROM, TAG_PICKED_FROM_RUN, TAG_PRECISION,
                             TAG_RUNTIME, TAG_SETTING, RunRecord)

README = "README.md"
# The figures a README and a model version carry, with their names there
FIGURES = {"decode_tokens_per_s": "decode tokens/s", "throughput_tokens_per_s": "throughput tokens/s",
           "ttft_s": "time to first token (s)", "kl_div_vs_fp32": "KL vs fp32 (nats)",
           "kl_div_vs_fp32_se": "its standard error", "top1_agreement_vs_fp32": "top-1 agreement vs fp32",
           "perplexity": "perplexity", "setting_memory_gb": "setting memory (GB: what the model and runtime need)",
           "peak_rss_gb": "peak RSS (GB, qsweep's process)", "peak_vram_gb": "peak VRAM (GB)",
           "model_footprint_gb": "model size (GB)"}


def _measured(store: tracking.Store, run: RunRecord) -> handover.Measured:
    return handover.measured(run, tracking.read_json(store, run.run_id, PRECISION_FILE) or {},
                             tracking.read_json(store, run.run_id, ENVIRONMENT_FILE) or {})


def how_to_run(store: tracking.Store, run: RunRecord) -> List[str]:
    """The lines under a pick: how to run its artifact, or why it cannot be handed over."""
    try:
        artifact = artifacts.measured(run)
    except ArtifactUnavailable as err:
        return [f"- cannot hand it over: {err}"]
    return handover.how_to_run(_measured(store, run), artifact.path, artifact.tokenizer)


def find_finished(store: tracking.Store, prefix: str) -> RunRecord:
    """The newest FINISHED run of a config_hash (a unique prefix): reproduce's choice of run."""
    from qsweep.reproduce import find_original

    run, _ = find_original(store, prefix)
    if run.status != "FINISHED":
        raise ArtifactUnavailable(f"the newest run of config_hash {run.config_hash} ({run.run_id}) is {run.status}, "
                                  "not FINISHED: nothing measured to hand over")
    return run


def export(store: tracking.Store, prefix: str, dest: Path) -> str:
    """DEST/model.gguf (or DEST/model/, and DEST/tokenizer/ where the runtime needs one) and DEST/README.md.
    Returns what was done, in one line."""
    if dest.exists():
        raise ArtifactUnavailable(f"{dest} exists: give a new folder (export never writes into an existing one)")
    run = find_finished(store, prefix)
    artifact = artifacts.measured(run)
    target = dest / ("model.gguf" if artifact.path.is_file() else "model")
    try:
        how = artifacts.link_or_copy(artifact.path, target)
        tokenizer = None
        if artifact.tokenizer is not None and run.tags.get(TAG_BACKEND) != "llama-cpp":  # a GGUF holds its own
            tokenizer = target if artifact.tokenizer == artifact.path else dest / "tokenizer"
            for file in artifacts.tokenizer_files(artifact.tokenizer) if tokenizer != target else []:
                artifacts.link_or_copy(file, tokenizer / file.name)
        (dest / README).write_text(readme(store, run, artifact, target, tokenizer, how))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no half export left behind
        raise
    return f"{target} ({how} from {artifact.path}) and {dest / README}"


def readme(store: tracking.Store, run: RunRecord, artifact: artifacts.Artifact, target: Path,
           tokenizer: Optional[Path], how: str) -> str:
    env = tracking.read_json(store, run.run_id, ENVIRONMENT_FILE) or {}
    when = datetime.datetime.fromtimestamp(run.start_time / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = env.get("gpu_name") if run.tags.get(TAG_DEVICE) == "cuda" else env.get("cpu")
    figures = [f"- {label}: {run.metrics[name]:.4g}" for name, label in FIGURES.items()
               if math.isfinite(run.metrics.get(name, math.nan))]
    return "\n".join([
        f"# {run.tags.get(TAG_MODEL)} {run.tags.get(TAG_SETTING)} ({run.tags.get(TAG_RUNTIME)})", "",
        f"What: `{target.name}` is the artifact that qsweep measured as run {run.name} (run id {run.run_id}, "
        f"config_hash {run.config_hash}), {how} from `{artifact.path}`; sha256 {artifacts.sha256(target)}.", "",
        f"Where: measured {when} on {machine or 'an unrecorded machine'} "
        f"({env.get('cpu_count', '?')} cores; qsweep commit {env.get('git_commit') or 'unknown'}), "
        f"recorded in {store.uri}.", "",
        f"Figures ({run.tags.get(TAG_MAX_NEW_TOKENS)} new tokens, batch {run.tags.get(TAG_BATCH_SIZE)}):", "", *figures, "",
        "How to run it:", "", *handover.how_to_run(_measured(store, run), target, tokenizer), "",
        f"Measure it again: `python -m qsweep reproduce {run.config_hash}` (with the store above as --tracking-uri).",
        ""])


def register(store: tracking.Store, name: str, run: RunRecord, constraints: str, objective: str,
             sweep: str) -> str:
    """The pick's artifact as a new version of the registered model `name` (its source: the folder the artifact
    lies in, not a copy), tagged with what decided it; alias `recommended` moved to it. Returns one line."""
    artifact = artifacts.measured(run)
    folder = artifact.path.parent if artifact.path.is_file() else artifact.path  # a source is a folder
    tags: Dict[str, str] = {
        TAG_HASH: run.config_hash, TAG_PICKED_FROM_RUN: run.run_id, TAG_PICKED_FROM: sweep, TAG_OBJECTIVE: objective,
        TAG_CONSTRAINTS: constraints, TAG_RUNTIME: run.tags.get(TAG_RUNTIME, ""),
        TAG_PRECISION: run.tags.get(TAG_PRECISION, ""), TAG_BACKEND: run.tags.get(TAG_BACKEND, ""),
        TAG_DEVICE: run.tags.get(TAG_DEVICE, ""), TAG_ARTIFACT: str(artifact.path),
        TAG_ARTIFACT_SHA256: artifacts.sha256(artifact.path),
        **{metric: f"{run.metrics[metric]:.6g}" for metric in FIGURES if metric in run.metrics}}
    version, new = tracking.register_artifact(
        store, name, folder, run.run_id, tags, f"{run.tags.get(TAG_SETTING)} ({run.tags.get(TAG_RUNTIME)}), "
        f"picked by qsweep recommend ({objective}; {constraints}) from {sweep}", ALIAS_RECOMMENDED)
    return (f"registered model {name} version {version} ({'new' if new else 'already registered'}; its source is "
            f"{folder}, not copied), alias {ALIAS_RECOMMENDED} -> {version}: fetch it with MLFLOW_TRACKING_URI="
            f"{store.uri} and `mlflow.artifacts.download_artifacts('models:/{name}@{ALIAS_RECOMMENDED}')`")
