"""The evaluation text (quality.text, read by qsweep.textsource) and its cut into the windows a model scores:
qsweep's equal windows, every token scored, or llama-perplexity's fixed windows, the second half scored."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import List, Optional

from qsweep.config import ConfigError, QualityConfig
from qsweep.textsource import BUILTIN, EvalText, read

WINDOW = 1024  # tokens per evaluation window (less when the model's context is shorter)
PERPLEXITY_WINDOW = 512  # llama-perplexity's default context (-c)


def eval_text_file():
    return resources.files("qsweep").joinpath("data", "eval_text.txt")


def eval_text() -> str:
    """The built-in text (also the source of prompts of a set length)."""
    return read(BUILTIN).text


def starts_with_bos(tokenizer) -> bool:
    return tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]


def eval_windows(tokenizer, text: str, window: int, max_tokens: Optional[int] = None) -> List[List[int]]:
    """The text's tokens (the first max_tokens) cut into equal windows of at most `window` tokens. When the
    tokenizer starts sequences with BOS, every window starts with BOS (so every text token is predicted);
    otherwise the first token of each window is context only."""
    # verbose=False: the whole text is longer than the context, on purpose (it is cut into windows below)
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids[:max_tokens]
    prefix = [tokenizer.bos_token_id] if starts_with_bos(tokenizer) else []
    count = math.ceil(len(ids) / (window - len(prefix)))
    cuts = [len(ids) * i // count for i in range(count + 1)]  # equal windows: no short tail with little context
    return [prefix + ids[a:b] for a, b in zip(cuts, cuts[1:])]


def perplexity_windows(tokenizer, text: str, window: int, name: str = "the text") -> List[List[int]]:
    """llama-perplexity's chunks: the text's tokens (after BOS, when the tokenizer adds one) cut into
    consecutive windows of exactly `window` tokens, the first token of each replaced by BOS; a short
    tail is dropped."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    bos = starts_with_bos(tokenizer)
    tokens = ([tokenizer.bos_token_id] if bos else []) + ids
    if len(tokens) < window:
        raise ConfigError(f"quality.text={name} has {len(tokens)} tokens, fewer than one window of "
                         f"quality.context={window}: give a longer text or a smaller quality.context")
    chunks = [tokens[i:i + window] for i in range(0, len(tokens) - window + 1, window)]
    return [[tokenizer.bos_token_id] + c[1:] if bos else c for c in chunks]


@dataclass
class Windows:
    """What one job scores: the windows, and the positions of each before `scored_from` are context only."""
    text: EvalText
    windows: List[List[int]]
    window: int
    scored_from: int

    @property
    def scored_per_window(self) -> int:
        return self.window - 1 - self.scored_from


def windows_for(cfg: QualityConfig, tokenizer, longest: int) -> Windows:
    """The windows of quality.text by quality.method, at most `longest` tokens each (the model's context),
    the first quality.windows of them, within the budget of quality.max_tokens scored tokens (qsweep's:
    the text's first max_tokens tokens; llama-perplexity's: whole windows, at least one)."""
    text = read(cfg.text, cfg.text_field)
    if cfg.method == "qsweep":
        window = min(cfg.context or WINDOW, longest)
        return Windows(text, eval_windows(tokenizer, text.text, window, cfg.max_tokens)[:cfg.windows], window, 0)
    window = min(cfg.context or PERPLEXITY_WINDOW, longest)
    first = window // 2
    count = max(1, cfg.max_tokens // (window - 1 - first)) if cfg.max_tokens else None
    windows = perplexity_windows(tokenizer, text.text, window, cfg.text)[:cfg.windows][:count]
    return Windows(text, windows, window, first)
