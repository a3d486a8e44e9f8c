"""Reports: the T4 notebook's tables, CPU-vs-GPU comparison, charts; a report of a real tiny sweep checked
against its runs; and the MLflow UI on that store, opened in headless Chromium."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import ROOT, Sweep, fine_tune, free_port, make_tiny_gemma, printed_report_args
from qsweep import charts, cpu_vs_gpu, decide, emulation, recommend, report, report_rows, scaling
from qsweep.tables import count_line, failures_table
from qsweep.tracking import RunRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def job(device, precision, tokens, status="FINISHED", model="m", **metrics):
    name = f"{model}-{precision}-{device}-{tokens}"
    tags = {"model": model, "device": device, "precision": precision, "max_new_tokens": str(tokens),
            "config_hash": f"h{abs(hash(name)) % 10**8:08d}", "weights": "pretrained"}
    if status != "FINISHED":
        tags = {"error": "ConfigError: device=cuda but CUDA is not available here"}
    return RunRecord(f"id-{name}", name, status, metrics, tags)


def speed(latency, iqr=0.0, tokens=128, samples=8, **extra):
    return dict(latency_s=latency, latency_iqr_s=iqr, tokens_per_s=tokens / latency, ttft_s=latency / 10,
                ttft_iqr_s=iqr / 10, decode_tokens_per_s=(tokens - 1) / (latency * 0.9),
                decode_tokens_per_s_iqr=1.0, peak_rss_gb=1.5, load_time_s=2.0, model_footprint_gb=0.5,
                new_tokens=tokens, timed_samples=samples, **extra)


def tables(text):
    """Every Markdown table in text, as lists of {header: cell}."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = {"headers": cells, "rows": []}
            elif not all(set(c) <= set(":-") for c in cells):
                current["rows"].append(dict(zip(current["headers"], cells)))
        elif current is not None:
            found.append(current)
            current = None
    if current is not None:
        found.append(current)
    return found


def number(text):
    """'1.234 ± 0.010' -> (1.234, 0.010); '5.00' -> (5.0, None)."""
    parts = [float(p) for p in re.findall(r"-?\d+(?:\.\d+)?", text)]
    return parts[0], (parts[1] if len(parts) > 1 else None)


T4_JOBS = [job("cpu", "fp32", 256, **speed(8.754, iqr=0.2, tokens=256)),
             job("cuda", "int4", 128, **speed(0.797, tokens=128, peak_vram_gb=0.42)),
             job("cpu", "fp32", 128, **speed(7.244, iqr=0.1)),
             job("cuda", "fp16", 128, **speed(1.167, tokens=128, peak_vram_gb=0.17)),
             job("cuda", "fp16", 256, **speed(1.707, tokens=256, peak_vram_gb=0.18)),
             job("cuda", "int8", 128, status="FAILED")]


def test_the_table_has_the_seeds_columns_order_and_numbers():
    text = report.summary(T4_JOBS)
    (table, failures) = tables(text)
    assert table["headers"][:5] == ["Setting", "Max New Tokens", "Latency (s)", "Tokens/sec", "VRAM (GB)"]
    assert [(r["Setting"], r["Max New Tokens"]) for r in table["rows"]] == [
        ("CPU FP32", "128"), ("GPU FP16", "128"), ("GPU INT4", "128"), ("CPU FP32", "256"), ("GPU FP16", "256")]
    cpu128, fp16_128 = table["rows"][0], table["rows"][1]
    assert cpu128["Latency (s)"] == "7.244 ± 0.050"  # the spread is half the IQR
    assert cpu128["Tokens/sec"] == f"{128 / 7.244:.2f}" and cpu128["VRAM (GB)"] == "–"
    assert fp16_128["VRAM (GB)"] == "0.17" and fp16_128["Latency (s)"] == "1.167"  # no IQR: no ±
    assert failures["rows"] == [{"Run": "m-int8-cuda-128", "Status": "FAILED",
                                 "Error": "ConfigError: device=cuda but CUDA is not available here"}]
    assert text.endswith("5 of 6 jobs finished, 1 failed.")
    running = job("cpu", "int4", 8, status="RUNNING")
    assert count_line(T4_JOBS + [running]) == "5 of 7 jobs finished, 1 failed, 1 running."


