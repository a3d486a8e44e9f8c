"""The restaurant dialogues: load the JSONL, keep its fixed split, and turn exchanges into token ids.

An example is the customer's words exactly as a user would type them to the model (the sweep's prompts
are such raw text), then a newline and the waiter's reply, then end of turn:

    <bos>hello may we see the menu\\nGood morning and welcome! Here is our menu. ...<eos>

Only the newline, the reply and <eos> are learned (labels elsewhere are ignored), so the model learns
to answer a customer, not to imitate one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

DATA_FILE = Path(__file__).resolve().parent / "data" / "restaurant_dialogues.jsonl"
SPLITS = ("train", "heldout")
IGNORE = -100  # label of tokens that are not learned (the prompt, padding)


@dataclass
class Exchange:
    id: str
    topic: str
    customer: str
    waiter: str


@dataclass
class Dialogues:
    train: List[Exchange]
    heldout: List[Exchange]


def load(path: Optional[str] = None, limit_train: Optional[int] = None,
         limit_heldout: Optional[int] = None) -> Dialogues:
    file = Path(path).expanduser() if path else DATA_FILE
    splits = {split: [] for split in SPLITS}
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("split") not in SPLITS or not row.get("customer") or not row.get("waiter"):
            raise ValueError(f"{file}:{number}: each line needs non-empty customer and waiter, "
                             f"and split one of {', '.join(SPLITS)}")
        splits[row["split"]].append(Exchange(row.get("id", f"line{number}"), row.get("topic", ""),
                                             row["customer"], row["waiter"]))
    if not splits["train"] or not splits["heldout"]:
        raise ValueError(f"{file}: needs both a train and a heldout split")
    return Dialogues(splits["train"][:limit_train], splits["heldout"][:limit_heldout])


def prompt_ids(tokenizer, customer: str) -> List[int]:
    """The prompt exactly as the sweep encodes it: the raw text with the tokenizer's special tokens."""
    return tokenizer(customer).input_ids


def reply_ids(tokenizer, waiter: str) -> List[int]:
    return tokenizer("\n" + waiter, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


@dataclass
class Encoded:
    input_ids: List[int]
    labels: List[int]  # IGNORE on the prompt, the token itself on the reply


def encode(exchange: Exchange, tokenizer, max_length: int) -> Encoded:
    prompt = prompt_ids(tokenizer, exchange.customer)
    reply = reply_ids(tokenizer, exchange.waiter)
    ids = (prompt + reply)[:max_length]
    labels = ([IGNORE] * len(prompt) + reply)[:max_length]
    return Encoded(ids, labels)


def encode_all(exchanges: List[Exchange], tokenizer, max_length: int) -> List[Encoded]:
    encoded = [encode(e, tokenizer, max_length) for e in exchanges]
    empty = [e.id for e, x in zip(exchanges, encoded) if all(label == IGNORE for label in x.labels)]
    if empty:
        raise ValueError(f"data.max_length={max_length} leaves no reply tokens in {', '.join(empty[:5])}: "
                         "raise data.max_length")
    return encoded


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def target_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def collate(examples: List[Encoded], pad_id: int) -> Batch:
    """Right-padded to the longest example of the batch."""
    width = max(len(x.input_ids) for x in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, x in enumerate(examples):
        n = len(x.input_ids)
        ids[row, :n] = torch.tensor(x.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(x.labels)
    return Batch(ids, mask, labels)


def batches(examples: List[Encoded], batch_size: int, pad_id: int,
            generator: Optional[torch.Generator] = None, pool: int = 8) -> List[Batch]:
    """One pass over the examples, in order; or, with a generator, shuffled, with each run of `pool`
    batches made from examples of similar length (less padding: about a third faster on CPU)."""
    if generator is None:
        return [collate(examples[i:i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
    order = torch.randperm(len(examples), generator=generator).tolist()
    out = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lambda i: len(examples[i].input_ids))
        out += [collate([examples[i] for i in chunk[j:j + batch_size]], pad_id)
                for j in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(out), generator=generator).tolist()
    return [out[i] for i in shuffled]
