"""The token ids a job generates from: the text prompts encoded by the checkpoint's tokenizer (each wrapped
as a user turn in the model's chat template with generation.chat_template=auto|required), or
(generation.prompt_tokens=N) prompts of exactly N tokens cut from the evaluation text, or, for a model
without a tokenizer (random weights), deterministic synthetic ids of the same lengths. Every runtime
generates from these ids, so each is fed exactly the same tokens.

A chat template is Jinja code from the model's files: transformers renders it in jinja2's
ImmutableSandboxedEnvironment (transformers/utils/chat_template_utils.py), which refuses attribute access to
Python internals and any mutation, so a template cannot run code of its own."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from qsweep.config import ConfigError, GenerationConfig, QualityConfig
from qsweep.quality import eval_text, starts_with_bos
from qsweep.textsource import read


def encode(gen: GenerationConfig, tokenizer, vocab_size: int, seed: int) -> Tuple[List[List[int]], List[str]]:
    """(token ids per prompt, the prompt as text): one prompt per entry of generation.prompts."""
    if gen.prompt_tokens is None:
        require_template(gen, "the model", tokenizer is not None and bool(tokenizer.chat_template))
        if tokenizer is not None and gen.chat_template != "none" and tokenizer.chat_template:
            return [chat_ids(tokenizer, p) for p in gen.prompts], list(gen.prompts)
        if tokenizer is not None:
            return [tokenizer(p).input_ids for p in gen.prompts], list(gen.prompts)
        lengths = [max(1, len(p) // 4) for p in gen.prompts]  # about one token per 4 characters, like text
        return _synthetic(lengths, vocab_size, seed), list(gen.prompts)
    lengths = [gen.prompt_tokens] * len(gen.prompts)
    if tokenizer is None:
        ids = _synthetic(lengths, vocab_size, seed)
        return ids, [f"{gen.prompt_tokens} synthetic tokens" for _ in ids]
    ids = _cut_from_eval_text(tokenizer, gen.prompt_tokens, len(gen.prompts))
    return ids, [tokenizer.decode(p, skip_special_tokens=True) for p in ids]


def chat_ids(tokenizer, prompt: str) -> List[int]:
    """The prompt as one user turn in the tokenizer's chat template, ready for the model's answer (the
    template writes its own special tokens, BOS included, so none are added on top)."""
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def require_template(gen: GenerationConfig, model: str, has_template: Optional[bool]) -> None:
    """generation.chat_template=required of a model without one: one line (has_template None: not known yet)."""
    if gen.chat_template == "required" and has_template is False:
        raise ConfigError(f"generation.chat_template=required, but {model} has no chat template (none in its "
                          "tokenizer files): use generation.chat_template=auto or none to measure it with raw prompts")


def _synthetic(lengths: List[int], vocab_size: int, seed: int) -> List[List[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def _cut_from_eval_text(tokenizer, length: int, count: int) -> List[List[int]]:
    """`count` prompts of exactly `length` tokens (BOS first where the tokenizer starts with it), each
    starting further into the text, which is repeated as often as a long prompt needs."""
    text = tokenizer(eval_text(), add_special_tokens=False, verbose=False).input_ids
    prefix = [tokenizer.bos_token_id] if starts_with_bos(tokenizer) else []
    body = length - len(prefix)
    stride = max(1, len(text) // count)
    repeated = text * (1 + (body + stride * count) // len(text))
    return [prefix + repeated[i * stride:i * stride + body] for i in range(count)]


def own_splits(runtime, prompts: List[str], evaluation: QualityConfig) -> Optional[str]:
    """Every runtime is fed the checkpoint tokenizer's ids, so quality compares the same tokens everywhere; this
    says where the runtime's own tokenizer (the one it would use when served) splits the evaluation text (the one
    quality.text names) or a text prompt otherwise: None where it has none, "same", or "differs: <which texts>"."""
    if runtime.tokenizer is None or runtime.own_tokens("") is None:
        return None
    texts = {"the evaluation text": read(evaluation.text, evaluation.text_field).text,
             **{f"prompt {i + 1}": p for i, p in enumerate(prompts)}}
    differs = [name for name, text in texts.items()
               if runtime.own_tokens(text) != runtime.tokenizer(text, verbose=False).input_ids]
    return f"differs: {', '.join(differs)}" if differs else "same"
