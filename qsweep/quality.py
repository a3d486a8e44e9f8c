"""Output quality, measured in the same run as speed: perplexity on a fixed text, divergence from the
fp32 model of the same checkpoint, agreement of greedy outputs, and a check for broken output.

Runs after the timed generation, outside every timed and memory-tracked region. Everything is
deterministic: a fixed text, fixed windows, greedy outputs.

The fp32 reference is made once per (checkpoint, evaluation windows, device) and stored under
<cache_dir>/references/: for every scored position the top-k log-probabilities of the fp32 model,
their token ids, and the log of the probability left outside the top k. Greedy outputs of the fp32
model are stored separately, per (checkpoint, prompts, max_new_tokens, device). An fp32 job writes
both from its own work; any other job finds them, or builds them once (loading the checkpoint in
fp32 on its device) under a file lock.

KL divergence with the top-k reference (the approximation): KL(P_fp32 || Q_run) is computed over the
reference's top-k tokens plus one bucket "every other token", i.e. between the two distributions
coarsened to k + 1 outcomes. By the log-sum inequality this never exceeds the exact KL; it misses only
how the two models share out the reference's tail mass among tail tokens (with k = 64 that tail is a
few percent of the mass or less at most positions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from qsweep import environment, sources
from qsweep.backends import Files, Runtime
from qsweep.config import BackendConfig, PrecisionConfig, RunConfig
from qsweep.sources import Checkpoint

WINDOW = 1024  # tokens per evaluation window (less when the model's context is shorter)
TOP_K = 64  # reference log-probabilities kept per position
CHUNK = 128  # positions per log-softmax chunk: bounds memory with a 262k-token vocabulary
FORMAT = 1  # bump when the stored reference changes meaning
# Repetition loop: one n-gram of at most LOOP_MAX_N tokens repeated back to back over at least
# LOOP_SHARE of an output (and at least LOOP_MIN_TOKENS tokens). Sentence-level repetition, which
# real small models produce a lot, has a longer period and is not flagged.
LOOP_MAX_N, LOOP_SHARE, LOOP_MIN_TOKENS = 4, 0.5, 8
NOT_APPLICABLE = "not_applicable"


@dataclass
class QualityMetrics:
    """Names are the MLflow metric names. NaN: could not be computed (see degenerate_reason)."""
    perplexity: float
    kl_div_vs_fp32: float  # mean over positions, nats, top-k approximation (module docstring)
    top1_agreement_vs_fp32: float  # share of positions whose most likely token is fp32's
    output_match_vs_fp32: float  # share of generated tokens equal to fp32's, up to the first difference
    degenerate_output: int  # 1: empty output, non-finite logits or a repetition loop
    quality_time_s: float


@dataclass
class QualityResult:
    metrics: QualityMetrics
    degenerate_reason: str  # "none", or the reasons joined by ","
    reference: str  # "self" (an fp32 job), "reused" (found in the cache) or "built" (by this job)
    fp32_outputs: List[List[int]]  # fp32's greedy output ids, per prompt
    scores: str  # "measured" by this job, or "reused" from an earlier job of the same setting
    details: dict = field(default_factory=dict)  # the quality.json artifact


# ---------------------------------------------------------------- the evaluation text and windows

def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per token (nats); inf where it would overflow."""
    return math.exp(mean_nll) if mean_nll < 700 else float("inf" if mean_nll >= 700 else "nan")


def eval_text_file():
    return resources.files("qsweep").joinpath("data", "eval_text.txt")


def eval_text() -> str:
    return eval_text_file().read_text(encoding="utf-8")


def starts_with_bos(tokenizer) -> bool:
    return tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]


