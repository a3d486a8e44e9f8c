"""The evaluation text shipped in the package, and its cut into windows the model scores."""

from __future__ import annotations

import math
from importlib import resources
from typing import List

WINDOW = 1024  # tokens per evaluation window (less when the model's context is shorter)


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
