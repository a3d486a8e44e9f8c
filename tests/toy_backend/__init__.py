"""A fourth backend that lives outside qsweep: this module and conf/backend/toy.yaml beside it, nothing
else. It "generates" by counting up from the last prompt token, and predicts that count with certainty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import torch

from qsweep.backends import BackendUnsupported, Files, PrecisionCheck, Runtime
from qsweep.config import BackendConfig, RunConfig
from qsweep.sources import Checkpoint


@dataclass
class ToyConfig(BackendConfig):
    name: str = "toy"
    step: int = 1  # how far each new token counts up
    vocab_size: int = 97


def label(cfg: RunConfig) -> str:
    return f"toy step {cfg.backend.step}"


def check(cfg: RunConfig) -> None:
    if cfg.precision.quantization != "none":
        raise BackendUnsupported(f"backend=toy cannot run precision={cfg.precision.name}: use fp32")


def prepare(cfg: RunConfig, checkpoint: Checkpoint) -> Files:
    return Files(checkpoint.path)


def load(cfg: RunConfig, checkpoint: Checkpoint, files: Files) -> "ToyRuntime":
    return ToyRuntime(cfg.backend)


class ToyRuntime(Runtime):
    def __init__(self, options: ToyConfig):
        self.step, self.vocab_size, self.context_length = options.step, options.vocab_size, 4096
        self.precision = PrecisionCheck(f"toy step {self.step}", {"step": self.step})

    def generate(self, prompts: List[List[int]], max_new_tokens: int,
                 on_first_token: Callable[[], None]) -> List[List[int]]:
        on_first_token()
        return [[(p[-1] + self.step * (i + 1)) % self.vocab_size for i in range(max_new_tokens)] for p in prompts]

    def logits(self, ids: List[int]) -> torch.Tensor:
        out = torch.full((len(ids), self.vocab_size), -1e4)
        out[torch.arange(len(ids)), (torch.tensor(ids) + self.step) % self.vocab_size] = 0.0
        return out
