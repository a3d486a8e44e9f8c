"""Deciding: ties, the Pareto front, the recommendation under constraints, emulated settings; and
`qsweep recommend` on a real tiny sweep."""

import re

import pytest

from conftest import Sweep
from qsweep import decide, emulation, recommend, report
from qsweep.tracking import TAG_EMULATED, RunRecord


def run(precision, decode, kl=None, rss=1.0, iqr=0.0, model="m", batch=1, backend="transformers", emulated="",
        degenerate=False, device="cpu", vram=None, kl_se=None, runtime=None, origin="", setting=None):
    """A finished job as the report reads it back: decode speed (median, IQR), KL vs fp32, memory (a run
    without `setting`: one recorded before setting_memory_gb existed)."""
    name = f"{model}-{precision}-{device}-b{batch}-{backend}"
    metrics = dict(decode_tokens_per_s=decode, decode_tokens_per_s_iqr=iqr, latency_s=10.0, latency_iqr_s=1.0,
                   throughput_tokens_per_s=batch * decode, peak_rss_gb=rss, timed_samples=8,
                   degenerate_output=int(degenerate))
    metrics.update({} if kl is None else {"kl_div_vs_fp32": kl})
    metrics.update({} if kl_se is None else {"kl_div_vs_fp32_se": kl_se})
    metrics.update({} if vram is None else {"peak_vram_gb": vram})
    metrics.update({} if setting is None else {"setting_memory_gb": setting})
    tags = {"model": model, "device": device, "precision": precision, "backend": backend, "max_new_tokens": "64",
            "batch_size": str(batch), "config_hash": f"{abs(hash(name)) % 16**12:012x}",
            "runtime": runtime or backend, "degenerate_reason": "repetition_loop" if degenerate else "none",
            **({"weights_quantized_from": origin} if origin else {}),
            **({TAG_EMULATED: emulated} if emulated else {})}
    return RunRecord(f"id-{name}", name, "FINISHED", metrics, tags)


def ranked(*jobs):
    """The front of one model's jobs: {setting: decide.Ranked}."""
    (group,) = decide.groups(decide.candidates(r for rows in report.rows_by_model(list(jobs)).values()
                                                for r in rows)).values()
    return {r.candidate.setting: r for r in decide.front(group, decide.by_throughput(group))}


def recommended(*jobs, **limits):
    (rec,) = recommend.recommend(decide.candidates(report.rows_by_model(list(jobs))["m"]),
                                 recommend.Constraints(**limits))
    return rec


# --- ties and the front ------------------------------------------------------------------------------------

def test_speeds_tie_when_their_interquartile_ranges_overlap():
    assert decide.Speed(100, 20).ties(decide.Speed(115, 10))  # 90-110 and 110-120 touch
    assert not decide.Speed(100, 20).ties(decide.Speed(116, 10))
    assert decide.Speed(116, 10).faster(decide.Speed(100, 20))
    assert not decide.Speed(105, 20).faster(decide.Speed(100, 20))  # a higher median inside the spread


def test_kls_tie_when_their_standard_error_intervals_overlap():
    # 0.0300 ± 0.0020 spans 0.028-0.032; 0.0350 ± 0.0030 spans 0.032-0.038: they touch, a tie
    assert decide.Quality(0.03, 0.002).ties(decide.Quality(0.035, 0.003))
    assert decide.Quality(0.03, 0.002).lower(decide.Quality(0.0351, 0.003))  # 0.0321-0.0381: apart
    # without a standard error (runs recorded before them, fp32's own 0) the interval is ± KL_RESOLUTION / 2
    assert decide.Quality(0.0, float("nan")).ties(decide.Quality(0.9e-4, float("nan")))
    assert decide.Quality(0.0, 0.0).lower(decide.Quality(1.1e-4, 0.0))
    # on the front: the slower setting's KL is inside the faster one's interval, so it is beaten (not "lower KL")
    front = ranked(run("int8", 40, kl=0.0300, kl_se=0.002), run("int4", 30, kl=0.0290, kl_se=0.001))
    assert not front["CPU INT4"].on_front and front["CPU INT4"].why == "faster"
    apart = ranked(run("int8", 40, kl=0.0300, kl_se=0.0002), run("int4", 30, kl=0.0290, kl_se=0.0001))
    assert apart["CPU INT4"].on_front
    assert "0.0300 ± 0.0020" in decide.front_section(report.rows_by_model(
        [run("int8", 40, kl=0.0300, kl_se=0.002)])["m"])[0]