def eval_windows(tokenizer, text: str, window: int) -> List[List[int]]:
    """The text's tokens cut into equal windows of at most `window` tokens. When the tokenizer starts
    sequences with BOS, every window starts with BOS (so every text token is predicted); otherwise the
    first token of each window is context only."""
    # verbose=False: the whole text is longer than the context, on purpose (it is cut into windows below)
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    prefix = [tokenizer.bos_token_id] if starts_with_bos(tokenizer) else []
    count = math.ceil(len(ids) / (window - len(prefix)))
    cuts = [len(ids) * i // count for i in range(count + 1)]  # equal windows: no short tail with little context
    return [prefix + ids[a:b] for a, b in zip(cuts, cuts[1:])]


# ---------------------------------------------------------------- scoring a model on the windows

@dataclass
class TextScores:
    nll_sum: float = 0.0
    positions: int = 0
    non_finite: bool = False
    kl_sum: float = 0.0
    top1_same: int = 0
    top_logprobs: List[torch.Tensor] = field(default_factory=list)  # when keeping a reference
    top_ids: List[torch.Tensor] = field(default_factory=list)
    log_rest: List[torch.Tensor] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll_sum / self.positions)


@dataclass
class TextReference:
    """fp32's next-token distributions, as top-k log-probs + ids + log of the remaining mass."""
    top_logprobs: torch.Tensor  # [positions, k] float32, sorted, most likely first
    top_ids: torch.Tensor  # [positions, k] int64
    log_rest: torch.Tensor  # [positions] float32: log(1 - sum of the top-k probabilities)


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
    """Perplexity of the model as loaded over the windows; against a reference also the KL and top-1
    agreement; with keep_top_k the top-k data that make this model a reference."""
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
            scores.nll_sum -= logprobs.gather(1, targets[s:s + CHUNK, None]).sum().item()
            if reference is not None:
                rows = slice(offset + s, offset + s + len(chunk))
                part = TextReference(reference.top_logprobs[rows], reference.top_ids[rows], reference.log_rest[rows])
                part = TextReference(*(t.to(chunk.device) for t in dataclasses.astuple(part)))
                scores.kl_sum += kl_topk(part, logprobs).sum().item()
                scores.top1_same += ((logprobs.argmax(dim=1) == part.top_ids[:, 0]) & finite).sum().item()
            if keep_top_k:
                top = logprobs.topk(min(keep_top_k, logprobs.shape[1]), dim=1)
                scores.top_logprobs.append(top.values.cpu())
                scores.top_ids.append(top.indices.cpu())
                scores.log_rest.append(log_rest_outside(logprobs, top.indices).cpu())
        offset += len(targets)
        scores.positions += len(targets)
        del logits
    return scores


def as_reference(scores: TextScores) -> TextReference:
    return TextReference(torch.cat(scores.top_logprobs), torch.cat(scores.top_ids), torch.cat(scores.log_rest))


# ---------------------------------------------------------------- greedy outputs and broken output

def matching_tokens(output: Sequence[int], reference: Sequence[int]) -> int:
    """How many leading tokens of output equal the reference's, up to the first difference."""
    same = 0
    for a, b in zip(output, reference):
        if a != b:
            break
        same += 1
    return same


def output_match(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Per prompt, the share of the reference's tokens matched before the first difference; mean."""
    shares = [matching_tokens(out, ref) / max(len(ref), 1) for out, ref in zip(outputs, reference)]
    return sum(shares) / len(shares)


def repetition_loop(ids: Sequence[int], max_n: int = LOOP_MAX_N) -> tuple:
    """The longest stretch made of one n-gram (n <= max_n) repeated back to back: (n, tokens covered)."""
    best = (0, 0)
    for n in range(1, max_n + 1):
        run = 0
        for i in range(n, len(ids)):
            run = run + 1 if ids[i] == ids[i - n] else 0
            if run and run + n > best[1]:
                best = (n, run + n)
    return best


def degenerate_reasons(texts: Sequence[str], output_ids: Sequence[Sequence[int]], non_finite_logits: bool,
                       special_ids: Sequence[int] = ()) -> List[str]:
    """Why the output is broken, in a fixed order: non_finite_logits, empty_output, repetition_loop.
    Empty: some prompt's output is whitespace once special tokens are skipped. Loop: some prompt's output
    (special tokens left out) is mostly one short n-gram repeated back to back."""
    reasons = []
    if non_finite_logits:
        reasons.append("non_finite_logits")
    if any(not text.strip() for text in texts):
        reasons.append("empty_output")
    special = set(special_ids)
    for ids in output_ids:
        words = [t for t in ids if t not in special]
        _, covered = repetition_loop(words)
        if words and covered >= max(LOOP_MIN_TOKENS, LOOP_SHARE * len(ids)):
            reasons.append("repetition_loop")
            break
    return reasons


# ---------------------------------------------------------------- the stored fp32 reference

@dataclass
class TextQuality:
    """A setting's scores on the evaluation text: the same at every batch size and prompt length."""
    perplexity: float
    kl_div: float
    top1_agreement: float
    non_finite: bool
    positions: int


def _load_scores(path: Path) -> Optional[TextQuality]:
    return TextQuality(**json.loads(path.read_text())) if path.is_file() else None


def _save_scores(text: TextQuality, path: Path) -> None:
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(handle, "w") as file:
        json.dump(dataclasses.asdict(text), file)
    os.chmod(staging, 0o644)
    os.replace(staging, path)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True).encode()).hexdigest()[:16]