def test_one_sample_has_no_spread():
    (table,) = tables(report.summary([job("cpu", "fp32", 16, **speed(2.0, iqr=0.5, samples=1))]))
    assert table["rows"][0]["Latency (s)"] == "2.000"


def test_quality_columns_appear_when_measured_and_degenerate_runs_are_flagged():
    jobs = [job("cpu", "fp32", 16, **speed(1.0), perplexity=12.5, kl_div_vs_fp32=0.0, degenerate_output=0.0),
            job("cpu", "fp16", 16, **speed(0.8), perplexity=9999.0, kl_div_vs_fp32=3.2, degenerate_output=1.0)]
    jobs[1].tags["degenerate_reason"] = "empty output"
    (table,) = tables(report.summary(jobs))
    assert {"Perplexity", "KL vs FP32", "Degenerate output"} <= set(table["headers"])
    assert "Top-1 agreement vs FP32" not in table["headers"]  # not measured: no empty column
    rows = {r["Setting"]: r for r in table["rows"]}
    assert rows["CPU FP32"]["Perplexity"] == "12.50" and rows["CPU FP32"]["Degenerate output"] == "no"
    assert rows["CPU FP16 ⚠"]["Degenerate output"] == "yes: empty output"
    assert "Perplexity" not in tables(report.summary(T4_JOBS))[0]["headers"]


def test_cpu_vs_gpu_compares_every_setting_of_a_model_measured_on_both():
    rows = report_rows.rows_by_model(T4_JOBS)["m"]
    samples = {r.job.run_id: f"out {r.setting}" for r in rows}
    (table,) = tables(cpu_vs_gpu.cpu_vs_gpu(rows, samples, {}))
    assert table["headers"] == ["Feature", "CPU FP32", "GPU FP16", "GPU INT4"]
    by_feature = {r["Feature"]: r for r in table["rows"]}
    assert by_feature["Quantization"]["GPU INT4"] == "Yes (4-bit)"
    assert by_feature["Inference time, 128 tokens (s)"]["GPU INT4"] == "0.797"
    assert by_feature["Inference time, 256 tokens (s)"]["GPU INT4"] == "not measured"
    assert by_feature["VRAM usage (GB)"]["CPU FP32"] == "–"
    speed_256 = by_feature["Tokens/sec, 256 tokens (x CPU FP32)"]
    assert speed_256["CPU FP32"] == f"{256 / 8.754:.2f} (1.00x)"
    assert speed_256["GPU FP16"] == f"{256 / 1.707:.2f} ({(256 / 1.707) / (256 / 8.754):.2f}x)"
    assert by_feature["Hardware"]["GPU INT4"] == "GPU"  # no environment.json given
    assert by_feature["Response output"]["GPU FP16"] == "out GPU FP16"
    cpu_only = report_rows.rows_by_model([j for j in T4_JOBS if j.tags.get("device") == "cpu"])["m"]
    assert cpu_vs_gpu.cpu_vs_gpu(cpu_only, {}, {}) is None


H200_HOST = {"cpu": "Intel(R) Xeon(R) Processor", "torch_threads": 16, "cuda_available": True, "cuda": "13.0",
             "gpu_name": "NVIDIA H200", "driver": "580.159.04", "packages": {"torch": "2.11.0"}}


def test_a_cpu_run_on_a_gpu_machine_names_the_cpu_and_the_header_names_each_device_once(monkeypatch):
    rows = report_rows.rows_by_model(T4_JOBS)["m"]
    hardware = {r.job.run_id: cpu_vs_gpu.hardware_text(H200_HOST, r.device) for r in rows}
    (table,) = tables(cpu_vs_gpu.cpu_vs_gpu(rows, {}, hardware))
    row = next(r for r in table["rows"] if r["Feature"] == "Hardware")
    assert row["CPU FP32"] == "CPU: Intel(R) Xeon(R) Processor (16 threads)"
    assert row["GPU FP16"] == "GPU: NVIDIA H200 (CUDA 13.0, driver 580.159.04)"
    monkeypatch.setattr(report.tracking, "read_json", lambda store, run_id, path: H200_HOST)
    header = report._environment(None, rows)
    assert header.count("NVIDIA H200") == 1 and header.count("Xeon") == 1, header
    assert header.startswith("CPU: Intel(R) Xeon(R) Processor (16 threads); GPU: NVIDIA H200")


