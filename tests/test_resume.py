"""sweep.skip_completed=true resumes a sweep: jobs whose config_hash already has a FINISHED run are skipped
(no run created; the summary shows the earlier run's figures and lists it as SKIPPED); without it every job is measured again."""

import shutil
import signal
import time
from collections import Counter

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import printed_report_args
from qsweep import sources, tracking
from qsweep.config import TrackingConfig

# three jobs, each a few seconds (a fresh worker process per job)
GRID = ["-m", "model=tiny-gpt2", "device=cpu", "generation.warmup=0", "generation.repeats=2",
        "generation.max_new_tokens=8,9,10"]


def jobs(sweep):
    return [r for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"]


def finished_per_hash(sweep):
    return Counter(r.data.tags["config_hash"] for r in jobs(sweep) if r.info.status == "FINISHED")


@pytest.mark.slow
def test_a_sweep_killed_midway_resumes_with_only_the_missing_jobs(sweep):
    tracking.open_store(TrackingConfig(uri=sweep.uri))  # create the store once, before two processes use it
    process = sweep.start(*GRID)
    deadline = time.monotonic() + 300
    while not finished_per_hash(sweep) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # cut short after its first job
    process.communicate(timeout=120)
    assert process.returncode != 0
    before = {r.info.run_id: r for r in jobs(sweep)}
    done = finished_per_hash(sweep)
    assert len(done) == 1, f"the sweep was not cut short midway: {done}"
    assert not [r for r in before.values() if r.info.status == "RUNNING"]  # the cut job ended KILLED

    # resumed by a parallel launcher: with joblib each job runs in another process, so the skip is recorded on
    # the sweep's run, not in memory
    resumed = sweep.run(*GRID, "sweep.skip_completed=true", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    new = [r for r in jobs(sweep) if r.info.run_id not in before]
    (skipped_hash,) = done
    # only the missing jobs were measured, and now every job has exactly one FINISHED run
    assert sorted(r.data.params["generation.max_new_tokens"] for r in new) == sorted(
        {"8", "9", "10"} - {next(r.data.params["generation.max_new_tokens"] for r in before.values()
                                 if r.data.tags["config_hash"] == skipped_hash)})
    assert all(r.info.status == "FINISHED" and r.data.tags["config_hash"] != skipped_hash for r in new)
    assert sorted(finished_per_hash(sweep).values()) == [1, 1, 1]
    # the summary counts the skipped job and points to the run it stands for
    (first_run,) = [r for r in before.values() if r.info.status == "FINISHED"]
    assert f"SKIPPED = run {first_run.info.run_id}" in resumed.stdout
    assert "2 of 3 jobs finished, 0 failed, 1 skipped" in resumed.stdout
    # and its figures are in the results table, a row like the others: the grid is whole
    rows = [line for line in resumed.stdout.splitlines() if line.startswith("| CPU FP32 ")]
    assert len(rows) == 3 and any(line.rstrip(" |").endswith(skipped_hash) for line in rows)
    assert "did not finish" not in resumed.stdout
    parent = sweep.client().get_run(new[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["skipped_jobs"] == "1"

    # once everything is done, a resumed sweep measures nothing
    again = sweep.run(*GRID, "sweep.skip_completed=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(jobs(sweep)) == len(before) + 2
    assert "0 of 3 jobs finished, 0 failed, 3 skipped" in again.stdout
    # the report command it prints reports the three earlier runs
    report = sweep.report(*printed_report_args(again.stdout), "--out", str(sweep.tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert "0 of 3 jobs finished, 0 failed, 3 skipped" in report.stdout
    assert sum(line.startswith("| CPU FP32 ") for line in report.stdout.splitlines()) == 3

    # one job alone (not a multirun) is skipped the same way; without skip_completed it is measured again
    single = [arg for arg in GRID if arg != "-m" and not arg.startswith("generation.max_new_tokens")]
    single.append("generation.max_new_tokens=8")
    (eight,) = [r for r in jobs(sweep) if r.info.status == "FINISHED"
                and r.data.params["generation.max_new_tokens"] == "8"]
    skipped = sweep.run(*single, "sweep.skip_completed=true")
    assert skipped.returncode == 0 and f"SKIPPED = run {eight.info.run_id}" in skipped.stdout
    assert len(jobs(sweep)) == len(before) + 2
    measured = sweep.run(*single)
    assert measured.returncode == 0, measured.stderr[-3000:]
    assert sorted(finished_per_hash(sweep).values()) == [1, 1, 2]  # the same config_hash, measured twice on purpose
    assert finished_per_hash(sweep)[eight.data.tags["config_hash"]] == 2


def save_tiny_gpt2(folder, seed: int) -> None:
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(folder)


@pytest.mark.slow
def test_a_checkpoint_folder_rewritten_in_place_is_measured_again(sweep, tmp_path):
    """The same path (so the same config_hash) with other weights, as after a new fine-tune: not skipped."""
    folder = tmp_path / "checkpoint"
    single = ["model=gpt2", f"model.name_or_path={folder}", "device=cpu", "generation.warmup=0",
              "generation.repeats=1", "generation.max_new_tokens=4", "sweep.skip_completed=true"]
    save_tiny_gpt2(folder, seed=0)
    assert sweep.run(*single).returncode == 0
    assert sweep.run(*single).returncode == 0  # skipped: the same weights
    (first,) = jobs(sweep)
    save_tiny_gpt2(folder, seed=1)
    again = sweep.run(*single)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds other weights now: measuring it again" in again.stdout
    runs = jobs(sweep)
    assert len(runs) == 2 and len(finished_per_hash(sweep)) == 1
    assert len({r.data.tags[tracking.TAG_WEIGHTS] for r in runs}) == 2


def test_weights_sha256_follows_the_weights_not_the_path(tmp_path):
    save_tiny_gpt2(tmp_path / "a", seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    save_tiny_gpt2(tmp_path / "b", seed=1)
    assert sources.weights_sha256(tmp_path / "a") == sources.weights_sha256(tmp_path / "copy")
    assert sources.weights_sha256(tmp_path / "a") != sources.weights_sha256(tmp_path / "b")
