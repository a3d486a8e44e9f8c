"""`qsweep reproduce HASH`: a recorded run measured again from the config recorded with it, and every way
it can refuse (one line on stderr, a non-zero exit, no run created)."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_run
from qsweep import reproduce, tracking
from qsweep.__main__ import main
from qsweep.config import TrackingConfig, validate
from qsweep.confighash import config_hash

TINY = ("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=6", "generation.warmup=0",
        "generation.repeats=1")


class Store:
    """A store with hand-made recorded runs (tags and artifacts as qsweep writes them), for the refusals."""

    def __init__(self, tmp_path: Path):
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.store = tracking.open_store(TrackingConfig(uri=self.uri))

    def record(self, config_yaml, hash_tag: str, status: str = "FINISHED", name: str = "tiny") -> str:
        run = self.store.client.create_run(self.store.experiment_id, run_name=name,
                                           tags={"config_hash": hash_tag, "qsweep.kind": "job"})
        if config_yaml is not None:
            self.store.client.log_text(run.info.run_id, config_yaml, "config.yaml")
        self.store.client.log_dict(run.info.run_id, {"git_commit": "0123abc"}, "environment.json")
        self.store.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def run_count(self) -> int:
        return len(self.store.client.search_runs([self.store.experiment_id]))


def tiny_config(*overrides: str):
    cfg = compose_run(*TINY, *overrides)
    return OmegaConf.to_yaml(OmegaConf.structured(cfg)), config_hash(cfg)


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def refusal(capsys, *args: str) -> str:
    """Run the CLI expecting a refusal: exit status 1 and exactly one line on stderr, which is returned."""
    assert main(["reproduce", *args]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsweep reproduce: error: "), err
    return lines[0]


def test_unknown_hash(store, capsys):
    store.record(*tiny_config())
    message = refusal(capsys, "fedcba987654", "--tracking-uri", store.uri)
    assert "no run with a config_hash starting with fedcba987654" in message and "--tracking-uri" in message
    assert store.run_count() == 1


def test_not_a_hash(store, capsys):
    assert "is not a config hash" in refusal(capsys, "model=gpt2", "--tracking-uri", store.uri)


def test_ambiguous_prefix_lists_the_candidates(store, capsys):
    text, _ = tiny_config()
    store.record(text, "abc123000000", name="first")
    store.record(text, "abc456000000", name="second")
    store.record(text, "abc456000000", name="second")  # two runs of one hash are one candidate
    message = refusal(capsys, "abc", "--tracking-uri", store.uri)
    assert "ambiguous" in message and "matches 2 hashes" in message
    assert "abc123000000 (first)" in message and "abc456000000 (second)" in message
    assert "give more characters" in message
    assert store.run_count() == 3


def test_a_store_that_does_not_exist_is_not_created(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlflow.db"
    message = refusal(capsys, "abc", "--tracking-uri", f"sqlite:///{missing}")
    assert "no MLflow store at" in message and "--tracking-uri" in message
    assert not missing.exists()


def test_a_store_that_cannot_be_opened(tmp_path, capsys):
    broken = tmp_path / "mlflow.db"
    broken.write_text("not a database " * 100)
    message = refusal(capsys, "abc", "--tracking-uri", f"sqlite:///{broken}")
    assert "cannot open the MLflow store" in message and "not a database" in message


def test_an_unreachable_server_fails_in_seconds(capsys):
    start = time.monotonic()
    message = refusal(capsys, "abc", "--tracking-uri", "http://127.0.0.1:9")
    assert "no MLflow server answers at http://127.0.0.1:9" in message
    assert time.monotonic() - start < 30  # not MLflow's minutes of retries


@pytest.mark.parametrize("edit, field", [
    (lambda c: c.generation.__setitem__("max_new_tokenz", 6), "max_new_tokenz"),  # a field since renamed
    (lambda c: c.precision.__setitem__("dtype", "float8"), "precision.dtype"),  # a value no longer allowed
    (lambda c: c.generation.__setitem__("repeats", "many"), "repeats"),  # a type that no longer fits
])
def test_a_recorded_config_that_no_longer_validates_names_the_field(store, capsys, edit, field):
    text, good_hash = tiny_config()
    recorded = OmegaConf.create(text)
    edit(recorded)
    store.record(OmegaConf.to_yaml(recorded), good_hash)
    message = refusal(capsys, good_hash[:5], "--tracking-uri", store.uri)
    assert "no longer validates" in message and field in message
    assert "git checkout 0123abc" in message  # the fix: the code it was recorded with
    assert store.run_count() == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA run is reproducible here")
def test_a_cuda_run_on_a_machine_without_cuda(store, capsys):
    text, _ = tiny_config()
    recorded = OmegaConf.create(text)
    recorded.device.name = "cuda"
    cuda_hash = config_hash(validate(recorded))  # it validates: a GPU is not part of the config's values
    store.record(OmegaConf.to_yaml(recorded), cuda_hash)
    message = refusal(capsys, cuda_hash[:5], "--tracking-uri", store.uri)
    assert "was recorded on cuda; this machine has no CUDA" in message
    assert "no longer validates" not in message and "git checkout" not in message  # not the config's fault
    assert store.run_count() == 1


def old_schema_run(store):
    """A run recorded before ModelConfig had `seed`: its yaml lacks the field, its hash was taken without it."""
    text, _ = tiny_config()
    recorded = OmegaConf.to_container(OmegaConf.create(text))
    del recorded["model"]["seed"]
    canonical = json.dumps({s: recorded[s] for s in ("model", "precision", "device", "generation")},
                           sort_keys=True, separators=(",", ":"))
    old_hash = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return store.record(OmegaConf.to_yaml(recorded), old_hash), old_hash


def test_a_config_that_today_hashes_differently_is_refused_and_says_why(store, capsys):
    _, old_hash = old_schema_run(store)
    message = refusal(capsys, old_hash, "--tracking-uri", store.uri)
    assert f"not {old_hash}" in message and "model.seed is new (= 0)" in message
    assert "--allow-new-hash" in message
    assert store.run_count() == 1


def test_allow_new_hash_runs_it_under_the_new_hash(store, capsys):
    original_id, old_hash = old_schema_run(store)
    assert main(["reproduce", old_hash, "--tracking-uri", store.uri, "--allow-new-hash"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and f"not {old_hash}" in out
    (new,) = [r for r in store.store.client.search_runs([store.store.experiment_id])
              if r.info.run_id != original_id]
    assert new.info.status == "FINISHED" and new.data.tags["reproduces"] == original_id
    assert new.data.tags["config_hash"] == config_hash(compose_run(*TINY)) != old_hash


def test_a_run_without_its_config_cannot_be_reproduced(store, capsys):
    store.record(None, "00aa00aa00aa")
    assert "has no config.yaml" in refusal(capsys, "00aa", "--tracking-uri", store.uri)


def test_the_newest_finished_original_is_chosen_and_run_id_picks_another(store, capsys):
    text, good_hash = tiny_config()
    older = store.record(text, good_hash)
    newer = store.record(text, good_hash)
    store.record(text, good_hash, status="FAILED")
    from qsweep.reproduce import find_original

    assert find_original(store.store, good_hash[:4])[0].run_id == newer
    assert find_original(store.store, good_hash[:4], older)[0].run_id == older
    assert "is not one of the 3 runs" in refusal(capsys, good_hash, "--tracking-uri", store.uri,
                                                 "--run-id", "0" * 32)


@pytest.mark.slow
def test_reproduce_a_tiny_run_end_to_end_through_the_cli(sweep):
    result = sweep.run(*TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    (original,) = sweep.runs()
    the_hash = original.data.tags["config_hash"]
    command = [sys.executable, "-m", "qsweep", "reproduce", the_hash[:6]]  # a prefix is enough
    out = subprocess.run(command, env=sweep._env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sweep.runs()
    (new,) = [r for r in runs if r.info.run_id != original.info.run_id]
    assert new.info.status == "FINISHED" and new.data.tags["reproduces"] == original.info.run_id
    assert new.data.tags["config_hash"] == the_hash and "mlflow.parentRunId" not in new.data.tags
    assert new.info.experiment_id == original.info.experiment_id
    client = sweep.client()

    def artifact(run, path):
        return Path(client.download_artifacts(run.info.run_id, path)).read_text()

    def measured(run):  # the recorded config, less the local settings (where to record, the cache folder)
        config = OmegaConf.to_container(OmegaConf.create(artifact(run, "config.yaml")))
        return {k: v for k, v in config.items() if k not in ("tracking", "paths")}

    assert measured(new) == measured(original)
    assert ([t["output_ids"] for t in json.loads(artifact(new, "generations.json"))] ==
            [t["output_ids"] for t in json.loads(artifact(original, "generations.json"))])
    # the side-by-side table: every metric with both values and their ratio
    for metric in ("tokens_per_s", "latency_s", "model_footprint_gb", "peak_rss_gb"):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.stdout.splitlines()
                if line.startswith("|")]
        (cells,) = [row for row in rows if row[0] == metric]
        assert float(cells[1]) == pytest.approx(original.data.metrics[metric], rel=1e-3)
        assert float(cells[2]) == pytest.approx(new.data.metrics[metric], rel=1e-3)
        assert float(cells[3]) == pytest.approx(new.data.metrics[metric] / original.data.metrics[metric], abs=1e-3)
    assert "generated texts: IDENTICAL for all 4 prompts" in out.stdout
    assert "environment: identical" in out.stdout
    # the installed console command is the same entry point
    console = Path(sys.executable).parent / "qsweep"
    refused = subprocess.run([str(console), "reproduce", "ffffffffffff"], env=sweep._env(), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"qsweep reproduce: error: no run with a config_hash starting with ffffffffffff in {sweep.uri}: check the "
        "hash in the MLflow UI or the sweep summary, or give the right store with --tracking-uri"]


def test_the_comparison_says_whether_a_checkpoint_folder_held_the_same_weights():
    def run(weights):
        return tracking.RunRecord("id", "name", "FINISHED", {}, {} if weights is None else {tracking.TAG_WEIGHTS: weights})

    assert reproduce.compare_weights(run(None), run(None)) is None  # a hub id, bundled or random weights
    assert reproduce.compare_weights(run("ab12"), run("ab12")) == "checkpoint weights: IDENTICAL (weights_sha256 ab12)"
    assert reproduce.compare_weights(run("ab12"), run("cd34")).startswith(
        "checkpoint weights: DIFFERENT (weights_sha256 ab12 -> cd34)")
    assert reproduce.compare_weights(run(None), run("cd34")) == (  # recorded before GGUF files had the tag
        "checkpoint weights: cannot compare (weights_sha256 not recorded -> cd34): one run was recorded without it")
