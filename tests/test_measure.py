"""Timed generation does fixed work and its figures are consistent; the memory tracker; context checks."""

import mmap
import sys
import threading
from types import SimpleNamespace

import psutil
import pytest
import torch

from conftest import compose_run, transformers_runtime
from qsweep import measure, prompts, trackers
from qsweep.backends import Runtime
from qsweep.trackers import memory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return transformers_runtime(tmp_path_factory.mktemp("cache"), "model=tiny-gpt2", "device=cpu")


def encode(texts):
    """Synthetic prompt ids (tiny-gpt2 has no tokenizer), as a job makes them."""
    gen = compose_run("model=tiny-gpt2", "device=cpu").generation
    gen.prompts = list(texts)
    return prompts.encode(gen, None, 1000, seed=0)[0]


def test_every_generation_has_exactly_max_new_tokens_even_when_eos_wins(tiny):
    # Make EOS the most likely token everywhere: generation must still not stop early.
    eos = tiny.model.generation_config.eos_token_id
    row = tiny.model.lm_head.weight[eos].detach().clone()  # put back exactly: later tests share the model
    with torch.no_grad():
        tiny.model.lm_head.weight[eos] += 5.0
    gen = compose_run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=12", "generation.repeats=3").generation
    prompts = encode(gen.prompts)
    try:
        speed, outputs = measure.generate_timed(tiny, prompts, gen, "cpu")
    finally:
        with torch.no_grad():
            tiny.model.lm_head.weight[eos].copy_(row)
    assert [len(o.output_ids) for o in outputs] == [12] * len(gen.prompts)
    assert speed.timed_samples == 3 * len(gen.prompts) and speed.new_tokens == 12
    assert 0 < speed.ttft_s < speed.latency_s <= speed.latency_p90_s
    assert speed.latency_iqr_s >= 0 and speed.decode_tokens_per_s > speed.tokens_per_s * 0.5


def test_greedy_generation_is_deterministic(tiny):
    gen = compose_run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=8", "generation.repeats=1").generation
    prompts = encode(gen.prompts)
    _, first = measure.generate_timed(tiny, prompts, gen, "cpu")
    _, second = measure.generate_timed(tiny, prompts, gen, "cpu")
    assert [o.output_ids for o in first] == [o.output_ids for o in second]


def test_synthetic_prompts_are_deterministic_and_sized_like_text(tiny):
    prompts = ["x" * 40, "a short one"]
    a = encode(prompts)
    b = encode(prompts)
    assert [len(t) for t in a] == [10, 2] and a == b


def test_a_prompt_longer_than_the_context_is_refused(tiny):
    long_prompt = [[0] * 500]
    assert tiny.context_length == 512
    with pytest.raises(measure.PromptTooLong, match="context of 512 tokens: lower generation.max_new_tokens to 12"):
        measure.check_context(long_prompt, 64, tiny.context_length)
    measure.check_context(long_prompt, 12, tiny.context_length)  # fits
    with pytest.raises(measure.PromptTooLong, match="the prompt alone fills it"):  # no max_new_tokens can help
        measure.check_context([[0] * 512], 1, tiny.context_length)


def touched_block(size: int = 256 * 1024 * 1024) -> mmap.mmap:
    """size bytes of fresh, touched memory: new pages whatever an allocator keeps cached from earlier tests."""
    block, chunk = mmap.mmap(-1, size), b"\x01" * (1 << 20)
    for _ in range(size >> 20):
        block.write(chunk)
    return block


def test_memory_tracker_sees_a_transient_allocation_exactly_on_linux():
    baseline_gb = psutil.Process().memory_info().rss / memory.GB
    tracker = memory.MemoryTracker("cpu")
    with tracker.track():
        touched_block().close()  # 256 MiB, touched, freed at once
    peak = tracker.result()
    # the region starts from the trimmed heap (harness_rss_gb): at most the baseline read before it, less by
    # whatever freed heap earlier tests in this process left for the trim to return
    assert 0.24 < peak.peak_rss_gb - peak.harness_rss_gb < 0.4 and peak.peak_vram_gb is None
    assert 0.24 < peak.setting_memory_gb < 0.3  # above the process's RSS when the region began
    assert 0 < peak.harness_rss_gb < baseline_gb + 0.01 and not peak.tags