def test_recommend_says_when_the_cap_lies_inside_the_picks_interval():
    inside = recommended(run("fp32", 20, kl=0.0), run("int8", 40, kl=0.0095, kl_se=0.001), max_kl=0.01)
    assert inside.pick.setting == "CPU INT8"
    assert any("the KL cap 0.01 lies inside the pick's interval (KL vs fp32 0.0095 ± 0.0010)" in n
               for n in inside.notes)
    clear = recommended(run("fp32", 20, kl=0.0), run("int8", 40, kl=0.0085, kl_se=0.001), max_kl=0.01)
    assert clear.pick.setting == "CPU INT8" and not any("inside" in n for n in clear.notes)


def test_weights_from_a_quantized_file_are_said_beside_the_settings_of_its_family():
    def jobs(origin):
        return [run(t, 70, kl=kl, backend="llama-cpp", runtime=f"llama.cpp {t}", origin=origin)
                for t, kl in (("Q4_K_M", 0.0038), ("Q4_K_S", 0.005), ("Q5_K_M", 0.0243), ("Q8_0", 0.0024))]

    rows = report.rows_by_model(jobs("Q4_K_M"))["m"]
    marked = {c.setting for c in decide.candidates(rows) if c.on_origin_grid}
    assert marked == {c.setting for c in decide.candidates(rows) if "Q4_K" in c.setting}
    section, _ = decide.front_section(rows)
    assert section.count("⚠ weights already on its Q4_K_M grid") == 2
    assert "m's weights were dequantized from a Q4_K_M file" in section
    rec = recommended(*jobs("Q4_K_M"), max_kl=0.01)
    assert any("dequantized from a Q4_K_M file" in n for n in rec.notes)
    # weights never quantized (a random-weight tiny model, a hub checkpoint): no mark, no note
    plain = report.rows_by_model(jobs(""))["m"]
    assert "⚠" not in decide.front_section(plain)[0] and not any(c.on_origin_grid for c in decide.candidates(plain))
    assert not any("dequantized" in n for n in recommended(*jobs(""), max_kl=0.01).notes)


def test_three_settings_on_the_front_and_a_dominated_one_with_what_beats_it():
    front = ranked(run("fp32", 20, kl=0.0, rss=2.0),    # the most faithful
                   run("int8", 40, kl=0.02, rss=1.5),   # the fastest
                   run("int4", 30, kl=0.05, rss=1.0),   # the smallest
                   run("bf16", 15, kl=0.03, rss=1.8))   # slower, further and bigger than int8
    assert [s for s, r in front.items() if r.on_front] == ["CPU INT8", "CPU INT4", "CPU FP32"]  # fastest first
    beaten = front["CPU BF16"]
    assert beaten.beaten_by.setting == "CPU INT8" and beaten.why == "faster, lower KL, less memory"
    assert list(front)[-1] == "CPU BF16"  # the front first, the beaten after


def test_a_speed_tie_is_not_faster():
    """A higher median within the other's spread is no speed advantage: lower KL decides."""
    tied = ranked(run("fp32", 100, kl=0.01, iqr=20), run("bf16", 105, kl=0.02, iqr=20))
    assert tied["CPU FP32"].on_front
    assert tied["CPU BF16"].beaten_by.setting == "CPU FP32" and tied["CPU BF16"].why == "lower KL"
    apart = ranked(run("fp32", 100, kl=0.01), run("bf16", 105, kl=0.02))  # no spread: bf16 is faster
    assert apart["CPU FP32"].on_front and apart["CPU BF16"].on_front


def test_figures_within_the_resolution_are_equal_and_degenerate_runs_are_never_on_the_front():
    front = ranked(run("fp32", 20, kl=0.0, rss=1.004), run("bf16", 20, kl=0.0, rss=1.0),
                   run("fp32", 20, kl=3e-5, rss=1.0, backend="llama-cpp"),
                   run("int4", 90, kl=0.0, rss=0.5, degenerate=True))
    assert front["CPU FP32"].on_front and front["CPU BF16"].on_front  # 4 MB apart: equal
    assert front["CPU FP32 llama-cpp"].on_front  # 3e-5 nats more: equal
    assert not front["CPU INT4"].on_front and "degenerate" in front["CPU INT4"].why