def test_rows_that_share_a_label_but_not_a_configuration_are_told_apart():
    """Two sweeps' GPU FP16 at 128 tokens (other prompts and repeats) in one --experiment report."""
    grid = [job("cuda", "fp16", n, **speed(1.0, tokens=n)) for n in (128, 256)]
    eager = job("cuda", "fp16", 128, **speed(1.3))
    eager.tags["config_hash"] += "x"
    for run, prompts, repeats in ((grid[0], '["a", "b"]', "1"), (grid[1], '["a", "b"]', "1"), (eager, '["a"]', "2")):
        run.params.update({"generation.prompts": prompts, "generation.repeats": repeats,
                           "generation.max_new_tokens": run.tags["max_new_tokens"], "runner.timeout_s": repeats})
    cpu = job("cpu", "fp32", 128, **speed(2.0))
    (table, *_) = tables(report.summary([cpu, *grid, eager]))
    assert [(r["Setting"], r["Max New Tokens"]) for r in table["rows"]] == [
        ("CPU FP32", "128"), ("GPU FP16 (2 prompts, repeats=1)", "128"), ("GPU FP16 (1 prompt, repeats=2)", "128"),
        ("GPU FP16 (2 prompts, repeats=1)", "256")]  # runner.timeout_s is not what is measured: not named
    rows = report_rows.rows_by_model([cpu, *grid, eager])["m"]
    (comparison,) = tables(cpu_vs_gpu.cpu_vs_gpu(rows, {}, {}))  # one column per configuration
    assert comparison["headers"] == ["Feature", "CPU FP32", "GPU FP16 (2 prompts, repeats=1)",
                                     "GPU FP16 (1 prompt, repeats=2)"]
    same_params = [job("cpu", "fp32", 8, **speed(1.0)), job("cpu", "fp32", 8, **speed(2.0))]
    same_params[1].tags["config_hash"] = "other"
    labels = [r.setting for r in report_rows.rows_by_model(same_params)["m"]]
    assert sorted(labels) == sorted(f"CPU FP32 (config {j.config_hash})" for j in same_params)


