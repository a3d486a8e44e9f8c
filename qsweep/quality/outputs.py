"""Greedy outputs: how far a run reproduces fp32's, and whether they are broken (empty, a loop)."""

from __future__ import annotations

from typing import List, Sequence

# Repetition loop: one n-gram of at most LOOP_MAX_N tokens repeated back to back over at least
# LOOP_SHARE of an output (and at least LOOP_MIN_TOKENS tokens). Sentence-level repetition, which
# real small models produce a lot, has a longer period and is not flagged.
LOOP_MAX_N, LOOP_SHARE, LOOP_MIN_TOKENS = 4, 0.5, 8


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