def test_the_front_is_per_batch_size_on_throughput_when_the_batch_varies():
    jobs = [run("fp32", 20, kl=0.0, batch=1), run("int8", 10, kl=0.02, batch=1),
            run("fp32", 12, kl=0.0, batch=8), run("int8", 10, kl=0.02, batch=8)]
    cands = decide.candidates(report.rows_by_model(jobs)["m"])
    groups = decide.groups(cands)
    assert set(groups) == {"m, batch 1", "m, batch 8"} and decide.by_throughput(cands)
    assert all(c.speed(True).median == c.batch_size * c.decode.median for c in cands)
    section, members = decide.front_section(report.rows_by_model(jobs)["m"])
    assert members == {"id-m-fp32-cpu-b1-transformers", "id-m-fp32-cpu-b8-transformers"}
    assert "### Settings worth deploying: m, batch 8" in section and "throughput tokens/s" in section
    assert section.count("beaten by CPU FP32: faster, lower KL") == 2


def test_memory_is_the_setting_s_own_and_an_older_run_s_peak_says_so():
    rows = report.rows_by_model([run("fp32", 20, rss=1.9, setting=1.1), run("int8", 30, rss=1.2),
                                 run("fp16", 50, device="cuda", rss=3.0, vram=0.6, setting=0.55)])["m"]
    cands = {c.precision: c for c in decide.candidates(rows)}
    assert (cands["fp32"].memory_gb, cands["fp32"].memory_text()) == (1.1, "1.10 GB setting memory")
    assert cands["int8"].memory_text() == "1.20 GB peak RSS (an older run: qsweep's own included)"
    assert cands["fp16"].memory_gb == 0.55


def test_an_older_run_s_memory_is_vram_on_cuda_and_the_chart_gets_the_fronts_points():
    rows = report.rows_by_model([run("fp16", 150, kl=0.001, rss=3.0, device="cuda", vram=0.6),
                                 run("int8", 45, kl=0.004, rss=3.0, device="cuda", vram=0.4),
                                 run("int4", 40, kl=0.03, rss=3.0, device="cuda", vram=0.5)])["m"]
    cands = {c.precision: c for c in decide.candidates(rows)}
    assert (cands["fp16"].memory_gb, cands["fp16"].memory_kind) == (0.6, "peak VRAM")
    assert decide.front_points(rows, "decode_tokens_per_s", "kl_div_vs_fp32") == [(45, 0.004), (150, 0.001)]


# --- the recommendation --------------------------------------------------------------------------------------

def test_the_fastest_setting_within_the_caps_and_a_runner_up_that_ties():
    rec = recommended(run("fp32", 20, kl=0.0, rss=2.0, iqr=2), run("bf16", 21, kl=0.004, rss=1.2, iqr=2),
                      run("int4", 40, kl=0.05, rss=1.0), max_kl=0.01)
    assert rec.pick.precision == "bf16" and rec.runner_up.precision == "fp32"
    assert any("ties on speed" in note and "lower KL" in note for note in rec.notes)
    text = recommend.render([rec], recommend.Constraints(max_kl=0.01), " --tracking-uri sqlite:///x.db")
    assert f"`python -m qsweep reproduce {rec.pick.config_hash} --tracking-uri sqlite:///x.db`" in text


def test_a_constraint_nobody_meets_is_named_with_the_closest_run():
    jobs = [run("fp32", 20, kl=0.0, rss=2.0), run("int8", 35, kl=0.02, rss=1.4), run("int4", 40, kl=0.05, rss=1.3)]
    rec = recommended(*jobs, max_kl=0.01, max_memory_gb=1.0)
    assert rec.pick is None and rec.closest.precision == "int8"  # 2.0x the KL cap, 1.4x the memory cap
    (note,) = rec.notes
    assert "no run needs <= 1 GB (the least: 1.30 GB peak RSS (an older run: " in note and "KL" not in note
    both = recommended(*jobs, max_kl=0.01, max_memory_gb=1.5)  # fp32 meets one, int8 the other
    assert both.pick is None and both.notes[0].endswith(
        "each cap alone is met (KL vs fp32 <= 0.01 by CPU FP32; memory <= 1.5 GB by CPU INT8, CPU INT4), "
        "but no run meets both")