def test_where_the_kernel_keeps_no_peak_the_lifetime_peak_stands_in_and_says_so(monkeypatch):
    monkeypatch.setattr(memory, "_reset_kernel_peak_rss", lambda: False)  # e.g. macOS
    baseline_gb = psutil.Process().memory_info().rss / memory.GB
    tracker = memory.MemoryTracker("cpu")
    with tracker.track():
        touched_block().close()
    peak = tracker.result()
    assert peak.peak_rss_gb - baseline_gb > 0.2 and peak.tags == {"memory_peak": "since the worker started"}


class FakeCuda:
    """torch.cuda's allocator counters and NVML's device use as the memory tracker reads them, moved by hand."""

    def __init__(self):
        self.allocated = self.peak = self.device_used = 0

    def allocate(self, gb, outside_torch=False):  # outside torch: a runtime's own allocator (CTranslate2)
        self.device_used += int(gb * memory.GB)
        if not outside_torch:
            self.allocated += int(gb * memory.GB)
            self.peak = max(self.peak, self.allocated)

    def install(self, monkeypatch):
        for name, fn in (("synchronize", lambda: None), ("reset_peak_memory_stats", self._reset),
                         ("memory_allocated", lambda: self.allocated), ("max_memory_allocated", lambda: self.peak)):
            monkeypatch.setattr(torch.cuda, name, fn)
        monkeypatch.setattr(memory, "nvml_handle", lambda: "the GPU")
        monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(
            nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=self.device_used)))
        return self

    def _reset(self):
        self.peak = self.allocated


