"""`qsweep reproduce HASH`: measure a recorded run again, from the config recorded with it, and compare.

The config comes from the run's config.yaml artifact, never from today's conf/ files. Only local
settings are replaced (tracking: where to record; paths: today's cache folder); what is measured is
exactly what was recorded, and today's code must give it the same config_hash, or nothing runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from omegaconf import OmegaConf

from qsweep import console, tables, tracking
from qsweep.config import (HASHED_SECTIONS, PROJECT_ROOT, ConfigError, RunConfig, TrackingConfig, register_schemas,
                           validate)
from qsweep.confighash import config_hash, flatten, hashed_fields
from qsweep.tracking import TAG_REPRODUCES


class ReproduceError(RuntimeError):
    """Why a run cannot be reproduced, in one line that names the fix."""


@dataclass
class Reproduction:
    original: tracking.RunRecord
    new: tracking.RunRecord
    report: str  # the side-by-side comparison


def local_paths() -> dict:
    """Today's local paths (the cache folder), as conf/config.yaml sets them on this machine."""
    from hydra import compose, initialize_config_dir

    register_schemas()  # conf/config.yaml's defaults name the schema
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config").paths, resolve=True)


def find_original(store: tracking.Store, prefix: str, run_id: Optional[str] = None) -> Tuple[tracking.RunRecord, List[tracking.RunRecord]]:
    """The run to reproduce and all runs of its hash. Unless run_id picks one of them, the newest
    FINISHED original (not itself a reproduction) wins, then any FINISHED run, then the newest."""
    prefix = prefix.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,12}", prefix):
        raise ReproduceError(f"{prefix!r} is not a config hash: give the 12 hex characters of the run's "
                             "config_hash tag (a unique prefix is enough)")
    runs = tracking.find_by_hash(store, prefix)
    hashes = sorted({run.config_hash for run in runs})
    if not hashes:
        raise ReproduceError(f"no run with a config_hash starting with {prefix} in {store.uri}: check the hash "
                             "in the MLflow UI or the sweep summary, or give the right store with --tracking-uri")
    if len(hashes) > 1:
        names = {run.config_hash: run.name for run in runs}
        raise ReproduceError(f"config_hash prefix {prefix} is ambiguous, it matches {len(hashes)} hashes: "
                             + ", ".join(f"{h} ({names[h]})" for h in hashes) + "; give more characters")
    if run_id is not None:
        picked = [run for run in runs if run.run_id == run_id]
        if not picked:
            raise ReproduceError(f"run {run_id} is not one of the {len(runs)} runs with config_hash {hashes[0]}: "
                                 f"use one of {', '.join(run.run_id for run in runs)}")
        return picked[0], runs
    ranked = sorted(runs, key=lambda r: (r.status != "FINISHED", TAG_REPRODUCES in r.tags, -r.start_time))
    return ranked[0], runs


def recorded_config(store: tracking.Store, original: tracking.RunRecord, uri: str, experiment: str,
                    allow_new_hash: bool = False) -> RunConfig:
    """The run's config.yaml validated by today's schema, with today's local settings (where to record,
    the cache folder). Refuses a config that today's code would hash differently, unless allowed."""
    run_id = original.run_id
    text = tracking.read_artifact(store, run_id, tracking.CONFIG_FILE)
    if text is None:
        raise ReproduceError(f"run {run_id} has no config.yaml artifact, so its configuration is unknown and it "
                             "cannot be reproduced; pick another run of this hash with --run-id")
    recorded = OmegaConf.create(text)
    recorded.tracking = {"uri": uri, "experiment": experiment}
    recorded.paths = local_paths()
    recorded.sweep = {"skip_completed": False}
    try:
        cfg = validate(recorded)
    except ConfigError as err:
        commit = (tracking.read_json(store, run_id, tracking.ENVIRONMENT_FILE) or {}).get("git_commit")
        raise ReproduceError(f"the config recorded with run {run_id} no longer validates: {err}; reproduce it "
                             "with the code it was recorded with"
                             + (f" (git checkout {commit})" if commit else "")) from None
    expected, now = original.config_hash, config_hash(cfg)
    if now != expected:
        why = (f"today's code hashes the config recorded with run {run_id} as {now}, not {expected} "
               f"({_hash_change(OmegaConf.to_container(recorded), cfg)})")
        if not allow_new_hash:
            raise ReproduceError(f"{why}: a run now would not be the same measurement; pass --allow-new-hash "
                                 "to run it anyway under the new hash")
        console.say(f"WARNING: {why}; running it anyway (--allow-new-hash): the new run has config_hash {now}")
    return cfg


def _hash_change(recorded: dict, cfg: RunConfig) -> str:
    """What makes today's hash differ: fields added to the schema, or values read differently."""
    before = flatten({s: recorded.get(s) or {} for s in HASHED_SECTIONS})
    after = flatten(hashed_fields(cfg))
    changes = [f"{key} is new (= {after[key]})" if key not in before else f"{key}: {before[key]} -> {after[key]}"
               for key in sorted(after) if before.get(key) != after[key]]
    changes += [f"{key} is gone" for key in sorted(set(before) - set(after))]
    return ", ".join(changes) if changes else "same fields and values: the hash function itself changed"


