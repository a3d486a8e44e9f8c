"""Timed generation does fixed work and its figures are consistent; the memory tracker; context checks."""

import mmap
import time

import psutil
import pytest
import torch

from conftest import compose_run, transformers_runtime
from qsweep import measure, prompts
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
    with torch.no_grad():
        tiny.model.lm_head.weight[eos] += 5.0
    gen = compose_run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=12", "generation.repeats=3").generation
    prompts = encode(gen.prompts)
    speed, outputs = measure.generate_timed(tiny, prompts, gen, "cpu")
    with torch.no_grad():
        tiny.model.lm_head.weight[eos] -= 5.0
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
    tracker = memory.MemoryTracker("cpu", interval_s=10)  # a poller would never sample in time
    with tracker.track():
        touched_block().close()  # 256 MiB, touched, freed at once
    peak = tracker.result()
    assert 0.24 < peak.peak_rss_gb - baseline_gb < 0.4 and peak.peak_vram_gb is None


def test_memory_tracker_polls_where_the_kernel_keeps_no_peak(monkeypatch):
    monkeypatch.setattr(memory, "_reset_kernel_peak_rss", lambda: False)  # e.g. macOS
    baseline_gb = psutil.Process().memory_info().rss / memory.GB
    tracker = memory.MemoryTracker("cpu", interval_s=0.01)
    with tracker.track():
        block = touched_block()
        time.sleep(0.1)  # long enough for the poller to see it
        block.close()
    assert tracker.result().peak_rss_gb - baseline_gb > 0.2


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


def test_adaptive_repeats_stop_at_a_small_spread_or_the_time_cap(tiny):
    base = ("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=4", "generation.repeats=1")
    prompts = encode(compose_run(*base).generation.prompts)
    loose = compose_run(*base, "generation.repeat_until_spread=100").generation  # any spread is small enough
    speed, _ = measure.generate_timed(tiny, prompts, loose, "cpu")
    assert speed.timed_samples == len(prompts)  # 4 samples: enough to judge the spread
    cap = 3 * speed.phase_generation_s  # about three rounds on this machine now
    never = compose_run(*base, "generation.repeat_until_spread=1e-9", f"generation.repeat_time_cap_s={cap}").generation
    speed, _ = measure.generate_timed(tiny, prompts, never, "cpu")
    assert speed.timed_samples > len(prompts) and speed.timed_samples % len(prompts) == 0  # whole rounds
    assert speed.phase_generation_s >= cap  # it went on until the cap (and, returning, stopped there)
    assert speed.phase_warmup_s > 0


def test_a_new_generation_option_left_at_its_default_keeps_the_config_hash():
    from qsweep.confighash import config_hash

    plain = compose_run("model=tiny-gpt2", "device=cpu")
    assert config_hash(compose_run("model=tiny-gpt2", "device=cpu", "generation.repeat_time_cap_s=5")) == \
        config_hash(plain)  # the cap of adaptive repeats that are off
    assert config_hash(compose_run("model=tiny-gpt2", "device=cpu", "generation.repeat_until_spread=0.03")) != \
        config_hash(plain)