def test_emulated_and_degenerate_settings_are_never_picked_silently():
    fp16 = run("fp16", 50, kl=0.001, emulated="fp16 on a CPU without AVX512-FP16")
    rec = recommended(run("fp32", 20, kl=0.0), fp16, run("int4", 90, kl=0.0, degenerate=True))
    assert rec.pick.precision == "fp32"
    assert any("CPU FP16 (emulated) measured faster" in n for n in rec.notes)
    assert any("degenerate output: CPU INT4" in n for n in rec.notes)
    only = recommended(run("fp32", 20, kl=0.5), fp16)
    assert only.pick.precision == "fp16" and any("only settings emulated by the CPU" in n for n in only.notes)


def test_a_model_without_kl_figures_is_judged_on_speed_and_memory_and_says_so():
    rec = recommended(run("fp32", 20), run("bf16", 30))
    assert rec.pick.precision == "bf16" and "KL cap is not applied" in rec.notes[0]


def test_a_speed_floor_with_the_quality_objective_picks_the_most_faithful_setting_fast_enough():
    jobs = [run("fp32", 20, kl=0.0, rss=2.0), run("bf16", 35, kl=0.004, rss=1.4),
            run("int8", 60, kl=0.008, rss=1.2), run("int4", 90, kl=0.009, rss=1.0)]
    assert recommended(*jobs, min_tokens_per_s=30).pick.precision == "int4"  # speed: the fastest, as before
    (rec,) = recommend.recommend(decide.candidates(report.rows_by_model(jobs)["m"]),
                                 recommend.Constraints(min_tokens_per_s=30), "quality")
    assert (rec.pick.precision, rec.runner_up.precision) == ("bf16", "int8")  # fp32 is too slow
    (small,) = recommend.recommend(decide.candidates(report.rows_by_model(jobs)["m"]),
                                   recommend.Constraints(min_tokens_per_s=30), "memory")
    assert small.pick.precision == "int4"
    text = recommend.render([rec], recommend.Constraints(min_tokens_per_s=30), objective="quality")
    assert text.startswith("- **m** (the lowest KL vs fp32 with KL vs fp32 <= 0.01, no memory cap, speed >= 30 "
                           "tokens/s; objective quality):")


def test_a_backend_limit_picks_among_that_runtime_s_runs_and_says_when_it_has_none():
    jobs = [run("int4", 90, kl=0.005, backend="llama-cpp"), run("bf16", 30, kl=0.001), run("fp32", 20, kl=0.0)]
    assert recommended(*jobs).pick.backend == "llama-cpp"
    assert recommended(*jobs, backend="transformers").pick.precision == "bf16"  # the team deploys transformers
    none = recommended(*jobs, backend="ctranslate2")
    assert none.pick is None and none.notes[-1] == (
        "no finished run with backend=ctranslate2 (measured: batch 1 on cpu with backend=llama-cpp, batch 1 on cpu "
        "with backend=transformers)")
    assert recommend.Constraints(backend="transformers").text().endswith(", backend transformers")
    assert recommended(*jobs, batch_size=4, device="cuda").notes[-1].startswith(
        "no finished run at batch 4 on cuda (measured: batch 1 on cpu with backend=llama-cpp, ")


def test_equal_quality_is_decided_as_the_front_decides_it():
    """KL within the resolution: the setting the other beats (as fast, less memory) comes second."""
    jobs = [run("fp32", 20, kl=0.0, rss=2.0, iqr=4), run("bf16", 21, kl=0.00004, rss=1.4, iqr=4),
            run("int8", 60, kl=0.008, rss=1.2)]
    (rec,) = recommend.recommend(decide.candidates(report.rows_by_model(jobs)["m"]), recommend.Constraints(),
                                 "quality")
    assert (rec.pick.precision, rec.runner_up.precision) == ("bf16", "fp32")
    assert "the runner-up is as good by quality (within the resolution); the pick has less memory" in rec.notes


