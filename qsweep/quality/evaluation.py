"""One job's quality: find (or build) the fp32 references, score the loaded model on the evaluation text
once per setting, compare its greedy outputs with fp32's, and judge whether they are broken."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import List, Sequence

from qsweep.backends import Runtime
from qsweep.config import RunConfig
from qsweep.quality import reference
from qsweep.quality.cache import (TAIL_DRAWS, TOP_K, load_greedy, load_scores, load_text_reference, reference_paths,
                                  save_scores)
from qsweep.quality.outputs import broken_beyond_reference, degenerate_reasons, output_match, repetition_loop
from qsweep.quality.scoring import SE_BLOCK, TextQuality, score_text
from qsweep.quality.text import windows_for
from qsweep.sources import Checkpoint

NOT_APPLICABLE = "not_applicable"
# The figures of TextQuality that compare with fp32, each recorded as the metric <name>_vs_fp32
VS_FP32 = ("kl_div", "kl_div_median", "kl_div_p99", "kl_div_p999", "kl_div_max", "top1_agreement", "rms_delta_p",
           "ln_ppl_ratio")
STANDARD_ERRORS = ("kl_div", "top1_agreement", "ln_ppl_ratio")  # each recorded as <name>_vs_fp32_se


@dataclass
class QualityMetrics:
    """Names are the MLflow metric names. NaN: could not be computed (see degenerate_reason)."""
    perplexity: float
    kl_div_vs_fp32: float  # mean over positions, nats (package docstring)
    kl_div_median_vs_fp32: float  # the distribution of the per-position KL: median,
    kl_div_p99_vs_fp32: float  # 99th percentile,
    kl_div_p999_vs_fp32: float  # 99.9th percentile,
    kl_div_max_vs_fp32: float  # and worst position
    top1_agreement_vs_fp32: float  # share of positions whose most likely token is fp32's
    rms_delta_p_vs_fp32: float  # RMS over positions of the change in probability of fp32's most likely token
    ln_ppl_ratio_vs_fp32: float  # ln(perplexity / fp32's perplexity), over the same positions
    kl_div_vs_fp32_se: float  # standard errors of the three means (batch means, scoring's docstring)
    top1_agreement_vs_fp32_se: float
    ln_ppl_ratio_vs_fp32_se: float
    output_match_vs_fp32: float  # share of generated tokens equal to fp32's, up to the first difference
    degenerate_output: int  # 1: empty output, non-finite logits, an n-gram or a sentence loop
    degenerate_vs_fp32: int  # 1: non-finite logits, or broken on a prompt where fp32's own output is not
    quality_time_s: float


@dataclass
class QualityResult:
    metrics: QualityMetrics
    degenerate_reason: str  # "none", or the reasons joined by ","
    reference: str  # "self" (an fp32 job), "reused" (found in the cache) or "built" (by this job)
    fp32_outputs: List[List[int]]  # fp32's greedy output ids, per prompt
    scores: str  # "measured" by this job, or "reused" from an earlier job of the same setting
    details: dict = field(default_factory=dict)  # the quality.json artifact


def applicable(cfg: RunConfig, tokenizer) -> bool:
    """Quality needs real weights and a tokenizer for the evaluation text."""
    return cfg.model.weights == "pretrained" and tokenizer is not None


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else float("nan")


def evaluate(cfg: RunConfig, runtime: Runtime, checkpoint: Checkpoint, generations,
             texts: Sequence[str]) -> QualityResult:
    """The quality of the loaded model: perplexity and agreement with the fp32 reference on the
    evaluation text, agreement of its greedy outputs (`generations`, decoded as `texts`) with fp32's,
    and the broken-output check. Builds or stores the reference when missing."""
    start = time.perf_counter()
    tokenizer = runtime.tokenizer
    longest = min(runtime.context_length or math.inf, runtime.max_scored_length or math.inf)
    cut = windows_for(cfg.quality, tokenizer, longest)
    windows, window = cut.windows, cut.window
    outputs = [g.output_ids for g in generations]
    prompt_ids = [g.prompt_ids for g in generations]
    paths = reference_paths(cfg, checkpoint.path, windows, cut.scored_from, prompt_ids)
    paths.text.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": checkpoint.path, "device": cfg.device.name, "windows": len(windows),
            "window": window, "scored_from": cut.scored_from, "text": cut.text.name, "text_sha256": cut.text.sha256,
            "top_k": TOP_K, "tail_draws": TAIL_DRAWS}

    stored = load_scores(paths.scores)  # measured by an earlier job of this setting: reused
    if runtime.is_fp32_reference:  # this job is the reference: store it when missing
        greedy = outputs if cfg.generation.batch_size == 1 else None  # the reference is batch 1's
        scores = reference.store_own(runtime, paths, cut, greedy, meta, need_scores=stored is None)
        reference.build_missing(cfg, checkpoint, paths, cut, prompt_ids)  # a batched job's greedy one
        setting, origin = stored or TextQuality.of_reference(scores), "self"
    else:
        built = reference.build_missing(cfg, checkpoint, paths, cut, prompt_ids)
        setting, origin = stored, "built" if built else "reused"
        if setting is None:
            setting = TextQuality.against_reference(
                score_text(runtime, windows, reference=load_text_reference(paths.text), scored_from=cut.scored_from))
    if stored is None:
        save_scores(setting, paths.scores)
    fp32_outputs = load_greedy(paths.greedy)

    special = set(getattr(tokenizer, "all_special_ids", []))
    reasons = degenerate_reasons(texts, outputs, setting.non_finite, special)
    fp32_texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in fp32_outputs]
    beyond = (["non_finite_logits"] if setting.non_finite else []) + broken_beyond_reference(
        texts, outputs, fp32_texts, fp32_outputs, special)
    metrics = QualityMetrics(
        perplexity=_finite_or_nan(setting.perplexity),
        **{f"{name}_vs_fp32": _finite_or_nan(getattr(setting, name)) for name in VS_FP32},
        **{f"{name}_vs_fp32_se": _finite_or_nan(getattr(setting, f"{name}_se")) for name in STANDARD_ERRORS},
        output_match_vs_fp32=output_match(outputs, fp32_outputs),
        degenerate_output=int(bool(reasons)), degenerate_vs_fp32=int(bool(beyond)),
        quality_time_s=time.perf_counter() - start)
    scores_origin = "reused" if stored else "measured"
    details = {"eval_positions": setting.positions, "windows": len(windows), "window": window,
               "method": cfg.quality.method, "scored_from": cut.scored_from, "text": cut.text.name,
               "text_sha256": cut.text.sha256, "top_k": TOP_K,
               "reference": origin, "reference_file": paths.text.name, "greedy_reference_file": paths.greedy.name,
               "text_scores": scores_origin, "text_scores_file": paths.scores.name,
               "degenerate_reasons": reasons, "degenerate_vs_fp32_reasons": beyond,
               "degenerate_by_prompt": [",".join(degenerate_reasons([text], [ids], False, special)) or "none"
                                        for text, ids in zip(texts, outputs)],
               "repetition": [dict(zip(("n", "tokens"), repetition_loop([t for t in o if t not in special])))
                              for o in outputs],
               "kl_estimate": f"exact over fp32's top {TOP_K} tokens and the rest as one bucket, plus the KL "
                              f"within the rest estimated from {TAIL_DRAWS} tokens drawn from it (unbiased)",
               "standard_errors": f"batch means over blocks of {SE_BLOCK} consecutive positions",
               **dataclasses.asdict(metrics)}
    return QualityResult(metrics, ",".join(reasons) or "none", origin, fp32_outputs, scores_origin, details)
