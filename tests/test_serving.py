"""Batches and prompt lengths: every sequence gets exactly max_new_tokens tokens, batching does not change
a sequence's greedy output, the throughput and prefill arithmetic, prompts of exactly N tokens, where
quantization stops paying, and quality figures measured once per setting and reused."""

import pytest

from conftest import compose_run, transformers_runtime
from qsweep import backends, identity, measure, prompts, scaling
from qsweep.config import ConfigError
from qsweep.confighash import config_hash
from qsweep.report import summary
from qsweep.report_rows import rows_by_model
from qsweep.tracking import RunRecord


class CountingRuntime(backends.Runtime):
    """A runtime whose generation takes a fixed time per step and records the batches it was given."""

    def __init__(self, tokens_short_by: int = 0):
        self.batches, self.short = [], tokens_short_by

    def generate(self, batch, max_new_tokens, on_first_token):
        self.batches.append([list(p) for p in batch])
        on_first_token()
        return [[7] * (max_new_tokens - self.short) for _ in batch]


def gen(**overrides):
    return compose_run("model=tiny-gpt2", "device=cpu", *(f"generation.{k}={v}" for k, v in overrides.items())).generation


def test_batches_cycle_the_prompts_and_every_prompt_leads_one():
    assert measure.batches([[1], [2], [3]], 4) == [[[1], [2], [3], [1]], [[2], [3], [1], [2]], [[3], [1], [2], [3]]]
    assert measure.batches([[1], [2]], 1) == [[[1]], [[2]]]  # batch 1: as before, one prompt at a time


def test_throughput_and_prefill_arithmetic():
    runtime = CountingRuntime()
    settings = gen(batch_size=4, max_new_tokens=8, repeats=2, warmup=0)
    ids = [[1] * 10, [2] * 20]
    speed, outputs = measure.generate_timed(runtime, ids, settings, "cpu")
    assert all(len(b) == 4 for b in runtime.batches) and len(runtime.batches) == 2 * 2
    assert speed.timed_samples == 4 and speed.new_tokens == 8
    assert speed.throughput_tokens_per_s == pytest.approx(4 * 8 / speed.latency_s)
    assert speed.tokens_per_s == pytest.approx(8 / speed.latency_s)  # per sequence: the T4 notebook's definition
    assert speed.prefill_tokens_per_s > 0 and [o.prompt_ids for o in outputs] == ids