def _save_atomic(tensors: dict, path: Path, metadata: dict) -> None:
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, staging,
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.chmod(staging, 0o644)  # mkstemp makes it private; the cache is shared like the checkpoints
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


@dataclass
class ReferencePaths:
    text: Path
    greedy: Path
    scores: Path  # this setting's text scores, reused by every job of it (batch sizes, prompt lengths)
    lock: Path


def reference_paths(cfg: RunConfig, checkpoint_path: str, windows, prompt_ids: List[List[int]]) -> ReferencePaths:
    folder = Path(cfg.paths.cache_dir).expanduser() / "references"
    fingerprint = sources.fingerprint(checkpoint_path)
    text_key = _key(fingerprint, cfg.device.name, windows, TOP_K)
    greedy_key = _key(fingerprint, cfg.device.name, prompt_ids, cfg.generation.max_new_tokens)
    # the text scores depend on the weights, windows, runtime, precision, device and library versions only
    scores_key = _key(text_key, dataclasses.asdict(cfg.backend), dataclasses.asdict(cfg.precision),
                      environment.package_versions())
    return ReferencePaths(folder / f"text-{text_key}.safetensors", folder / f"greedy-{greedy_key}.safetensors",
                          folder / f"scores-{scores_key}.json", folder / f"{_key(fingerprint, cfg.device.name)}.lock")


def load_text_reference(path: Path) -> TextReference:
    data = load_file(str(path))
    return TextReference(data["top_logprobs"], data["top_ids"].long(), data["log_rest"])


def save_text_reference(ref: TextReference, path: Path, metadata: dict) -> None:
    _save_atomic({"top_logprobs": ref.top_logprobs, "top_ids": ref.top_ids.int(), "log_rest": ref.log_rest},
                 path, metadata)


def load_greedy(path: Path) -> List[List[int]]:
    return load_file(str(path))["output_ids"].tolist()


def save_greedy(outputs: List[List[int]], path: Path, metadata: dict) -> None:
    _save_atomic({"output_ids": torch.tensor(outputs, dtype=torch.long)}, path, metadata)


def _build_references(cfg: RunConfig, checkpoint: Checkpoint, paths: ReferencePaths, windows, prompt_ids) -> None:
    """Load the checkpoint as the reference runtime (transformers, fp32) on the run's device and store
    whatever reference is missing."""
    from qsweep import backends, measure

    fp32 = dataclasses.replace(cfg, precision=PrecisionConfig(name="fp32", dtype="float32"),
                               backend=BackendConfig(), generation=dataclasses.replace(
                                   cfg.generation, warmup=0, repeats=1, compile=False, batch_size=1))
    reference = backends.get(fp32.backend.name).load(fp32, checkpoint, Files(checkpoint.path))
    try:
        meta = {"checkpoint": checkpoint.path, "device": cfg.device.name, "built_by": "reference build"}
        if not paths.text.is_file():
            save_text_reference(as_reference(score_text(reference, windows, keep_top_k=TOP_K)), paths.text, meta)
        if not paths.greedy.is_file():
            _, outputs = measure.generate_timed(reference, prompt_ids, fp32.generation, cfg.device.name)
            save_greedy([o.output_ids for o in outputs], paths.greedy, meta)
    finally:
        del reference