def test_a_killed_job_says_what_stopped_it(tmp_path):
    """A sweep under `timeout` (the GPU kit's time limit) that is stopped: its job run ends KILLED and says so."""
    script = (f"from qsweep import signals, tracking\nfrom qsweep.config import TrackingConfig\n"
              f"signals.install()\nstore = tracking.open_store(TrackingConfig(uri='sqlite:///{tmp_path}/m.db'))\n"
              "with tracking.job_run(store, 'cut', {}):\n    print('ready', flush=True)\n"
              "    import time; time.sleep(60)\n")
    limit = subprocess.Popen(["timeout", "-k", "30", "120", sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert limit.stdout.readline().strip() == "ready"
    limit.send_signal(signal.SIGTERM)  # timeout passes it on, as when its time is up
    limit.communicate(timeout=60)
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    (run,) = client.search_runs([client.get_experiment_by_name("qsweep").experiment_id])
    assert run.info.status == "KILLED"
    reason = run.data.tags["error"]
    assert reason.startswith("stopped by the time limit: SIGTERM, from `timeout 120` (pid "), reason
    killed = RunRecord("id", "cut", "KILLED", {}, {"error": reason})
    old = RunRecord("id2", "older", "KILLED", {}, {})  # a run from before the reason was recorded
    (failures,) = tables(failures_table([killed, old]))
    assert failures["rows"][0]["Error"] == reason
    assert failures["rows"][1]["Error"].startswith("interrupted: Ctrl-C or SIGTERM")


def test_latest_per_config_keeps_the_newest_finished_run():
    old, new, failed = (job("cpu", "fp32", 8, latency_s=1.0), job("cpu", "fp32", 8, latency_s=2.0),
                        job("cpu", "fp32", 8, status="FAILED"))
    failed.tags["config_hash"] = old.tags["config_hash"]
    assert report_rows.latest_per_config([old, new, failed]) == [new]


def assert_png(path: Path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_charts_are_pngs_and_quality_against_speed_needs_a_quality_metric(tmp_path):
    rows = report_rows.rows_by_model(T4_JOBS)["m"]
    made = charts.model_charts("m", rows, tmp_path)
    assert [c.path.name for c in made] == ["m_tokens_per_s.png", "m_latency_s.png", "m_memory.png"]
    for chart in made:
        assert_png(chart.path)
    with_kl = [job("cpu", "fp32", 8, **speed(1.0), kl_div_vs_fp32=0.0),
               job("cpu", "int4", 8, **speed(2.0), kl_div_vs_fp32=0.4, degenerate_output=1.0)]
    made = charts.model_charts("q/model", report_rows.rows_by_model(with_kl)["m"], tmp_path)
    assert made[-1].path.name == "q_model_quality_vs_speed.png"
    assert_png(made[-1].path)


def test_charts_never_show_broken_output_as_a_plain_result(tmp_path):
    rows = report_rows.rows_by_model([job("cpu", "fp32", 8, **speed(1.0), kl_div_vs_fp32=0.0),
                                 job("cpu", "fp16", 8, **speed(0.3), kl_div_vs_fp32=float("nan"),
                                     degenerate_output=1.0)])["m"]
    assert charts._tick_labels(["CPU FP32", "CPU FP16"], rows) == ["CPU FP32", "CPU FP16\n(broken output)"]
    texts = []
    real_text = charts.plt.Axes.text
    with pytest.MonkeyPatch.context() as patch:  # what the quality chart writes on its axes
        patch.setattr(charts.plt.Axes, "text", lambda ax, *a, **k: texts.append(a[2]) or real_text(ax, *a, **k))
        made = charts.model_charts("m", rows, tmp_path)
    assert_png(made[-1].path)
    decode = rows[1].metrics["decode_tokens_per_s"]  # the chart's speed: decide's (decode tokens/s at batch 1)
    assert texts == [f"not shown, broken output: CPU FP16 ({decode:.3g} tok/s)"]  # NaN KL: no point, but named


def deciding_jobs(**extra):
    """One model at four settings: fp32, bf16 (fastest within KL 0.01), int8 (beaten by bf16 on all three),
    int4 (its speed ties bf16's, least memory, KL over 0.01); `extra`: more metrics for every run."""
    figures = {"fp32": (1.40, 0.0, 2.0), "bf16": (0.93, 0.004, 1.2), "int8": (2.80, 0.005, 1.5),
               "int4": (0.95, 0.02, 1.0)}  # latency (s), KL vs fp32, peak RSS (GB)
    jobs = []
    for precision, (latency, kl, rss) in figures.items():
        metrics = {**speed(latency, iqr=0.05), "kl_div_vs_fp32": kl, **extra}
        metrics.update(peak_rss_gb=rss, decode_tokens_per_s_iqr=0.1 * metrics["decode_tokens_per_s"])
        jobs.append(job("cpu", precision, 128, **metrics))
    return {j.tags["precision"]: j for j in jobs}


def test_the_report_lists_the_front_first_and_ends_with_the_recommendation(tmp_path, monkeypatch):
    monkeypatch.setattr(report.tracking, "read_json", lambda store, run_id, path: None)  # no artifacts
    jobs = deciding_jobs()
    store = type("Store", (), {"uri": f"sqlite:///{tmp_path}/m.db"})()
    text = report.write_report(store, list(jobs.values()), tmp_path, "test", log=False).read_text()
    assert text.index("## m") < text.index("### Settings worth deploying: m") < text.index(
        "### Every setting measured: m") < text.index("## Recommendation")
    front, main, *_ = tables(text)
    status = {r["Setting"]: r["Front"] for r in front["rows"]}
    assert list(status) == ["CPU BF16", "CPU INT4", "CPU FP32", "CPU INT8"]  # the front (fastest first), then the rest
    assert status["CPU BF16"] == status["CPU INT4"].replace("CPU BF16", "CPU INT4") == "front (speed ties CPU INT4)"
    assert status["CPU INT8"] == "beaten by CPU BF16: faster, lower KL, less memory"
    assert "J/token" not in main["headers"]  # no run measured energy
    recommendation = text[text.index("## Recommendation"):]
    assert f"KL vs fp32 <= {recommend.DEFAULT_MAX_KL:g}" in recommendation and "no memory cap" in recommendation
    assert re.search(r"pick: CPU BF16: .*config_hash " + jobs["bf16"].config_hash, recommendation)
    assert f"`python -m qsweep reproduce {jobs['bf16'].config_hash} --tracking-uri {store.uri}`" in recommendation
    assert "wins on memory" in text and "](m_quality_vs_speed.png)" in text
    assert_png(tmp_path / "m_quality_vs_speed.png")


def test_the_quality_chart_draws_the_front_through_decides_members(tmp_path):
    rows = report_rows.rows_by_model(list(deciding_jobs().values()))["m"]
    drawn = []
    real_plot = charts.plt.Axes.plot
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(charts.plt.Axes, "plot", lambda ax, xs, ys, **k: drawn.append((k["label"], xs, ys))
                      or real_plot(ax, xs, ys, **k))
        charts.model_charts("m", rows, tmp_path)
    members = decide.front_points(rows, "decode_tokens_per_s", "kl_div_vs_fp32")
    assert len(members) == 3 and drawn == [("front", [x for x, _ in members], [y for _, y in members])]


def test_energy_gets_a_column_and_a_chart_only_when_measured(tmp_path):
    jobs = deciding_jobs(energy_per_output_token_j=0.25)
    del jobs["int8"].metrics["energy_per_output_token_j"]
    (main,) = tables(report.summary(list(jobs.values())))
    cells = {r["Setting"]: r["J/token"] for r in main["rows"]}
    assert cells == {"CPU FP32": "0.2500", "CPU BF16": "0.2500", "CPU INT8": "–", "CPU INT4": "0.2500"}
    assert main["headers"].index("J/token") < main["headers"].index("KL vs FP32")
    rows = report_rows.rows_by_model(list(jobs.values()))["m"]
    names = [c.path.name for c in charts.model_charts("m", rows, tmp_path)]
    assert names[-2:] == ["m_quality_vs_speed.png", "m_energy_per_output_token_j_vs_quality.png"]
    assert_png(tmp_path / names[-1])
    no_kl = [job("cpu", "fp32", 8, **speed(1.0), energy_per_output_token_j=0.3)]  # random weights: no quality
    assert [c.path.name for c in charts.model_charts("m", report_rows.rows_by_model(no_kl)["m"], tmp_path)] == [
        "m_tokens_per_s.png", "m_latency_s.png", "m_memory.png"]


def serving_job(precision, batch, throughput, relative_iqr):
    quantization = "none" if precision == "bf16" else precision
    return RunRecord(f"{precision}-{batch}", f"m-{precision}-b{batch}", "FINISHED",
                     {"throughput_tokens_per_s": throughput, "latency_s": 1.0, "latency_iqr_s": relative_iqr,
                      "timed_samples": 8},
                     {"model": "m", "device": "cpu", "precision": precision, "max_new_tokens": "64",
                      "batch_size": str(batch)}, {"precision.quantization": quantization})


def test_where_quantization_stops_paying_calls_overlapping_speeds_a_tie():
    def said(relative_iqr):
        jobs = [serving_job("bf16", 1, 20, relative_iqr), serving_job("bf16", 4, 70, relative_iqr),
                serving_job("int8", 1, 21, relative_iqr), serving_job("int8", 4, 50, relative_iqr)]
        return scaling.stops_paying(report_rows.rows_by_model(jobs)["m"])

    assert said(0.2) == ["CPU INT8: slower than the best unquantized setting from batch 4 on; ties with the best "
                         "unquantized setting at batch 1 (within each other's spread)"]  # 18-22 and 18.9-23.1
    assert said(0.0) == ["CPU INT8: slower than the best unquantized setting from batch 4 on"]  # no spread: 21 > 20


def test_the_sweep_knows_how_many_jobs_it_will_run():
    from conftest import compose_cfg
    from qsweep.callbacks import _count_jobs

    # a preset's sweeper params and the command line's sweeps multiply; the callback sees both
    cfg = compose_cfg("experiment=cpu-precisions", hydra_config=True)
    cfg.hydra.overrides.task = ["experiment=cpu-precisions", "generation.max_new_tokens=128,256"]
    assert _count_jobs(cfg) == 5 * 2
    cfg.hydra.overrides.task = ["precision=fp32,int8"]  # the command line overrides the preset's list
    assert _count_jobs(cfg) == 2


# --- a real tiny sweep ------------------------------------------------------------------------------------

TINY = ("-m", "model=tiny-gpt2", "setting=cpu-fp32,cpu-bf16,cuda-fp32", "generation.max_new_tokens=4,8",
        "generation.repeats=2")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    sweep = Sweep(tmp_path_factory.mktemp("report_sweep"))
    result = sweep.run(*TINY)
    assert result.returncode == 1, result.stderr[-3000:]  # the CUDA jobs fail here (no GPU), the others run
    return sweep


@pytest.mark.slow
def test_report_of_a_tiny_sweep_matches_its_runs(tiny_sweep):
    out = tiny_sweep.tmp_path / "report"
    result = tiny_sweep.report("--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "report.md").read_text()
    runs = tiny_sweep.runs()
    (parent,) = [r for r in runs if r.data.tags.get("qsweep.kind") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("qsweep.kind") == "job"]
    finished = [r for r in jobs if r.info.status == "FINISHED"]
    assert len(jobs) == 6 and len(finished) == 4

    front_4, front_8, main, *_ = tables(text)  # per length: the settings worth deploying, then every setting
    # bf16 on a CPU without its instructions (no AVX512-BF16 or AMX) is emulated, and the front says so
    emulated = emulation.emulated("cpu", "bf16", "transformers", emulation.cpu_flags())
    bf16 = "CPU BF16" + (" (emulated)" if emulated else "")
    for n, front in ((4, front_4), (8, front_8)):
        assert f"### Settings worth deploying: tiny-gpt2, {n} new tokens" in text
        assert {r["Setting"] for r in front["rows"]} == {"CPU FP32", bf16}
        assert any(r["Front"].startswith("front") for r in front["rows"])
    assert "J/token" not in main["headers"]  # no energy counter on this VM: the T4 notebook's columns alone
    assert text.rstrip().splitlines()[-1].startswith("  - ") and "## Recommendation" in text  # it ends with it
    rows = {(r["Setting"], int(r["Max New Tokens"])): r for r in main["rows"]}
    assert set(rows) == {(s, n) for s in ("CPU FP32", "CPU BF16") for n in (4, 8)}
    for run in finished:
        m, row = run.data.metrics, rows[(run.data.tags["setting"], int(run.data.tags["max_new_tokens"]))]
        assert row["config_hash"] == run.data.tags["config_hash"]
        for header, metric, spread, decimals in (("Latency (s)", "latency_s", "latency_iqr_s", 3),
                                                 ("TTFT (s)", "ttft_s", "ttft_iqr_s", 3),
                                                 ("Decode tokens/sec", "decode_tokens_per_s",
                                                  "decode_tokens_per_s_iqr", 2),
                                                 ("Tokens/sec", "tokens_per_s", None, 2),
                                                 ("RSS (GB)", "peak_rss_gb", None, 2)):
            median, half_iqr = number(row[header])
            assert median == pytest.approx(m[metric], abs=0.6 * 10**-decimals), (header, row)
            if spread and m[spread] > 0:
                assert half_iqr == pytest.approx(m[spread] / 2, abs=0.6 * 10**-decimals), (header, row)
        assert row["VRAM (GB)"] == "–"

    failed = {r.info.run_name: r for r in jobs if r.info.status == "FAILED"}
    assert set(failed) == {"tiny-gpt2-fp32-cuda-4", "tiny-gpt2-fp32-cuda-8"}
    for name, run in failed.items():  # listed with their error, not dropped
        assert f"| {name} " in text and run.data.tags["error"] in text
    assert "this machine has no CUDA" in text
    assert "### Sample output: tiny-gpt2" in text and "### CPU vs GPU" not in text  # no GPU run here

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["tiny-gpt2_latency_s.png", "tiny-gpt2_memory.png", "tiny-gpt2_tokens_per_s.png"]
    for name in pngs:
        assert_png(out / name)
        assert f"]({name})" in text

    # the main table on the terminal, and everything logged on the sweep's parent run
    assert "| CPU FP32 " in result.stdout and "4 of 6 jobs finished, 2 failed." in result.stdout
    client = tiny_sweep.client()
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{n}" for n in ["report.md", *pngs]}
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert "| CPU BF16 " in note


def test_the_command_a_sweep_prints_reports_that_sweep_from_any_experiment_and_store(sweep):
    """The sweep's last lines name the report command; run as printed, it must find the sweep even in
    another experiment of a store given on the command line (not the one `qsweep report` opens by default)."""
    store = f"sqlite:///{sweep.tmp_path / 'elsewhere.db'}"
    result = sweep.run("-m", "model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=4", "generation.repeats=1",
                       "tracking.experiment=elsewhere", f"tracking.uri={store}")
    assert result.returncode == 0, result.stderr[-3000:]
    args = printed_report_args(result.stdout)
    assert args[-2:] == ["--tracking-uri", store]
    out = sweep.tmp_path / "report"
    report = sweep.report(*args, "--out", str(out))  # the default store (MLFLOW_TRACKING_URI) is another one
    assert report.returncode == 0, report.stderr[-3000:]
    client = MlflowClient(store)
    (parent,) = client.search_runs([client.get_experiment_by_name("elsewhere").experiment_id],
                                   filter_string="tags.`qsweep.kind` = 'sweep'")
    text = (out / "report.md").read_text()
    assert text.startswith(f"# qsweep report: sweep {parent.info.run_name}") and "| CPU FP32 " in text


@pytest.mark.slow
def test_report_selections_and_errors(tiny_sweep, monkeypatch, capsys):
    from qsweep.__main__ import main

    monkeypatch.chdir(tiny_sweep.tmp_path)
    uri = ["--tracking-uri", tiny_sweep.uri]
    assert main(["report", *uri, "--no-log", "--filter", "tags.precision = 'bf16'"]) == 0
    (path,) = (tiny_sweep.tmp_path / "reports").glob("*bf16*/report.md")  # default folder: reports/<selection>
    assert "| CPU BF16 " in path.read_text() and "CPU FP32" not in path.read_text()
    assert main(["report", *uri, "--sweep", "0" * 32]) == 1
    assert main(["report", *uri, "--experiment", "no-such-experiment"]) == 1
    assert main(["report", "--tracking-uri", f"sqlite:///{tiny_sweep.tmp_path}/none.db"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("qsweep report:")]
    assert len(errors) == 3 and "Traceback" not in err, err  # one line each
    assert "no experiment named 'no-such-experiment'" in errors[1] and "no MLflow store" in errors[2]


# --- the MLflow UI in a real browser -----------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow ui` in its own process group (it starts workers), stopped by killing that group."""
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow ui exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise AssertionError(f"mlflow ui not up after 240 s: {log.read_text()[-2000:]}")


def chromium(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,1000", f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)  # never downloads a driver


# What MLflow 3's UI opens on its own: an assistant side panel (the runs need the width), and on the Model
# registry page a dialog announcing its new UI
ASSISTANT_PANEL = "//*[text()='MLflow Assistant']/ancestor::*[.//button][1]//button[last()]"
ANNOUNCEMENT = "//*[@role='dialog']//button[@aria-label='Close']"


def close(driver, close_button: str) -> None:
    """Close a panel or dialog by its close button, where it is open (best effort)."""
    try:
        driver.find_element("xpath", close_button).click()
        time.sleep(1)
    except Exception:
        pass


@pytest.fixture(scope="module")
def fine_tune_sweep(tmp_path_factory):
    """A fine-tune of the tiny Gemma and a sweep of its checkpoint at fp32 and bf16, in one store."""
    tmp = tmp_path_factory.mktemp("ui_store")
    base, out, sweep = make_tiny_gemma(tmp / "tiny-gemma"), tmp / "models" / "tiny-gemma-ft", Sweep(tmp)
    result = fine_tune(base, out, sweep.uri)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    result = sweep.run("-m", "model=gemma-3-270m-ft", f"model.name_or_path={out}", "device=cpu",
                       "precision=fp32,bf16", "generation.max_new_tokens=8", "generation.repeats=1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return sweep, result.stdout


SCREENSHOTS = ROOT / "docs" / "ui"


def wait_for_text(driver, *texts, timeout=180):  # a slow CI machine renders the UI's first page in software
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: all(t in d.find_element("tag name", "body").text for t in texts), f"not on screen: {texts}")


def click(driver, xpath, timeout=180):
    """A click by script: a panel that opens late over the element cannot take it."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    element = WebDriverWait(driver, timeout).until(expected_conditions.element_to_be_clickable(("xpath", xpath)))
    driver.execute_script("arguments[0].click()", element)


def screenshot(driver, tmp_path, name):
    """Saved in tmp_path, and in docs/ui/ when QSWEEP_SCREENSHOT_DIR=docs/ui (how docs/ got them)."""
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    assert_png(shot)
    if os.environ.get("QSWEEP_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["QSWEEP_SCREENSHOT_DIR"]) / name)


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)")
def test_the_mlflow_ui_shows_the_sweep_in_headless_chromium(fine_tune_sweep, tmp_path):
    """From the UI's home page, as the README's UI section says: the sweep's runs, their generated text side by
    side, and the fine-tune's model."""
    sweep, stdout = fine_tune_sweep
    runs = sweep.runs()
    (parent,) = [r for r in runs if r.data.tags.get("qsweep.kind") == "sweep"]
    jobs = {r.data.tags["precision"]: r for r in runs if r.data.tags.get("qsweep.kind") == "job"}
    tables = {p: json.loads(Path(sweep.client().download_artifacts(job.info.run_id, "generations_table.json"))
                            .read_text())["data"] for p, job in jobs.items()}
    prompt, outputs = tables["fp32"][0][0], {p: rows[0][1].strip() for p, rows in tables.items()}
    (digest,) = {d.dataset.digest for d in jobs["fp32"].inputs.dataset_inputs if d.dataset.name == "prompts"}
    from qsweep.__main__ import main

    assert main(["recommend", "--tracking-uri", sweep.uri, "--max-kl", "100", "--register", "ship-it"]) == 0
    port = free_port()
    ui = start_ui(sweep.uri, port, tmp_path / "mlflow-ui.log")
    driver = None
    try:
        # the hand-over as the server shows it: the alias's version, made by one of the sweep's jobs, its tags
        query = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/alias?name=ship-it&alias=recommended"
        version = json.loads(urllib.request.urlopen(query, timeout=60).read())["model_version"]
        tags = {t["key"]: t["value"] for t in version["tags"]}
        (picked,) = [job for job in jobs.values() if job.info.run_id == version["run_id"]]
        assert version["aliases"] == ["recommended"] and tags["config_hash"] == picked.data.tags["config_hash"]
        assert tags["objective"] == "speed" and tags["precision"] == picked.data.tags["precision"]
        driver = chromium(tempfile.mkdtemp(dir=tmp_path))
        home = f"http://127.0.0.1:{port}/"
        driver.get(home)
        wait_for_text(driver, "Recent Experiments", "qsweep", "train_merge")
        # the README: switch to Model training, open the experiment (= the address the sweep printed)
        click(driver, "//*[text()='Model training']")
        click(driver, "//a[text()='qsweep']")
        wait_for_text(driver, parent.info.run_name)
        printed = re.search(r"http://127\.0\.0\.1:5000/(#/experiments/\d+/runs\?workflowType=machine_learning)",
                            stdout).group(1)
        assert driver.current_url.startswith(home + printed), (driver.current_url, printed)
        close(driver, ASSISTANT_PANEL)
        click(driver, f"//a[.//span[text()='{parent.info.run_name}']]/ancestor::*[@role='gridcell'][1]//button")
        wait_for_text(driver, *(job.info.run_name for job in jobs.values()))
        screenshot(driver, tmp_path, "runs.png")

        # what the models said: Artifact evaluation, the generations table, one column per run
        driver.execute_script("arguments[0].click()", driver.find_element("xpath", "//input[@value='ARTIFACT']"))
        wait_for_text(driver, "generations_table.json", "Group by:", "Compare:", prompt)
        text = driver.find_element("tag name", "body").text
        assert text.count(f"prompts ({digest})") == 2  # each job's column names its prompt set
        lines = text.splitlines()
        row = lines[lines.index(prompt) + 1:lines.index(prompt) + 4]  # its cells: the sweep's run (empty), the jobs
        assert row.count(outputs["fp32"]) + row.count(outputs["bf16"]) >= 2, (row, outputs)
        screenshot(driver, tmp_path, "generations.png")

        # the fine-tune's model: its experiment, Models, the checkpoint's logged model
        click(driver, "//a[text()='Experiments']")
        click(driver, "//a[text()='train_merge']")
        click(driver, "//a[text()='Models' or .//*[text()='Models']]")
        click(driver, "//a[text()='tiny-gemma-ft']")
        wait_for_text(driver, "tiny-gemma-ft", "heldout_loss_merged", "Source run", "Ready",
                      *(job.info.run_name for job in jobs.values()))
        screenshot(driver, tmp_path, "model.png")

        # the registered pick in the Model registry, the alias on its version
        driver.get(home + "#/models")
        wait_for_text(driver, "ship-it", "tiny-gemma-ft", "@ recommended")
        close(driver, ANNOUNCEMENT)
        screenshot(driver, tmp_path, "registered.png")
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(60)