def reproduce(prefix: str, uri: Optional[str] = None, experiment: Optional[str] = None,
              run_id: Optional[str] = None, allow_new_hash: bool = False) -> Reproduction:
    """Measure the run again as a new run tagged reproduces=<original run id>, and compare the two."""
    from qsweep.environment import DeviceUnavailable, require_device  # deferred: imports torch
    from qsweep.job import run_job

    uri = uri or tracking.store_uri(TrackingConfig())
    store = tracking.open_for_reading(uri)
    original, runs = find_original(store, prefix, run_id)
    experiment = experiment or tracking.experiment_name(store, original.experiment_id)
    cfg = recorded_config(store, original, uri, experiment, allow_new_hash)
    try:
        require_device(cfg.device.name)
    except DeviceUnavailable:
        raise ReproduceError(f"run {original.run_id} was recorded on {cfg.device.name}; this machine has no CUDA: "
                             "reproduce it on a machine with a GPU") from None
    console.say(f"reproducing run {original.run_id} ({original.name}, config_hash {original.config_hash}, "
                f"{original.status})" + (f"; {len(runs)} runs have this hash, --run-id picks another"
                                         if len(runs) > 1 else ""))
    os.environ.pop(tracking.PARENT_RUN_ENV, None)  # a reproduction is a run of its own, not a sweep's child
    new = run_job(cfg, tags={TAG_REPRODUCES: original.run_id})
    console.say(f"new run {new.run_id} ({new.status}) in {uri}, experiment {experiment}, "
                f"tagged {TAG_REPRODUCES}={original.run_id}")
    return Reproduction(original, new, compare(store, original, new))


def compare(store: tracking.Store, original: tracking.RunRecord, new: tracking.RunRecord) -> str:
    """Side by side: every metric with its ratio, the generated texts, the checkpoint's weights (local
    folders), the environment differences."""
    a, b = original.metrics, new.metrics
    rows = [[name, _number(a.get(name)), _number(b.get(name)),
             f"{b[name] / a[name]:.3f}" if a.get(name) and name in b else "-"] for name in sorted(set(a) | set(b))]
    parts = [tables.markdown_table(["metric", "original", "reproduced", "reproduced / original"], rows)
             if rows else "metrics: neither run has any"]
    if new.error:
        parts.append(f"the reproduction FAILED: {new.error}")
    parts.append(compare_texts(tracking.read_json(store, original.run_id, tracking.GENERATIONS_FILE),
                               tracking.read_json(store, new.run_id, tracking.GENERATIONS_FILE)))
    weights = compare_weights(original, new)
    if weights:
        parts.append(weights)
    parts.append(compare_environments(tracking.read_json(store, original.run_id, tracking.ENVIRONMENT_FILE),
                                      tracking.read_json(store, new.run_id, tracking.ENVIRONMENT_FILE)))
    return "\n\n".join(parts)


def compare_weights(original: tracking.RunRecord, new: tracking.RunRecord) -> Optional[str]:
    """For a local checkpoint folder or GGUF file: were the same weights measured? (its path may have been
    rewritten)"""
    before, after = original.tags.get(tracking.TAG_WEIGHTS), new.tags.get(tracking.TAG_WEIGHTS)
    if before is None and after is None:
        return None
    if before == after:
        return f"checkpoint weights: IDENTICAL ({tracking.TAG_WEIGHTS} {after})"
    if before is None or after is None:
        return (f"checkpoint weights: cannot compare ({tracking.TAG_WEIGHTS} {before or 'not recorded'} -> "
                f"{after or 'not recorded'}): one run was recorded without it")
    return (f"checkpoint weights: DIFFERENT ({tracking.TAG_WEIGHTS} {before} -> {after}): the "
            "checkpoint holds other weights than when the original was measured")


def compare_texts(before: Optional[list], after: Optional[list]) -> str:
    if before is None or after is None:
        return (f"generated texts: cannot compare, the {'original' if before is None else 'new'} run has no "
                "generations.json")
    if [t["prompt"] for t in before] != [t["prompt"] for t in after]:
        return "generated texts: NOT comparable, the prompts differ"
    differ = []
    for i, (x, y) in enumerate(zip(before, after)):
        if x["output_ids"] != y["output_ids"] or x["output"] != y["output"]:
            at = next((k for k, (p, q) in enumerate(zip(x["output_ids"], y["output_ids"])) if p != q),
                      min(len(x["output_ids"]), len(y["output_ids"])))
            differ.append(f"prompt {i + 1} ({x['prompt'][:40]!r}) from new token {at + 1}")
    if not differ:
        return f"generated texts: IDENTICAL for all {len(before)} prompts (same token ids)"
    return f"generated texts: DIFFERENT for {len(differ)} of {len(before)} prompts: " + "; ".join(differ)


def compare_environments(before: Optional[dict], after: Optional[dict]) -> str:
    if before is None or after is None:
        return (f"environment: cannot compare, the {'original' if before is None else 'new'} run has no "
                "environment.json")
    x, y = flatten(before), flatten(after)
    rows = [[key, x.get(key, "-"), y.get(key, "-")] for key in sorted(set(x) | set(y)) if x.get(key) != y.get(key)]
    if not rows:
        return "environment: identical (package versions, Python, CPU, GPU, git commit)"
    return "environment differences:\n\n" + tables.markdown_table(["field", "original", "reproduced"], rows)


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"
