"""Real multiruns in a subprocess on tiny-gpt2: parent and child runs, metrics, tags, artifacts, failures."""

import json

import pytest

from conftest import compose_run
from qsweep.confighash import config_hash

SPEED_METRICS = {"load_time_s", "ttft_s", "latency_s", "latency_p90_s", "tokens_per_s", "decode_tokens_per_s",
                 "peak_rss_gb", "model_footprint_gb"}
PHASES = {"job_wall_s", "phase_worker_start_s", "phase_imports_s", "phase_prepare_s", "phase_warmup_s",
          "phase_generation_s", "phase_environment_s", "phase_recording_s", "fixed_cost_s"}
TAGS = {"config_hash", "model", "precision", "device"}


def children_of(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.mark.slow
def test_tiny_multirun_over_every_cpu_precision(sweep):
    result = sweep.run("-m", "model=tiny-gpt2", "device=cpu", "precision=fp32,bf16,int8,int4",
                       "generation.max_new_tokens=16", "generation.repeats=2", "runner.reuse_worker=always")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sweep.runs()
    parents = [r for r in runs if r.data.tags.get("qsweep.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = children_of(runs, parents[0])
    assert sorted(r.info.run_name for r in children) == [
        f"tiny-gpt2-{p}-cpu-16" for p in ("bf16", "fp32", "int4", "int8")]
    client = sweep.client()
    for run in children:
        precision = run.data.tags["precision"]
        assert run.info.status == "FINISHED"
        assert SPEED_METRICS <= set(run.data.metrics), run.data.metrics
        assert "peak_vram_gb" not in run.data.metrics  # CPU run: no GPU figures invented
        assert TAGS <= set(run.data.tags) and "error" not in run.data.tags
        expected_hash = config_hash(compose_run("model=tiny-gpt2", "device=cpu", f"precision={precision}",
                                                "generation.max_new_tokens=16", "generation.repeats=2"))
        assert run.data.tags["config_hash"] == expected_hash
        m = run.data.metrics
        assert m["new_tokens"] == 16 and m["timed_samples"] == 2 * 4  # repeats x prompts, fixed length
        assert 0 < m["ttft_s"] < m["latency_s"] <= m["latency_p90_s"]
        assert m["tokens_per_s"] == pytest.approx(16 / m["latency_s"])
        # where the job's time went: the parts are inside its wall time, the fixed cost is the rest
        assert PHASES <= set(m) and all(m[p] >= 0 for p in PHASES - {"fixed_cost_s"})
        assert m["fixed_cost_s"] == pytest.approx(
            m["job_wall_s"] - m["load_time_s"] - m["phase_warmup_s"] - m["phase_generation_s"], abs=1e-6)
        assert m["phase_generation_s"] >= m["timed_samples"] * m["ttft_s"] * 0.5
        assert sum(m[p] for p in PHASES - {"job_wall_s", "fixed_cost_s"}) + m["load_time_s"] <= m["job_wall_s"]
        assert run.data.params["precision.name"] == precision and run.data.params["generation.max_new_tokens"] == "16"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "environment.json", "generations.json", "precision_check.json"} <= artifacts
        check = json.loads(open(client.download_artifacts(run.info.run_id, "precision_check.json")).read())
        assert (check["linear_8bit"] > 0) == (precision == "int8")
        assert (check["linear_4bit"] > 0) == (precision == "int4")
        if precision in ("fp32", "bf16"):
            assert set(check["weight_dtypes"]) == {"float32" if precision == "fp32" else "bfloat16"}
        texts = json.loads(open(client.download_artifacts(run.info.run_id, "generations.json")).read())
        assert len(texts) == 4 and all(len(t["output_ids"]) == 16 for t in texts)
    # the footprint shrinks with the precision
    footprint = {r.data.tags["precision"]: r.data.metrics["model_footprint_gb"] for r in children}
    assert footprint["int4"] < footprint["int8"] < footprint["fp32"] and footprint["bf16"] < footprint["fp32"]
    assert "4 of 4 jobs finished, 0 failed" in result.stdout
    assert "qsweep: timed generation: " in result.stdout and "median fixed cost per job" in result.stdout
    # one warm worker measured them all (runner.reuse_worker=always): only the first job paid for starting it
    imports = [r.data.metrics["phase_imports_s"] for r in sorted(children, key=lambda r: r.info.start_time)]
    assert imports[0] > 0 and imports[1:] == [0.0] * 3, imports
    # progress: one line per job as it starts, saying which of how many and what it will do
    assert "qsweep: job 1/4: tiny-gpt2-fp32-cpu-16: load, 1 warm-up + 4 prompts x 2 timed repeats" in result.stdout
    assert "qsweep: job 4/4: tiny-gpt2-int4-cpu-16:" in result.stdout


@pytest.mark.slow
def test_an_impossible_job_fails_alone_and_the_sweep_exits_nonzero(sweep):
    result = sweep.run("-m", "model=tiny-gpt2", "device=cpu,cuda", "generation.max_new_tokens=4",
                       "generation.repeats=1", "generation.warmup=0")
    assert result.returncode != 0
    runs = sweep.runs()
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_device = {r.data.params.get("device.name"): r for r in runs if r.data.tags.get("qsweep.kind") == "job"}
    assert by_device["cpu"].info.status == "FINISHED"
    failed = by_device["cuda"]
    assert failed.info.status == "FAILED"
    assert "this machine has no CUDA" in failed.data.tags["error"] and "device=cpu" in failed.data.tags["error"]
    assert "traceback.txt" in {a.path for a in sweep.client().list_artifacts(failed.info.run_id)}
    parent = [r for r in runs if r.data.tags.get("qsweep.kind") == "sweep"][0]
    assert parent.info.status == "FAILED"
    assert "1 of 2 jobs finished, 1 failed" in result.stdout


@pytest.mark.slow
def test_a_single_run_is_standalone_and_prints_its_result(sweep):
    result = sweep.run("model=tiny-gpt2", "device=cpu", "precision=bf16", "generation.max_new_tokens=4")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sweep.runs()
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert "| CPU BF16 " in result.stdout and "1 of 1 jobs finished, 0 failed." in result.stdout
    # and where to see it: the store is not the project's, so the UI command names it
    assert (f"qsweep: the run in the MLflow UI (mlflow ui --backend-store-uri {sweep.uri} --host 127.0.0.1 "
            f"--port 5000): http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            in result.stdout)
