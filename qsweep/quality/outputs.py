"""Greedy outputs: how far a run reproduces fp32's, and whether they are broken (empty, a loop)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Set

# Two kinds of loop, each judged on one prompt's output with special tokens left out, over at least
# LOOP_SHARE of the output (a loop that starts late, after an answer, is not flagged):
# - repetition_loop: one n-gram of at most LOOP_MAX_N tokens repeated back to back (and at least
#   LOOP_MIN_TOKENS tokens), the classic collapse of a broken quantization ("the the the ...").
# - sentence_loop: a longer span, a sentence or clause, repeated back to back at least SENTENCE_COPIES times
#   in a row (what gemma fp32 and the fine-tune do on some prompts: "I'm sorry to hear that. I'm sorry ...").
#   Three copies, not two: prose can say a phrase twice, and sentences that share words differ somewhere,
#   but three verbatim copies in a row are not language, and greedy decoding that got there stays there.
LOOP_MAX_N, LOOP_SHARE, LOOP_MIN_TOKENS = 4, 0.5, 8
SENTENCE_COPIES = 3


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


def periodic_stretch(ids: Sequence[int], n: int) -> int:
    """Tokens covered by the longest stretch of `ids` made of one span of n tokens repeated back to back
    (the last copy may be cut short); 0 when no token equals the one n before it."""
    best = run = 0
    for i in range(n, len(ids)):
        run = run + 1 if ids[i] == ids[i - n] else 0
        if run:
            best = max(best, run + n)
    return best


def repetition_loop(ids: Sequence[int], max_n: int = LOOP_MAX_N) -> tuple:
    """The longest stretch made of one n-gram (n <= max_n) repeated back to back: (n, tokens covered)."""
    n, covered = max(((n, periodic_stretch(ids, n)) for n in range(1, max_n + 1)), key=lambda nc: nc[1])
    return (n, covered) if covered else (0, 0)


def loop(ids: Sequence[int], special: Set[int]) -> Optional[str]:
    """"repetition_loop", "sentence_loop" (see above) or None, for one output."""
    words = [t for t in ids if t not in special]
    share = LOOP_SHARE * len(ids)
    if words and repetition_loop(words)[1] >= max(LOOP_MIN_TOKENS, share):
        return "repetition_loop"
    for n in range(LOOP_MAX_N + 1, len(words) // SENTENCE_COPIES + 1):
        if periodic_stretch(words, n) >= max(SENTENCE_COPIES * n, share):
            return "sentence_loop"
    return None


def degenerate_reasons(texts: Sequence[str], output_ids: Sequence[Sequence[int]], non_finite_logits: bool,
                       special_ids: Sequence[int] = ()) -> List[str]:
    """Why the output is broken, in a fixed order: non_finite_logits, empty_output, repetition_loop,
    sentence_loop. Empty: some prompt's output is whitespace once special tokens are skipped. Loops: some
    prompt's output is mostly one short n-gram, or one sentence, repeated back to back."""
    reasons = ["non_finite_logits"] if non_finite_logits else []
    if any(not text.strip() for text in texts):
        reasons.append("empty_output")
    loops = {loop(ids, set(special_ids)) for ids in output_ids}
    return reasons + [kind for kind in ("repetition_loop", "sentence_loop") if kind in loops]


def broken_beyond_reference(texts: Sequence[str], output_ids: Sequence[Sequence[int]], reference_texts: Sequence[str],
                            reference_ids: Sequence[Sequence[int]], special_ids: Sequence[int] = ()) -> List[str]:
    """What the setting broke, not what the model does anyway: the reasons some prompt's output is broken
    where the reference's (fp32's) output for the same prompt is not. A small base model loops on some
    prompts at fp32 too; a quantization that loops on the same prompts has not made it worse."""
    found = set()
    for text, ids, ref_text, ref_ids in zip(texts, output_ids, reference_texts, reference_ids):
        already = degenerate_reasons([ref_text], [ref_ids], False, special_ids)
        found.update(r for r in degenerate_reasons([text], [ids], False, special_ids) if r not in already)
    return [kind for kind in ("empty_output", "repetition_loop", "sentence_loop") if kind in found]
