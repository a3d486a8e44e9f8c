"""Quality metrics: perplexity by hand, KL against the fp32 reference, the broken-output check, the
stored reference reused, and random weights carrying no quality metrics."""

import dataclasses
import hashlib
import json
import math
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from qsweep import quality
from qsweep.quality import outputs, scoring
from qsweep.quality.cache import KEEP, TOP_K

QUALITY_METRICS = {f.name for f in dataclasses.fields(quality.QualityMetrics)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the evaluation text; like Gemma's, it starts every text with BOS."""
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([quality.eval_text()], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


def build_model(tokenizer, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def windows(tokenizer):
    return quality.eval_windows(tokenizer, quality.eval_text(), 128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A local checkpoint with real (not `weights=random`) weights and a tokenizer: quality applies."""
    folder = tmp_path_factory.mktemp("tiny-real")
    build_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ unit

class FixedLogits:
    """A stand-in runtime whose logits are given: row i predicts token i + 1."""

    def __init__(self, logits):
        self.fixed = logits

    def logits(self, ids):
        return self.fixed[:len(ids)]


class ModelRuntime:
    """An HF model as the quality metrics see every backend: next-token logits of one sequence."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def logits(self, ids):
        return self.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def test_windows_cover_the_text_once_and_fit_the_context(tokenizer, windows):
    text_ids = tokenizer(quality.eval_text(), add_special_tokens=False).input_ids
    assert all(w[0] == tokenizer.bos_token_id and len(w) <= 128 for w in windows)
    assert [t for w in windows for t in w[1:]] == text_ids
    assert max(map(len, windows)) - min(map(len, windows)) <= 1  # equal windows, no short tail


def test_perplexity_of_a_known_tiny_case_by_hand():
    # Two predictions over a 4-token vocabulary: p(target) = 1/4, then 1/8.
    # perplexity = exp(-(ln 1/4 + ln 1/8) / 2) = sqrt(32)
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.25, 0.5, 0.125, 0.125], [0.25] * 4])
    scores = scoring.score_text(FixedLogits(probs.log()), [[0, 1, 2]])
    assert scores.positions == 2 and not scores.non_finite
    assert scores.perplexity == pytest.approx(math.sqrt(32), rel=1e-6)


def test_a_model_with_uniform_predictions_has_the_vocabulary_size_as_perplexity(tokenizer, windows):
    model = build_model(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # all logits 0: every token has probability 1/V
    scores = scoring.score_text(ModelRuntime(model), windows)
    assert scores.perplexity == pytest.approx(len(tokenizer), rel=1e-5)
    assert scores.positions == sum(len(w) - 1 for w in windows)


def test_kl_of_identical_models_is_zero_and_top1_agrees_everywhere(tokenizer, windows):
    model = build_model(tokenizer)
    reference = scoring.as_reference(scoring.score_text(ModelRuntime(model), windows, keep=KEEP))
    scores = scoring.score_text(ModelRuntime(build_model(tokenizer)), windows, reference=reference)  # same seed, same weights
    assert torch.cat(scores.kl).mean().item() == pytest.approx(0.0, abs=1e-7)
    assert bool(torch.cat(scores.top1_same).all())


def full_log_probs(model, windows):
    with torch.no_grad():
        return torch.cat([torch.log_softmax(model(torch.tensor([w])).logits[0, :-1].float(), -1) for w in windows])


def test_kl_with_tail_draws_is_unbiased_and_the_bucket_alone_a_lower_bound(tokenizer, windows):
    windows = windows[:12]  # about 1,500 positions: enough to average the draws' noise, cheap to score 4 times
    fp32, other = build_model(tokenizer, seed=0), build_model(tokenizer, seed=0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a "quantization error"
    p, q = full_log_probs(fp32, windows), full_log_probs(other, windows)
    exact = (p.exp() * (p - q)).sum(-1).mean().item()

    def kl(keep):
        reference = scoring.as_reference(scoring.score_text(ModelRuntime(fp32), windows, keep=keep))
        return scoring.TextQuality.against_reference(scoring.score_text(ModelRuntime(other), windows, reference))

    bucket, drawn, whole = kl((8, 0)), kl((8, 512)), kl((len(tokenizer), 64))
    assert 0 < bucket.kl_div < 0.9 * exact  # 8 of 400 tokens: the tail holds much of the KL
    assert drawn.kl_div == pytest.approx(exact, rel=0.03)  # the draws restore it (within their noise)
    assert whole.kl_div == pytest.approx(exact, rel=1e-4)  # the whole vocabulary kept: exact
    assert 0 < whole.top1_agreement < 1 and 0 < whole.kl_div_se < whole.kl_div
    # the stored sizes stay sane: k + draws entries per position, whatever the vocabulary
    reference = scoring.as_reference(scoring.score_text(ModelRuntime(fp32), windows, keep=KEEP))
    assert reference.top_ids.shape == reference.tail_ids.shape == (bucket.positions, TOP_K)


def test_batch_means_standard_error_by_hand():
    # 1..8 in blocks of 2: means 1.5 3.5 5.5 7.5, their sd (n - 1) = sqrt(20 / 3) = 2.581989, / sqrt(4) = 1.290994
    assert scoring.batch_means_se(torch.arange(1.0, 9.0), block=2) == pytest.approx(1.290994, rel=1e-6)
    # a last, shorter block is folded into the one before: 1..7 in blocks of 3 -> (1 2 3) (4 5 6 7): means 2, 5.5
    # sd = 2.474874, / sqrt(2) = 1.75
    assert scoring.batch_means_se(torch.arange(1.0, 8.0), block=3) == pytest.approx(1.75, rel=1e-6)
    # fewer than two blocks: the per-token SE, sd(1 2 3 4) / 2 = 1.290994 / 2
    assert scoring.batch_means_se(torch.arange(1.0, 5.0), block=4) == pytest.approx(0.645497, rel=1e-6)
    # correlated neighbours (each value repeated 4 times) get a larger SE than the per-token one
    repeated = torch.arange(16.0).repeat_interleave(4)
    assert scoring.batch_means_se(repeated, block=4) > 1.9 * scoring.batch_means_se(repeated, block=1)
    assert math.isnan(scoring.batch_means_se(torch.tensor([1.0])))


def test_kl_percentiles_of_a_hand_computed_example():
    # sorted: 0.0 0.1 0.2 0.3 0.4, ranks 0..4; quantile q sits at rank q * 4, linear between neighbours:
    # median: rank 2 -> 0.2; p99: rank 3.96 -> 0.3 + 0.96 * 0.1 = 0.396; p99.9: rank 3.996 -> 0.3996; max 0.4
    spread = scoring.kl_distribution(torch.tensor([0.4, 0.0, 0.1, 0.3, 0.2]))
    assert spread == pytest.approx({"median": 0.2, "p99": 0.396, "p999": 0.3996, "max": 0.4}, abs=1e-7)
    # an even count: the median is halfway between the middle two; a NaN position makes every figure NaN
    assert scoring.kl_distribution(torch.tensor([0.0, 1.0, 3.0, 10.0]))["median"] == pytest.approx(2.0)
    assert all(math.isnan(v) for v in scoring.kl_distribution(torch.tensor([0.1, float("nan")])).values())


def test_distribution_delta_p_and_perplexity_ratio_by_hand():
    # Vocabulary of 2, window [0, 0, 1]: two positions, targets 0 then 1. fp32 predicts (0.8, 0.2) at both;
    # the run predicts (0.8, 0.2), then (0.6, 0.4). k = 2 is the whole vocabulary, so the KL is exact:
    #   KL_1 = 0; KL_2 = 0.8 ln(0.8/0.6) + 0.2 ln(0.2/0.4) = 0.230146 - 0.138629 = 0.091516
    #   median of (0, 0.091516) = 0.045758; p99 = 0.99 * 0.091516 = 0.090601; max = 0.091516
    #   delta-p of fp32's top token (0): 0, then 0.6 - 0.8 = -0.2; RMS = sqrt(0.04 / 2) = 0.141421
    #   ln(PPL_run / PPL_fp32) = mean NLL difference = ((-ln 0.8 + ln 0.8) + (-ln 0.4 + ln 0.2)) / 2 = -ln(2) / 2
    fp32 = torch.tensor([[0.8, 0.2], [0.8, 0.2], [0.5, 0.5]]).log()
    run = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]).log()
    window = [[0, 0, 1]]
    reference = scoring.as_reference(scoring.score_text(FixedLogits(fp32), window, keep=(2, 4)))

    def against_fp32(logits):
        return scoring.TextQuality.against_reference(scoring.score_text(FixedLogits(logits), window, reference))

    got = against_fp32(run)
    kl_2 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    assert kl_2 == pytest.approx(0.091516, abs=1e-6)
    assert got.kl_div == pytest.approx(kl_2 / 2, rel=1e-5)
    assert (got.kl_div_median, got.kl_div_p99, got.kl_div_max) == pytest.approx((kl_2 / 2, 0.99 * kl_2, kl_2), rel=1e-5)
    assert got.rms_delta_p == pytest.approx(0.141421, rel=1e-5)
    assert got.ln_ppl_ratio == pytest.approx(-math.log(2) / 2, rel=1e-5)
    assert got.top1_agreement == 1.0  # 0.6 > 0.4: the run's top token is still fp32's
    # standard errors: two positions make fewer than two blocks, so per-token: sd(x1, x2) / sqrt(2) = |x1 - x2| / 2
    assert got.kl_div_se == pytest.approx(kl_2 / 2, rel=1e-5)
    assert got.ln_ppl_ratio_se == pytest.approx(math.log(2) / 2, rel=1e-5)
    assert got.top1_agreement_se == 0.0
    # against itself every figure is what an fp32 job records for itself: 0 (and top-1 agreement 1)
    assert against_fp32(fp32) == scoring.TextQuality.of_reference(scoring.score_text(FixedLogits(fp32), window))


def test_non_finite_logits_are_seen():
    logits = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    scores = scoring.score_text(FixedLogits(logits), [[0, 1, 2]])
    assert scores.non_finite and math.isnan(scores.perplexity)


@pytest.mark.parametrize("texts, ids, non_finite, expected", [
    (["Good morning! Here is the menu.", "Two biryani coming up."], [list(range(10, 138))] * 2, False, []),
    (["fine", ""], [list(range(10, 138)), [0] * 128], False, ["empty_output"]),  # fp16 Gemma: pad tokens only
    (["fine", " \n\t"], [list(range(10, 138)), [5, 6] * 2], False, ["empty_output"]),
    (["x", "y"], [list(range(10, 138)), list(range(20, 40)) + [7] * 108], False, ["repetition_loop"]),  # 1-token
    (["x", "y"], [list(range(10, 138)), list(range(20, 60)) + [7, 8] * 44], False, ["repetition_loop"]),  # 2-gram
    # sentence-level repetition (the base Gemma's "I'm sorry to hear that ..." again and again)
    (["x", "y"], [list(range(10, 138)), (list(range(50, 62)) * 11)[:128]], False, ["sentence_loop"]),
    # a 20-token sentence three times in a row over half the output: flagged; said twice: not
    (["x", "y"], [list(range(10, 138)), list(range(200, 260)) + list(range(50, 70)) * 3], False, ["sentence_loop"]),
    (["x", "y"], [list(range(10, 138)), list(range(200, 288)) + list(range(50, 70)) * 2], False, []),
    # both kinds, in different outputs, in a fixed order
    (["x", "y"], [(list(range(50, 62)) * 11)[:128], list(range(20, 40)) + [7] * 108], False,
     ["repetition_loop", "sentence_loop"]),
    # a loop over less than half of the output is not flagged
    (["x", "y"], [list(range(10, 138)), list(range(20, 100)) + [7] * 48], False, []),
    # a short output cannot be called a loop
    (["x", "y"], [[3, 4, 5, 6], [7, 7, 7, 7]], False, []),
    (["", "y"], [[0] * 16, [7] * 16], True, ["non_finite_logits", "empty_output", "repetition_loop"]),
])
def test_degenerate_detector_on_crafted_outputs(texts, ids, non_finite, expected):
    assert outputs.degenerate_reasons(texts, ids, non_finite, special_ids=[0, 1, 2]) == expected


def test_a_sentence_repeated_over_and_over_is_a_sentence_loop(tokenizer):
    text = ("Thank you for asking. I am sorry to hear that you did not like the food. "
            + "I am sorry to hear that you did not like the food. " * 6)
    ids = tokenizer(text).input_ids  # BOS first, as a generation's special tokens
    assert outputs.degenerate_reasons([text], [ids], False, tokenizer.all_special_ids) == ["sentence_loop"]
    n, covered = outputs.repetition_loop(ids)
    assert covered < len(ids) / 2  # what the n-gram check alone missed


def test_normal_text_with_repeated_words_is_not_a_loop(tokenizer):
    text = ("The kitchen opens at noon. The kitchen closes at ten, and the bar stays open until midnight. "
            "We serve the biryani on Fridays, and the biryani sells out by eight. Ask the waiter: the waiter "
            "knows the specials, and the specials change every day. Thank you, thank you very much.")
    ids = tokenizer(text).input_ids
    assert outputs.degenerate_reasons([text], [ids], False, tokenizer.all_special_ids) == []


def test_a_loop_counts_against_a_setting_only_where_fp32_does_not_loop(tokenizer):
    loop = "I am sorry to hear that you did not like the food. " * 6
    fine = "The kitchen opens at noon and closes at ten; the biryani sells out by eight on Fridays."
    special = tokenizer.all_special_ids

    def ids(text):
        return tokenizer(text).input_ids

    # prompt 1: fp32 loops too (the model's doing); prompt 2: both fine
    as_fp32 = outputs.broken_beyond_reference([loop, fine], [ids(loop), ids(fine)], [loop, fine],
                                              [ids(loop), ids(fine)], special)
    assert as_fp32 == []
    # prompt 2 now loops where fp32's output does not: the setting broke it
    worse = outputs.broken_beyond_reference([loop, loop], [ids(loop), ids(loop)], [loop, fine],
                                            [ids(loop), ids(fine)], special)
    assert worse == ["sentence_loop"]
    # an empty output where fp32 wrote something
    assert outputs.broken_beyond_reference([" "], [[]], [fine], [ids(fine)], special) == ["empty_output"]


def test_special_tokens_are_not_a_loop():
    assert outputs.degenerate_reasons(["hello"], [[5, 6, 7, 8, 9, 10, 11, 12] + [0] * 120], False, [0]) == []


def test_output_match_counts_up_to_the_first_difference():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert outputs.output_match(ref, ref) == 1.0
    assert outputs.output_match([[1, 2, 9, 4], [9, 6, 7, 8]], ref) == pytest.approx((0.5 + 0.0) / 2)


# ------------------------------------------------------------------------------------------ whole runs

def job_runs(sweep):
    return {r.data.tags["precision"]: r for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"}


@pytest.mark.slow
def test_random_weight_runs_carry_no_quality_metrics(sweep):
    result = sweep.run("model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=4", "generation.repeats=1",
                       "generation.warmup=0")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sweep.runs()
    assert run.data.tags["quality"] == "not_applicable" and "degenerate_reason" not in run.data.tags
    assert "weights_quantized_from" not in run.data.tags  # random weights: no provenance note
    assert not QUALITY_METRICS & set(run.data.metrics) and "tokens_per_s" in run.data.metrics
    assert "quality.json" not in {a.path for a in sweep.client().list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_real_weight_runs_record_quality_and_reuse_the_fp32_reference(sweep, checkpoint, tmp_path):
    cache = tmp_path / "cache"
    common = ["model=tiny-gpt2", "model.weights=pretrained", f"model.name_or_path={checkpoint}", "device=cpu",
              "generation.max_new_tokens=16", "generation.repeats=1", f"paths.cache_dir={cache}"]
    # bf16 first: no fp32 job has run, so bf16 builds the reference; then fp32 compares with itself
    first = sweep.run("-m", *common, "precision=bf16,fp32")
    assert first.returncode == 0, first.stderr[-3000:]
    runs = job_runs(sweep)
    references = sorted((cache / "references").glob("*.safetensors"))
    assert len(references) == 2  # the text reference and the greedy outputs
    stamps = {p: p.stat().st_mtime_ns for p in references}
    for run in runs.values():
        assert QUALITY_METRICS <= set(run.data.metrics), run.data.metrics
        assert run.data.tags["quality"] == "measured" and "degenerate_reason" in run.data.tags
    fp32, bf16 = runs["fp32"].data, runs["bf16"].data
    assert fp32.tags["quality_reference"] == "self" and bf16.tags["quality_reference"] == "built"
    assert fp32.metrics["kl_div_vs_fp32"] == 0 and fp32.metrics["top1_agreement_vs_fp32"] == 1
    assert fp32.metrics["output_match_vs_fp32"] == 1
    assert fp32.metrics["degenerate_vs_fp32"] == 0  # whatever its outputs do, they are fp32's own
    assert bf16.metrics["degenerate_vs_fp32"] in (0, 1) and "degenerate_output" in bf16.metrics
    assert bf16.metrics["kl_div_vs_fp32"] > 0 and bf16.metrics["perplexity"] > 1
    spread = [bf16.metrics[f"kl_div_{q}_vs_fp32"] for q in ("median", "p99", "p999", "max")]
    assert spread == sorted(spread) and spread[-1] >= bf16.metrics["kl_div_vs_fp32"] > 0
    assert bf16.metrics["rms_delta_p_vs_fp32"] > 0
    for metric in ("kl_div_median_vs_fp32", "kl_div_p99_vs_fp32", "kl_div_p999_vs_fp32", "kl_div_max_vs_fp32",
                   "rms_delta_p_vs_fp32", "ln_ppl_ratio_vs_fp32"):
        assert fp32.metrics[metric] == 0, metric
    texts = json.loads(open(sweep.client().download_artifacts(runs["bf16"].info.run_id, "generations.json")).read())
    assert all("fp32_output" in t and len(t["fp32_output_ids"]) == 16 for t in texts)
    assert "**fp32:**" in open(sweep.client().download_artifacts(runs["bf16"].info.run_id, "generations.md")).read()
    assert "Perplexity" in first.stdout and "KL vs FP32" in first.stdout

    # second sweep: the stored reference is found, not recomputed, and the numbers repeat exactly
    second = sweep.run("-m", *common, "precision=bf16")
    assert second.returncode == 0, second.stderr[-3000:]
    again = [r for r in sweep.runs() if r.info.run_id not in {x.info.run_id for x in runs.values()}
             and r.data.tags.get("precision") == "bf16"][0]
    assert again.data.tags["quality_reference"] == "reused"
    assert {p: p.stat().st_mtime_ns for p in sorted((cache / "references").glob("*.safetensors"))} == stamps
    for metric in QUALITY_METRICS - {"quality_time_s"}:
        assert again.data.metrics[metric] == bf16.metrics[metric], metric


@pytest.mark.slow
def test_a_users_jsonl_file_is_the_quality_text_end_to_end(sweep, checkpoint, tmp_path):
    data = tmp_path / "dialogues.jsonl"
    data.write_text("".join(json.dumps({"utterance": line}) + "\n" for line in quality.eval_text().splitlines()[:12]))
    result = sweep.run("model=tiny-gpt2", "model.weights=pretrained", f"model.name_or_path={checkpoint}", "device=cpu",
                       "generation.max_new_tokens=4", "generation.repeats=1", "generation.warmup=0", "precision=bf16",
                       f"paths.cache_dir={tmp_path / 'cache'}", f"quality.text={data}", "quality.text_field=utterance")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sweep.runs()
    text = "\n\n".join(quality.eval_text().splitlines()[:12])
    assert run.data.tags["quality_text"] == str(data)
    assert run.data.tags["quality_text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    m = run.data.metrics
    assert 0 < m["kl_div_vs_fp32_se"] < m["kl_div_vs_fp32"] and m["ln_ppl_ratio_vs_fp32_se"] > 0
    assert "weights_quantized_from" not in run.data.tags  # a tiny model's own weights: no provenance note


def test_the_sweep_summary_shows_quality_and_names_degenerate_runs():
    from qsweep import report

    from qsweep.tracking import RunRecord

    def job(precision, metrics, tags):
        return RunRecord(precision, f"g-{precision}", "FINISHED", metrics,
                         {"model": "g", "precision": precision, "device": "cpu", "max_new_tokens": "8", **tags})

    jobs = [job("fp32", {"perplexity": 20.5, "kl_div_vs_fp32": 0.0, "degenerate_output": 0}, {"degenerate_reason": "none"}),
            job("fp16", {"perplexity": float("nan"), "kl_div_vs_fp32": float("nan"), "degenerate_output": 1},
                {"degenerate_reason": "non_finite_logits,empty_output"})]
    text = report.summary(jobs)
    assert "Perplexity" in text and "KL vs FP32" in text and "20.50" in text and "0.0000" in text
    assert "CPU FP16 ⚠" in text and "yes: non_finite_logits,empty_output" in text
    assert text.splitlines()[-1].startswith("Degenerate output") and "g-fp16 (non_finite_logits,empty_output)" in text
    assert "g-fp32 (" not in text


# ------------------------------------------------------------------------------ text and provenance

def test_the_text_named_by_quality_text_and_its_bad_forms(tmp_path):
    from qsweep.config import ConfigError, QualityConfig
    from qsweep.textsource import read

    assert read("builtin").text == quality.eval_text() and len(read("builtin").sha256) == 64
    plain = tmp_path / "mine.txt"
    plain.write_text("Table for two at eight, please.\n" * 40)
    assert read(str(plain)).name == str(plain) and read(str(plain)).text.startswith("Table for two")
    lines = tmp_path / "dialogues.jsonl"
    lines.write_text('{"text": "A table for two?", "id": 1}\n\n{"text": "Yes, by the window."}\n')
    assert read(str(lines)).text == "A table for two?\n\nYes, by the window."
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    bad = {"quality.text=nowhere.txt: no such file": dict(text="nowhere.txt"),
           f"{empty} has no text to score": dict(text=str(empty)),
           f"{lines} line 1 has no text field 'dialogue' (it has: text, id): name the field": dict(
               text=str(lines), text_field="dialogue"),
           "is shorter than one window of quality.context=512 tokens": dict(text=str(lines), method="llama-perplexity"),
           "quality.method='perplexity' is not valid": dict(method="perplexity")}
    for message, fields in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            QualityConfig(**fields)


def test_wikitext_2_is_the_shipped_file_with_its_digest_source_and_licence():
    import tomllib
    from fnmatch import fnmatch
    from importlib import resources
    from pathlib import Path

    from qsweep.config import QualityConfig
    from qsweep.textsource import WIKITEXT_FILE, read

    package = Path(str(resources.files("qsweep")))
    shipped = package.joinpath(*WIKITEXT_FILE)
    text = read(QualityConfig(text="wikitext-2", method="llama-perplexity").text)
    assert text.name == "wikitext-2" and text.text.splitlines()[0] == " = Robert Boulter = "
    # the digest a run records is the file's own (LF line endings: reading changes no byte) and its README's
    assert text.sha256 == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert f"`{text.sha256}`" in (shipped.parent / "README.md").read_text()
    assert "CC BY-SA 3.0" in (shipped.parent / "LICENSE").read_text()
    # the text, its README and LICENSE are package data: an installed qsweep has them
    patterns = tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for name in ("wiki.test.raw", "README.md", "LICENSE"):
        assert any(fnmatch(f"{shipped.parent.relative_to(package).as_posix()}/{name}", p) for p in patterns["qsweep"])


def test_llama_perplexity_windows_score_the_second_half_of_fixed_windows(tokenizer):
    from qsweep.config import QualityConfig

    text_ids = tokenizer(quality.eval_text(), add_special_tokens=False).input_ids
    cut = quality.windows_for(QualityConfig(method="llama-perplexity", context=64), tokenizer, 10**9)
    assert cut.scored_from == 32 and cut.scored_per_window == 31 and len(cut.windows) == (len(text_ids) + 1) // 64
    assert all(len(w) == 64 and w[0] == tokenizer.bos_token_id for w in cut.windows)
    # llama-perplexity's chunks: BOS + text, cut every 64 tokens, each chunk's first token replaced by BOS
    assert cut.windows[1][1:] == ([tokenizer.bos_token_id] + text_ids)[65:128]
    budget = quality.windows_for(QualityConfig(method="llama-perplexity", context=64, max_tokens=100), tokenizer, 10**9)
    assert len(budget.windows) == 3  # 100 // 31 whole windows
    first = quality.windows_for(QualityConfig(max_tokens=100, context=64), tokenizer, 10**9)
    assert sum(len(w) - 1 for w in first.windows) == 100 and first.scored_from == 0
    # fewer tokens than one window: said before anything is scored
    longer = len(text_ids) + 2  # BOS + the text is one token short of a window
    with pytest.raises(ValueError, match=f"fewer than one window of quality.context={longer}"):
        quality.windows_for(QualityConfig(method="llama-perplexity", context=longer), tokenizer, 10**9)


def test_the_bundled_gemma_is_tagged_as_dequantized_from_q4_k_m_and_random_weights_are_not():
    from conftest import compose_run

    from qsweep import identity

    assert identity.run_tags(compose_run("device=cpu"))["weights_quantized_from"] == "Q4_K_M"
    assert "weights_quantized_from" not in identity.run_tags(compose_run("model=tiny-gpt2", "device=cpu"))