def test_a_runtime_that_generates_fewer_tokens_fails_the_job():
    with pytest.raises(measure.WrongLength, match="asked for 2 x 8 new tokens"):
        measure.generate_timed(CountingRuntime(tokens_short_by=1), [[1, 2]], gen(batch_size=2, max_new_tokens=8,
                                                                                 warmup=0, repeats=1), "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return transformers_runtime(tmp_path_factory.mktemp("cache"), "model=tiny-gpt2", "device=cpu")


def test_left_padding_does_not_change_a_sequences_greedy_output(tiny):
    ids, _ = prompts.encode(gen(), None, tiny.vocab_size, seed=0)  # four prompts of different lengths
    alone = [tiny.generate([p], 12, lambda: None)[0] for p in ids]
    together = tiny.generate(ids, 12, lambda: None)
    assert len({len(p) for p in ids}) > 1 and all(len(t) == 12 for t in together)
    assert together == alone


def test_prompts_of_exactly_n_tokens_cut_from_the_evaluation_text(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models, processors

    vocab = {c: i for i, c in enumerate(["<bos>", "<unk>"] + sorted(set(open(prompts.__file__).read()) | set(
        __import__("qsweep.quality", fromlist=["eval_text"]).eval_text())))}
    backend = Tokenizer(tok_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", unk_token="<unk>")
    for n in (32, 5000):  # longer than the whole text: it is repeated
        ids, texts = prompts.encode(gen(prompt_tokens=n), tokenizer, len(vocab), seed=0)
        assert [len(p) for p in ids] == [n] * 4 and all(p[0] == 0 for p in ids) and len({tuple(p) for p in ids}) == 4
        assert all(texts)
    synthetic, _ = prompts.encode(gen(prompt_tokens=64), None, 1000, seed=0)
    assert [len(p) for p in synthetic] == [64] * 4


def test_batch_and_prompt_length_are_identity_but_defaults_keep_every_hash():
    base = compose_run("model=tiny-gpt2", "device=cpu")
    assert config_hash(base) == "b62f92020d96"  # as pinned before batch sizes and prompt lengths existed
    hashes = {config_hash(compose_run("model=tiny-gpt2", "device=cpu", *o)) for o in
              ([], ["generation.batch_size=4"], ["generation.prompt_tokens=512"])}
    assert len(hashes) == 3
    big = compose_run("model=tiny-gpt2", "device=cpu", "generation.batch_size=16", "generation.prompt_tokens=512")
    assert identity.run_name(big) == "tiny-gpt2-fp32-cpu-128-b16-p512"
    assert identity.run_tags(big)["batch_size"] == 16 and identity.run_tags(big)["prompt_tokens"] == 512
    for bad, message in (("generation.batch_size=0", "batch_size=0 must be at least 1"),
                         ("generation.prompt_tokens=1", "prompt_tokens=1 must be at least 2")):
        with pytest.raises(ConfigError, match=message):
            compose_run("model=tiny-gpt2", bad)


def serving_job(precision, batch, throughput, quantization="none"):
    return RunRecord(f"{precision}-{batch}", f"m-{precision}-b{batch}", "FINISHED",
                     {"throughput_tokens_per_s": throughput, "tokens_per_s": throughput / batch, "latency_s": 1.0},
                     {"model": "m", "device": "cpu", "precision": precision, "max_new_tokens": "64",
                      "batch_size": str(batch), "prompt_tokens": "128"}, {"precision.quantization": quantization})


def test_the_summary_says_from_which_batch_size_quantization_stops_paying():
    jobs = [serving_job("bf16", 1, 20), serving_job("bf16", 4, 70), serving_job("bf16", 16, 200),
            serving_job("int4", 1, 25, "int4"), serving_job("int4", 4, 60, "int4"), serving_job("int4", 16, 90, "int4"),
            serving_job("int8", 1, 30, "int8"), serving_job("int8", 4, 80, "int8"), serving_job("int8", 16, 210, "int8")]
    lines = scaling.stops_paying(rows_by_model(jobs)["m"])
    assert lines == ["CPU INT8: faster than every unquantized setting at every batch size measured (1, 4, 16)",
                     "CPU INT4: slower than the best unquantized setting from batch 4 on"]
    slow = [serving_job("bf16", b, 10 * b) for b in (1, 4)] + [serving_job("int8", b, 9 * b, "int8") for b in (1, 4)]
    assert scaling.stops_paying(rows_by_model(slow)["m"]) == [
        "CPU INT8: slower than the best unquantized setting at every batch size measured (1, 4)"]
    text = summary(jobs)
    assert "Where quantization stops paying" in text and "Throughput (tok/s)" in text and "| Batch |" in text


def test_scaling_charts_are_drawn_per_varied_dimension(tmp_path):
    rows = rows_by_model([serving_job("bf16", b, 10 * b) for b in (1, 4, 16)])["m"]
    (chart,) = scaling.charts("m", rows, tmp_path)
    assert chart.path.name == "m_throughput_by_batch.png" and chart.path.read_bytes()[:4] == b"\x89PNG"
    assert scaling.charts("m", rows[:1], tmp_path) == []


@pytest.mark.slow
def test_quality_is_measured_once_per_setting_and_reused_across_batch_sizes(sweep, tmp_path):
    from test_quality import build_model, build_tokenizer

    folder = tmp_path / "tiny-real"
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = sweep.run("-m", "model=tiny-gpt2", "model.weights=pretrained", f"model.name_or_path={folder}",
                       "device=cpu", "precision=fp32,bf16", "generation.batch_size=1,3", "generation.max_new_tokens=6",
                       "generation.repeats=1", "generation.warmup=0", f"paths.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = {(r.data.tags["precision"], r.data.tags["batch_size"]): r for r in sweep.runs()
            if r.data.tags.get("qsweep.kind") == "job"}
    assert len(runs) == 4
    for precision in ("fp32", "bf16"):
        first, second = runs[(precision, "1")].data, runs[(precision, "3")].data
        assert first.tags["quality_scores"] == "measured" and second.tags["quality_scores"] == "reused"
        for metric in ("perplexity", "kl_div_vs_fp32", "top1_agreement_vs_fp32"):
            assert first.metrics[metric] == second.metrics[metric]
        assert second.metrics["throughput_tokens_per_s"] == pytest.approx(3 * 6 / second.metrics["latency_s"])
    assert runs[("fp32", "3")].data.metrics["output_match_vs_fp32"] == 1  # batched: the same greedy tokens