def test_a_speed_floor_no_run_meets_is_named_with_the_fastest_run():
    rec = recommended(run("fp32", 20, kl=0.0), run("int8", 35, kl=0.02), min_tokens_per_s=50)
    assert rec.pick is None and rec.closest.precision == "int8"
    assert rec.notes == ["no setting meets the constraints: no run reaches 50 decode tokens/s (the fastest: 35.00, "
                         "CPU INT8): lower --min-tokens-per-s"]
    both = recommended(run("fp32", 20, kl=0.0), run("int8", 35, kl=0.02), min_tokens_per_s=30)
    assert both.notes[0].endswith("(KL vs fp32 <= 0.01 by CPU FP32; decode tokens/s >= 30 by CPU INT8), but no run "
                                  "meets both")


# --- emulated settings ---------------------------------------------------------------------------------------

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 f16c avx512f avx512bw avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = EPYC.replace("avx512_vnni", "avx512_vnni avx512_fp16 amx_bf16 amx_tile")
AVX2 = "flags\t\t: fpu sse2 avx avx2 f16c fma\n"


@pytest.mark.parametrize("cpuinfo, precision, expected", [
    (EPYC, "fp16", "AVX512-FP16 or AMX-FP16"), (EPYC, "bf16", None), (EPYC, "fp32", None),
    (SAPPHIRE_RAPIDS, "fp16", None), (AVX2, "bf16", "AVX512-BF16 or AMX-BF16"),
    ("processor\t: 0\nFeatures\t: fp asimd asimdhp\n", "fp16", None)])  # not x86: nothing said
def test_a_precision_without_the_cpus_instructions_is_emulated(cpuinfo, precision, expected):
    why = emulation.emulated("cpu", precision, "transformers", emulation.cpu_flags(cpuinfo))
    assert (why is None) if expected is None else (expected in why)


def test_only_torch_on_the_cpu_is_judged(monkeypatch, capsys):
    flags = emulation.cpu_flags(AVX2)
    assert all(emulation.emulated(device, "fp16", backend, flags) is None
               for device, backend in (("cuda", "transformers"), ("cpu", "llama-cpp"), ("cpu", "ctranslate2")))
    from conftest import compose_run

    monkeypatch.setattr(emulation, "cpu_flags", lambda: flags)
    tags = emulation.check(compose_run("model=tiny-gpt2", "device=cpu", "precision=fp16"))
    assert "AVX512-FP16" in tags[TAG_EMULATED] and capsys.readouterr().out.startswith("qsweep: emulated setting: ")
    assert emulation.check(compose_run("model=tiny-gpt2", "device=cpu", "precision=fp32")) == {}


# --- `qsweep recommend` on a real sweep ----------------------------------------------------------------------

@pytest.mark.slow
def test_recommend_on_a_tiny_sweep(tmp_path, capsys):
    from qsweep.__main__ import main

    sweep = Sweep(tmp_path)
    result = sweep.run("-m", "model=tiny-gpt2", "device=cpu", "precision=fp32,bf16,fp16",
                       "generation.max_new_tokens=8", "generation.repeats=2")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {r.data.tags["precision"]: r for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"}
    expected = emulation.emulated("cpu", "fp16", "transformers", emulation.cpu_flags())  # this machine's CPU
    assert jobs["fp16"].data.tags.get(TAG_EMULATED) == expected
    assert ("qsweep: emulated setting: " in result.stdout) == bool(expected)

    assert main(["recommend", "--tracking-uri", sweep.uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith("qsweep recommend: sweep sweep-") and "KL cap is not applied" in out  # random weights
    picked = re.search(r"pick: (CPU \w+).*config_hash (\w+)", out)
    native = [r for r in jobs.values() if TAG_EMULATED not in r.data.tags]
    fastest = max(native, key=lambda r: r.data.metrics["decode_tokens_per_s"])
    assert picked.groups() == (fastest.data.tags["setting"], fastest.data.tags["config_hash"])
    assert f"python -m qsweep reproduce {picked.group(2)} --tracking-uri {sweep.uri}`" in out
    least = min(r.data.metrics["setting_memory_gb"] for r in jobs.values())

    cap = f"{least / 2:.3f}"
    assert main(["recommend", "--tracking-uri", sweep.uri, "--max-memory-gb", cap]) == 1
    out = capsys.readouterr().out
    assert f"no run needs <= {float(cap):g} GB" in out and "closest: " in out
    with pytest.raises(SystemExit):
        main(["recommend", "--tracking-uri", sweep.uri, "--max-kl", "-1"])
    assert "argument --max-kl: -1 is below 0.0" in capsys.readouterr().err