def _build_missing_references(cfg: RunConfig, checkpoint: Checkpoint, paths: ReferencePaths, windows,
                              prompt_ids) -> bool:
    """Build whatever reference is missing, under the lock; True when this job built it (False when it
    was there, or another job built it while this one waited)."""
    if paths.text.is_file() and paths.greedy.is_file():
        return False
    with FileLock(str(paths.lock)):
        if paths.text.is_file() and paths.greedy.is_file():
            return False
        _build_references(cfg, checkpoint, paths, windows, prompt_ids)
        return True


# ---------------------------------------------------------------- one job's quality

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
    window = min(WINDOW, runtime.context_length or WINDOW, runtime.max_scored_length or WINDOW)
    windows = eval_windows(tokenizer, eval_text(), window)
    outputs = [g.output_ids for g in generations]
    prompt_ids = [g.prompt_ids for g in generations]
    paths = reference_paths(cfg, checkpoint.path, windows, prompt_ids)
    paths.text.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": checkpoint.path, "device": cfg.device.name, "windows": len(windows),
            "window": window, "top_k": TOP_K}

    text = _load_scores(paths.scores)  # measured by an earlier job of this setting: reused
    scores_origin = "reused" if text else "measured"
    if runtime.is_fp32_reference:  # this job is the reference: store it when missing
        if text is None or not paths.text.is_file():
            scores = score_text(runtime, windows, keep_top_k=TOP_K)
            text = text or TextQuality(scores.perplexity, 0.0, 1.0, scores.non_finite, scores.positions)
        with FileLock(str(paths.lock)):
            if not paths.text.is_file():
                save_text_reference(as_reference(scores), paths.text, {**meta, "built_by": "fp32 job"})
            if not paths.greedy.is_file() and cfg.generation.batch_size == 1:  # the reference is batch 1's
                save_greedy(outputs, paths.greedy, {**meta, "built_by": "fp32 job"})
        _build_missing_references(cfg, checkpoint, paths, windows, prompt_ids)  # a batched job's greedy one
        fp32_outputs, origin = load_greedy(paths.greedy), "self"
    else:
        built = _build_missing_references(cfg, checkpoint, paths, windows, prompt_ids)
        fp32_outputs, origin = load_greedy(paths.greedy), "built" if built else "reused"
        if text is None:
            scores = score_text(runtime, windows, reference=load_text_reference(paths.text))
            text = TextQuality(scores.perplexity, scores.kl_sum / scores.positions, scores.top1_same / scores.positions,
                               scores.non_finite, scores.positions)
    if scores_origin == "measured":
        _save_scores(text, paths.scores)

    special = set(getattr(tokenizer, "all_special_ids", []))
    reasons = degenerate_reasons(texts, outputs, text.non_finite, special)
    metrics = QualityMetrics(
        perplexity=_finite_or_nan(text.perplexity), kl_div_vs_fp32=_finite_or_nan(text.kl_div),
        top1_agreement_vs_fp32=text.top1_agreement, output_match_vs_fp32=output_match(outputs, fp32_outputs),
        degenerate_output=int(bool(reasons)), quality_time_s=time.perf_counter() - start)
    details = {"eval_positions": text.positions, "windows": len(windows), "window": window, "top_k": TOP_K,
               "reference": origin, "reference_file": paths.text.name, "greedy_reference_file": paths.greedy.name,
               "text_scores": scores_origin, "text_scores_file": paths.scores.name,
               "degenerate_reasons": reasons,
               "degenerate_by_prompt": [",".join(degenerate_reasons([text], [ids], False, special)) or "none"
                                        for text, ids in zip(texts, outputs)],
               "repetition": [dict(zip(("n", "tokens"), repetition_loop([t for t in o if t not in special])))
                              for o in outputs],
               "kl_approximation": f"top-{TOP_K} of fp32 plus one bucket for the rest (a lower bound)",
               **dataclasses.asdict(metrics)}
    return QualityResult(metrics, ",".join(reasons) or "none", origin, fp32_outputs, scores_origin, details)
