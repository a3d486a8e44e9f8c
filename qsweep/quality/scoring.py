"""A model's scores on the evaluation windows: perplexity, and against the fp32 reference the KL
divergence (see the package's docstring) with its distribution over positions, the top-1 agreement, the
RMS change of fp32's top token's probability and the log perplexity ratio, each mean with its standard error.

A mean KL hides the few positions where a quantized model goes wrong: its high percentiles and maximum
show them (the figures quantization tools report, with RMS delta-p, for the same reason).

Standard errors (batch means): neighbouring tokens' figures are correlated (a hard passage is hard for
several tokens), so the per-token SE that assumes independent tokens (llama-perplexity's) can be too small.
The scored positions, in text order, are cut into consecutive blocks of SE_BLOCK; the SE of the mean is the
standard deviation of the block means / sqrt(number of blocks). Correlation shorter than a block is inside
a block mean and counted; blocks are close to independent. Fewer than two blocks: the per-token SE."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from qsweep.backends import Runtime

CHUNK = 128  # positions per log-softmax chunk: bounds memory with a 262k-token vocabulary
KL_QUANTILES = {"median": 0.5, "p99": 0.99, "p999": 0.999}
SE_BLOCK = 32  # positions per block of the batch-means standard error (module docstring)
TAIL_SEED = 0  # the tail samples of a reference are drawn from a generator with this seed: reproducible


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per token (nats); inf where it would overflow."""
    return math.exp(mean_nll) if mean_nll < 700 else float("inf" if mean_nll >= 700 else "nan")


def batch_means_se(values: torch.Tensor, block: int = SE_BLOCK) -> float:
    """Standard error of the mean of `values` (in text order) by batch means: the standard deviation
    (n - 1) of the means of consecutive blocks of `block` values (the last, shorter block folded into the
    one before), over sqrt(number of blocks). Fewer than two blocks: blocks of one value (per-token SE).
    NaN for fewer than two values."""
    values = values.double().flatten()
    if values.numel() < 2:
        return math.nan
    count = values.numel() // block if values.numel() >= 2 * block else values.numel()
    size = values.numel() // count
    means = torch.stack([part.mean() for part in values[:size * (count - 1)].split(size)]
                        + [values[size * (count - 1):].mean()])
    return (means.std() / math.sqrt(count)).item()


@dataclass
class TextReference:
    """fp32's next-token distributions: the top-k log-probs + ids, the log of the remaining mass, and
    tokens drawn from that remainder (with replacement, in proportion to their probability) with their
    log-probs: an unbiased estimate of the part of the KL the top k leave out."""
    top_logprobs: torch.Tensor  # [positions, k] float32, sorted, most likely first
    top_ids: torch.Tensor  # [positions, k] int64
    log_rest: torch.Tensor  # [positions] float32: log(1 - sum of the top-k probabilities)
    nll: torch.Tensor  # [positions] float32: -log of the probability of the text's next token
    tail_logprobs: torch.Tensor  # [positions, m] float32
    tail_ids: torch.Tensor  # [positions, m] int64

    def tensors(self) -> List[torch.Tensor]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]  # astuple would copy them

    def rows(self, rows: slice, device) -> "TextReference":
        return TextReference(*(t[rows].to(device) for t in self.tensors()))


@dataclass
class TextScores:
    """Per-position figures, in text order; against a reference, or as one (keep)."""
    nll: List[torch.Tensor] = field(default_factory=list)  # -log p(next token)
    non_finite: bool = False
    kl: List[torch.Tensor] = field(default_factory=list)  # per-position KL, against a reference
    top1_same: List[torch.Tensor] = field(default_factory=list)  # 1: the run's top token is fp32's
    delta_p: List[torch.Tensor] = field(default_factory=list)  # p_run - p_fp32 of fp32's top token
    reference_nll: List[torch.Tensor] = field(default_factory=list)
    keep: List[TextReference] = field(default_factory=list)  # when keeping a reference

    @property
    def positions(self) -> int:
        return sum(len(t) for t in self.nll)

    @property
    def perplexity(self) -> float:
        return perplexity(torch.cat(self.nll).double().mean().item())


def kl_distribution(kl: torch.Tensor) -> dict:
    """Median, 99th and 99.9th percentile (linear interpolation between the closest ranks, numpy's
    default) and maximum of per-position KL values; NaN when any value is NaN."""
    values = kl.double()
    quantiles = torch.quantile(values, torch.tensor(list(KL_QUANTILES.values()), dtype=torch.float64))
    return {**dict(zip(KL_QUANTILES, quantiles.tolist())), "max": values.max().item()}