def test_peak_vram_is_taken_when_the_region_ends_not_after_the_quality_pass(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    cuda.allocate(0.5)  # what the worker held before the job (its CUDA warm-up, say)
    tracker = memory.MemoryTracker("cuda")
    with tracker.track():
        cuda.allocate(1.0)  # the model, its KV cache, the timed generations
    cuda.allocate(4.0)  # the quality pass after the region: full-window logits, the fp32 reference
    figures = tracker.result()
    assert figures.peak_vram_gb == 1.5 and figures.setting_memory_gb == 1.0 and figures.gpu_mem_used_gb == 1.5


def test_on_cuda_a_runtime_that_allocates_outside_torch_is_measured_by_nvml(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    cuda.allocate(0.5)
    tracker = memory.MemoryTracker("cuda")
    with tracker.track():
        cuda.allocate(0.75, outside_torch=True)
    assert tracker.result().setting_memory_gb == 0.75


class ThreadWatcher(Runtime):
    """A stand-in runtime that records, at every generate call, the threads alive and the prompt length."""
    vocab_size = 100

    def __init__(self):
        self.calls = []

    def generate(self, prompts, max_new_tokens, on_first_token):
        self.calls.append((len(prompts[0]), {t.ident for t in threading.enumerate()}))
        on_first_token()
        return [[1] * max_new_tokens for _ in prompts]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_no_thread_of_qsweep_runs_beside_the_timed_calls(device, monkeypatch):
    if device == "cuda":
        FakeCuda().install(monkeypatch)  # no GPU here: the same trackers, on fake counters
    before = {t.ident for t in threading.enumerate()}
    runtime, gen = ThreadWatcher(), compose_run("model=tiny-gpt2", "device=cpu", "generation.repeats=2").generation
    tracked = trackers.Trackers(device)
    with tracked.track():
        measure.generate_timed(runtime, encode(gen.prompts), gen, device, tracked.timed)
    assert [alive - before for _, alive in runtime.calls] == [set()] * len(runtime.calls)


def test_every_prompt_length_is_warmed_up_before_timing():
    runtime = ThreadWatcher()
    gen = compose_run("model=tiny-gpt2", "device=cpu", "generation.repeats=1", "generation.warmup=1").generation
    ids = encode(["a b", "a b c d e f g h i j k l", "a b c d e f"])
    measure.generate_timed(runtime, ids, gen, "cpu")
    lengths = [length for length, _ in runtime.calls]
    assert lengths[:3] == lengths[3:] == [len(p) for p in ids]  # warm-up: every batch once, then the timed round


def test_adaptive_repeats_judge_each_prompt_s_own_spread():
    gen = compose_run("model=tiny-gpt2", "device=cpu", "generation.repeat_until_spread=0.05").generation
    steady_but_unlike = [[1.0, 1.01, 1.0], [5.0, 5.02, 5.0]]  # all six together spread far beyond 5 %
    assert not measure._spread_too_wide(steady_but_unlike, gen, 0.0)
    assert measure._spread_too_wide([[1.0, 1.01, 1.0], [5.0, 7.0, 5.0]], gen, 0.0)  # one prompt wobbles
    assert measure._spread_too_wide([[1.0, 1.0], [5.0, 5.0]], gen, 0.0)  # too few samples to judge


def test_a_peak_before_the_region_does_not_count():
    block = torch.ones(256 * 1024 * 1024, dtype=torch.uint8)
    del block  # the process's lifetime peak is now 256 MiB above its RSS
    baseline_gb = psutil.Process().memory_info().rss / memory.GB
    tracker = memory.MemoryTracker("cpu")
    with tracker.track():
        pass
    assert tracker.result().peak_rss_gb - baseline_gb < 0.05


@pytest.mark.slow
def test_compile_option_really_compiles_and_keeps_the_output(tiny, tmp_path):
    import torch._dynamo

    base = "model=tiny-gpt2 device=cpu generation.max_new_tokens=6 generation.repeats=1".split()
    eager_gen = compose_run(*base).generation
    compiled_gen = compose_run(*base, "generation.compile=true").generation
    prompts = encode(eager_gen.prompts[:2])
    _, eager = measure.generate_timed(tiny, prompts, eager_gen, "cpu")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_runtime = transformers_runtime(tmp_path, *base, "generation.compile=true")  # the same random weights
    _, compiled = measure.generate_timed(compiled_runtime, prompts, compiled_gen, "cpu")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the forward went through dynamo
    assert [o.output_ids for o in compiled] == [o.output_ids for o in eager]


def test_compile_is_refused_for_bitsandbytes_models():
    from qsweep.config import ConfigError

    with pytest.raises(ConfigError, match="bitsandbytes models cannot be compiled"):
        compose_run("model=tiny-gpt2", "device=cpu", "precision=int8", "generation.compile=true")


class SteppedClock:
    """perf_counter for measure: a generate call takes the next of `steps` seconds, cycled, so a batch's
    latency differs from round to round (a spread that never gets small) and no machine's speed matters."""

    def __init__(self, steps):
        self.now, self.steps, self.calls = 0.0, steps, 0

    def perf_counter(self):
        return self.now

    def runtime(self):
        def generate(batch, max_new_tokens, on_first_token):
            self.now += self.steps[self.calls % len(self.steps)] / 2
            on_first_token()
            self.now += self.steps[self.calls % len(self.steps)] / 2
            self.calls += 1
            return [[0] * max_new_tokens for _ in batch]
        return SimpleNamespace(generate=generate)


def test_adaptive_repeats_stop_at_a_small_spread_or_the_time_cap(monkeypatch):
    clock = SteppedClock([1.0, 2.0, 1.5])
    monkeypatch.setattr(measure, "time", clock)
    base = ("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=4", "generation.repeats=1")
    prompts = encode(compose_run(*base).generation.prompts)
    loose = compose_run(*base, "generation.repeat_until_spread=100").generation  # any spread is small enough
    speed, _ = measure.generate_timed(clock.runtime(), prompts, loose, "cpu")
    assert speed.timed_samples == measure.MIN_SAMPLES * len(prompts)  # enough of each prompt's to judge its spread
    cap = 30.0  # a round of the four prompts takes 5.5 to 6.5 s: five rounds or more
    never = compose_run(*base, "generation.repeat_until_spread=1e-9", f"generation.repeat_time_cap_s={cap}").generation
    speed, _ = measure.generate_timed(clock.runtime(), prompts, never, "cpu")
    assert speed.timed_samples > measure.MIN_SAMPLES * len(prompts) and speed.timed_samples % len(prompts) == 0
    # it went on until the cap, and stopped at the first round's end past it
    assert cap <= speed.phase_generation_s < cap + len(prompts) * max(clock.steps)
    assert speed.phase_warmup_s > 0


def test_a_new_generation_option_left_at_its_default_keeps_the_config_hash():
    from qsweep.confighash import config_hash

    plain = compose_run("model=tiny-gpt2", "device=cpu")
    assert config_hash(compose_run("model=tiny-gpt2", "device=cpu", "generation.repeat_time_cap_s=5")) == \
        config_hash(plain)  # the cap of adaptive repeats that are off
    assert config_hash(compose_run("model=tiny-gpt2", "device=cpu", "generation.repeat_until_spread=0.03")) != \
        config_hash(plain)
