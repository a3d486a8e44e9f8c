"""A model's scores on the evaluation windows: perplexity, and against the fp32 reference the KL
divergence (top-k approximation, see the package's docstring) with its distribution over positions, the
top-1 agreement, the RMS change of fp32's top token's probability and the log perplexity ratio.

A mean KL hides the few positions where a quantized model goes wrong: its high percentiles and maximum
show them (the figures quantization tools report, with RMS delta-p, for the same reason)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from qsweep.backends import Runtime

CHUNK = 128  # positions per log-softmax chunk: bounds memory with a 262k-token vocabulary
KL_QUANTILES = {"median": 0.5, "p99": 0.99, "p999": 0.999}


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per token (nats); inf where it would overflow."""
    return math.exp(mean_nll) if mean_nll < 700 else float("inf" if mean_nll >= 700 else "nan")


@dataclass
class TextReference:
    """fp32's next-token distributions, as top-k log-probs + ids + log of the remaining mass."""
    top_logprobs: torch.Tensor  # [positions, k] float32, sorted, most likely first
    top_ids: torch.Tensor  # [positions, k] int64
    log_rest: torch.Tensor  # [positions] float32: log(1 - sum of the top-k probabilities)
    nll: torch.Tensor  # [positions] float32: -log of the probability of the text's next token

    def rows(self, rows: slice, device) -> "TextReference":
        return TextReference(*(t[rows].to(device) for t in dataclasses.astuple(self)))


@dataclass
class TextScores:
    nll_sum: float = 0.0
    positions: int = 0
    non_finite: bool = False
    kl_sum: float = 0.0
    kl: List[torch.Tensor] = field(default_factory=list)  # per-position KL, against a reference
    top1_same: int = 0
    delta_p_squares: float = 0.0  # sum over positions of (p_run - p_fp32)^2 of fp32's top token
    reference_nll_sum: float = 0.0
    top_logprobs: List[torch.Tensor] = field(default_factory=list)  # when keeping a reference
    top_ids: List[torch.Tensor] = field(default_factory=list)
    log_rest: List[torch.Tensor] = field(default_factory=list)
    nll: List[torch.Tensor] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll_sum / self.positions)


def kl_distribution(kl: torch.Tensor) -> dict:
    """Median, 99th and 99.9th percentile (linear interpolation between the closest ranks, numpy's
    default) and maximum of per-position KL values; NaN when any value is NaN."""
    values = kl.double()
    quantiles = torch.quantile(values, torch.tensor(list(KL_QUANTILES.values()), dtype=torch.float64))
    return {**dict(zip(KL_QUANTILES, quantiles.tolist())), "max": values.max().item()}


@dataclass
class TextQuality:
    """A setting's scores on the evaluation text: the same at every batch size and prompt length."""
    perplexity: float
    kl_div: float  # mean over positions
    kl_div_median: float
    kl_div_p99: float
    kl_div_p999: float
    kl_div_max: float
    top1_agreement: float
    rms_delta_p: float  # RMS over positions of p_run(t) - p_fp32(t), t the fp32's most likely token
    ln_ppl_ratio: float  # ln(PPL_run / PPL_fp32) = mean NLL_run - mean NLL_fp32
    non_finite: bool
    positions: int

    @classmethod
    def of_reference(cls, scores: TextScores) -> "TextQuality":
        """The reference's own scores: no divergence from itself."""
        return cls(scores.perplexity, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, scores.non_finite, scores.positions)

    @classmethod
    def against_reference(cls, scores: TextScores) -> "TextQuality":
        n = scores.positions
        spread = kl_distribution(torch.cat(scores.kl))
        return cls(scores.perplexity, scores.kl_sum / n, spread["median"], spread["p99"],
                   spread["p999"], spread["max"], scores.top1_same / n, math.sqrt(scores.delta_p_squares / n),
                   (scores.nll_sum - scores.reference_nll_sum) / n, scores.non_finite, n)


def log_rest_outside(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability of every token not in `ids`, per row, computed without cancellation."""
    return logprobs.scatter(1, ids, float("-inf")).logsumexp(dim=1)


def kl_topk(ref: TextReference, logprobs: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P_ref || Q) over the reference's top-k tokens plus one 'rest' bucket."""
    p_log, ids = ref.top_logprobs, ref.top_ids
    q_log = logprobs.gather(1, ids)
    head = (p_log.exp() * (p_log - q_log)).sum(dim=1)
    p_rest = ref.log_rest.exp()
    tail = torch.where(p_rest > 0, p_rest * (ref.log_rest - log_rest_outside(logprobs, ids)),
                       torch.zeros_like(p_rest))
    return head + tail


@torch.inference_mode()
def score_text(runtime: Runtime, windows: Sequence[Sequence[int]], reference: Optional[TextReference] = None,
               keep_top_k: int = 0) -> TextScores:
    """Perplexity of the model as loaded over the windows; against a reference also the per-position KL,
    top-1 agreement, delta-p and the reference's NLL; with keep_top_k the data that make this model a
    reference."""
    scores = TextScores()
    offset = 0
    for window in windows:
        logits = runtime.logits(list(window))[:-1]
        targets = torch.tensor(list(window)[1:], device=logits.device)
        for s in range(0, len(targets), CHUNK):
            chunk = logits[s:s + CHUNK].float()
            finite = torch.isfinite(chunk).all(dim=1)
            scores.non_finite |= not bool(finite.all())
            logprobs = torch.log_softmax(chunk, dim=-1)
            nll = -logprobs.gather(1, targets[s:s + CHUNK, None])[:, 0]
            scores.nll_sum += nll.sum().item()
            if reference is not None:
                part = reference.rows(slice(offset + s, offset + s + len(chunk)), chunk.device)
                kl = kl_topk(part, logprobs)
                scores.kl_sum += kl.sum().item()
                scores.kl.append(kl.cpu())
                scores.top1_same += ((logprobs.argmax(dim=1) == part.top_ids[:, 0]) & finite).sum().item()
                p_top = logprobs.gather(1, part.top_ids[:, :1])[:, 0].exp()
                scores.delta_p_squares += ((p_top - part.top_logprobs[:, 0].exp()) ** 2).sum().item()
                scores.reference_nll_sum += part.nll.sum().item()  # summed as nll_sum is: 0 against itself
            if keep_top_k:
                top = logprobs.topk(min(keep_top_k, logprobs.shape[1]), dim=1)
                scores.top_logprobs.append(top.values.cpu())
                scores.top_ids.append(top.indices.cpu())
                scores.log_rest.append(log_rest_outside(logprobs, top.indices).cpu())
                scores.nll.append(nll.cpu())
        offset += len(targets)
        scores.positions += len(targets)
        del logits
    return scores


def as_reference(scores: TextScores) -> TextReference:
    return TextReference(torch.cat(scores.top_logprobs), torch.cat(scores.top_ids), torch.cat(scores.log_rest),
                         torch.cat(scores.nll))