def _mean_se(values: torch.Tensor) -> tuple:
    return values.double().mean().item(), batch_means_se(values)


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
    kl_div_se: float = 0.0  # standard errors of the three means (batch means, module docstring)
    top1_agreement_se: float = 0.0
    ln_ppl_ratio_se: float = 0.0

    @classmethod
    def of_reference(cls, scores: TextScores) -> "TextQuality":
        """The reference's own scores: no divergence from itself (and no uncertainty about that)."""
        return cls(scores.perplexity, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, scores.non_finite, scores.positions)

    @classmethod
    def against_reference(cls, scores: TextScores) -> "TextQuality":
        kl, same = torch.cat(scores.kl), torch.cat(scores.top1_same).double()
        ratio = torch.cat(scores.nll).double() - torch.cat(scores.reference_nll).double()
        spread = kl_distribution(kl)
        (kl_mean, kl_se), (top1, top1_se), (ln_ratio, ln_ratio_se) = map(_mean_se, (kl, same, ratio))
        return cls(scores.perplexity, kl_mean, spread["median"], spread["p99"], spread["p999"], spread["max"], top1,
                   torch.cat(scores.delta_p).double().square().mean().sqrt().item(), ln_ratio, scores.non_finite,
                   scores.positions, kl_se, top1_se, ln_ratio_se)


def log_rest_outside(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability of every token not in `ids`, per row, computed without cancellation."""
    return logprobs.scatter(1, ids, float("-inf")).logsumexp(dim=1)


def kl_estimate(ref: TextReference, logprobs: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P_ref || Q), by the chain rule over {top k, the rest}: exact over the top-k tokens
    and the rest as one bucket (the coarsened KL, a lower bound), plus P_rest x KL of the two distributions
    within the rest, estimated without bias by the mean log-ratio of the tokens drawn from the rest."""
    p_log, ids = ref.top_logprobs, ref.top_ids
    head = (p_log.exp() * (p_log - logprobs.gather(1, ids))).sum(dim=1)
    q_rest, p_rest = log_rest_outside(logprobs, ids), ref.log_rest.exp()
    tail = ref.log_rest - q_rest
    if ref.tail_ids.shape[1]:  # none drawn: the bucket alone (the lower bound)
        tail = tail + ((ref.tail_logprobs - ref.log_rest[:, None])
                       - (logprobs.gather(1, ref.tail_ids) - q_rest[:, None])).mean(dim=1)
    return head + torch.where(p_rest > 0, p_rest * tail, torch.zeros_like(tail))


def keep_reference(logprobs: torch.Tensor, nll: torch.Tensor, top_k: int, tail: int,
                   generator: torch.Generator) -> TextReference:
    """What makes these rows a reference: top k, the rest's log mass, `tail` tokens drawn from the rest."""
    top = logprobs.topk(min(top_k, logprobs.shape[1]), dim=1)
    log_rest = log_rest_outside(logprobs, top.indices)
    draws = tail if top.indices.shape[1] < logprobs.shape[1] else 0
    rest = logprobs.exp().scatter(1, top.indices, 0.0).cpu()
    empty = rest.sum(dim=1) <= 0  # all mass in the top k (or underflow): any draw, weighted by P_rest = 0
    rest[empty] = 1.0
    tail_ids = torch.multinomial(rest, draws, replacement=True, generator=generator).to(logprobs.device) \
        if draws else torch.zeros(len(rest), 0, dtype=torch.long, device=logprobs.device)
    return TextReference(top.values.cpu(), top.indices.cpu(), log_rest.cpu(), nll.cpu(),
                         logprobs.gather(1, tail_ids).cpu(), tail_ids.cpu())


@torch.inference_mode()
def score_text(runtime: Runtime, windows: Sequence[Sequence[int]], reference: Optional[TextReference] = None,
               keep: tuple = (), scored_from: int = 0) -> TextScores:
    """Per-position figures of the model as loaded over the windows: its NLL; against a reference also
    the KL, top-1 agreement, delta-p and the reference's NLL; with keep = (top k, tail draws) the data
    that make this model a reference. scored_from: the positions of each window before it are context only
    (llama-perplexity's windows score their second half)."""
    scores = TextScores()
    generator = torch.Generator().manual_seed(TAIL_SEED)
    offset = 0
    for window in windows:
        logits = runtime.logits(list(window))[:-1][scored_from:]
        targets = torch.tensor(list(window)[1:][scored_from:], device=logits.device)
        for s in range(0, len(targets), CHUNK):
            chunk = logits[s:s + CHUNK].float()
            finite = torch.isfinite(chunk).all(dim=1)
            scores.non_finite |= not bool(finite.all())
            logprobs = torch.log_softmax(chunk, dim=-1)
            nll = -logprobs.gather(1, targets[s:s + CHUNK, None])[:, 0]
            scores.nll.append(nll.cpu())
            if reference is not None:
                part = reference.rows(slice(offset + s, offset + s + len(chunk)), chunk.device)
                scores.kl.append(kl_estimate(part, logprobs).cpu())
                scores.top1_same.append(((logprobs.argmax(dim=1) == part.top_ids[:, 0]) & finite).cpu())
                p_top = logprobs.gather(1, part.top_ids[:, :1])[:, 0].exp()
                scores.delta_p.append((p_top - part.top_logprobs[:, 0].exp()).cpu())
                scores.reference_nll.append(part.nll.cpu())
            if keep:
                scores.keep.append(keep_reference(logprobs, nll, *keep, generator))
        offset += len(targets)
        del logits
    return scores


def as_reference(scores: TextScores) -> TextReference:
    return TextReference(*(torch.cat(parts) for parts in zip(*(r.tensors() for r in scores.keep))))
