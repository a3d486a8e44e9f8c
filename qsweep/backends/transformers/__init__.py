"""transformers: the checkpoint as `from_pretrained` loads it, at fp32/fp16/bf16 or quantized by
bitsandbytes (int8 LLM.int8, int4 NF4/FP4), with HF `generate`. The default backend, and the one the
fp32 reference of the quality metrics is made with."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, List

import torch
from transformers import CompileConfig
from transformers import GenerationConfig as HFGenerationConfig
from transformers import LogitsProcessor, LogitsProcessorList

from qsweep.backends import Files, PrecisionCheck, Runtime, context_length, require_dequantized
from qsweep.backends.transformers import loader
from qsweep.config import BackendConfig, RunConfig
from qsweep.sources import Checkpoint


@dataclass
class TransformersConfig(BackendConfig):
    """No options of its own: the precision group says everything (dtype, bitsandbytes int8/int4)."""
    name: str = "transformers"


def label(cfg: RunConfig) -> str:
    """The runtime and its weight format, for the run's `runtime` tag and the report."""
    quantized = {"int8": "bitsandbytes LLM.int8", "int4": f"bitsandbytes {cfg.precision.quant_type}"}
    return f"transformers {quantized.get(cfg.precision.quantization, cfg.precision.dtype)}"


def check(cfg: RunConfig) -> None:
    """Everything transformers cannot run is refused by the schema (compile with bitsandbytes) or fails at
    load with its own one-line error (loader.explain_*); a GGUF model is loaded dequantized, where it can be."""
    require_dequantized(cfg)


def prepare(cfg: RunConfig, checkpoint: Checkpoint) -> Files:
    require_dequantized(cfg, checkpoint)
    return Files(checkpoint.path)


def load(cfg: RunConfig, checkpoint: Checkpoint, files: Files) -> "TransformersRuntime":
    return TransformersRuntime(loader.load(cfg, checkpoint), cfg)


class FirstTokenClock(LogitsProcessor):
    """Calls back the moment the first new token's logits exist (called once per decoding step)."""

    def __init__(self, on_first_token: Callable[[], None]):
        self.on_first_token, self.called = on_first_token, False

    def __call__(self, input_ids, scores):
        if not self.called:
            self.called = True
            self.on_first_token()
        return scores


class TransformersRuntime(Runtime):
    def __init__(self, loaded: loader.LoadedModel, cfg: RunConfig):
        self.model, self.tokenizer, self.load_time_s = loaded.model, loaded.tokenizer, loaded.load_time_s
        text_config = self.model.config.get_text_config()
        self.vocab_size = text_config.vocab_size
        self.context_length = context_length(text_config)
        self.footprint_gb = self.model.get_memory_footprint() / 1024**3
        self.precision = PrecisionCheck(loader.describe_precision(loaded.precision), asdict(loaded.precision))
        self.is_fp32_reference = cfg.precision.quantization == "none" and cfg.precision.dtype == "float32"
        self.compile = cfg.generation.compile
        self.device = cfg.device.name
        self.explain = lambda err: loader.explain_backend_error(err, cfg.precision, cfg.device.name)

    def _generation_config(self, max_new_tokens: int) -> HFGenerationConfig:
        # Built from scratch so a checkpoint's own sampling defaults cannot change the work done.
        eos = self.model.generation_config.eos_token_id
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        config = HFGenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                                    num_beams=1, eos_token_id=eos, pad_token_id=pad if pad is not None else 0)
        if self.compile:
            config.cache_implementation = "static"
            config.compile_config = CompileConfig()
            config.compile_config._compile_all_devices = True  # transformers compiles on GPUs only by default
        return config

    def generate(self, prompts: List[List[int]], max_new_tokens: int,
                 on_first_token: Callable[[], None]) -> List[List[int]]:
        config = self._generation_config(max_new_tokens)
        width = max(map(len, prompts))  # left padding: every sequence's new tokens start at the same column
        ids = torch.tensor([[config.pad_token_id] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        try:
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          logits_processor=LogitsProcessorList([FirstTokenClock(on_first_token)]))
        except RuntimeError as err:
            raise self.explain(err) from err
        return out[:, width:].tolist()

    @torch.inference_mode()
    def logits(self, ids: List[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids], device=self.model.device), use_cache=False).logits[0]
