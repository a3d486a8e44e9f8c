"""Typed schema of `python -m train_merge` (conf/train_merge.yaml), checked before anything loads.

The base model is an option of the same `model` group the sweep uses, so qsweep's ModelConfig and its
checkpoint sources (hub id, local folder, bundled Gemma) serve both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from qsweep.config import DTYPES, ModelConfig, PathsConfig, TrackingConfig, one_of, require
from qsweep.config import register_schemas as register_qsweep_schemas
from qsweep.config import validate as validate_schema

TRAIN_QUANTIZATIONS = ("none", "int4")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class DataConfig:
    path: Optional[str] = None  # None: the shipped train_merge/data/restaurant_dialogues.jsonl
    max_length: int = 96
    limit_train: Optional[int] = None
    limit_heldout: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.max_length >= 8, f"data.max_length={self.max_length} is too short: use 8 or more")
        require(self.path is None or Path(self.path).expanduser().is_file(),
                 f"data.path={self.path}: no such file; give a JSONL file of customer/waiter/split lines, "
                 "or null for the shipped data set")
        for key in ("limit_train", "limit_heldout"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key}={value} must be positive (or null for all)")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    exclude_modules: Optional[str] = None  # regex of module names left alone

    def __post_init__(self) -> None:
        require(self.r > 0, f"lora.r={self.r} must be at least 1")
        require(self.alpha > 0, f"lora.alpha={self.alpha} must be positive (the adapter is scaled by alpha/r)")
        require(0 <= self.dropout < 1, f"lora.dropout={self.dropout} must be in [0, 1)")
        require(len(self.target_modules) > 0, "lora.target_modules is empty: name the layers to adapt")


@dataclass
class TrainSettings:
    device: str = "auto"
    dtype: str = "bfloat16"
    quantization: str = "none"
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    num_threads: Optional[int] = None

    def __post_init__(self) -> None:
        one_of(self.dtype, DTYPES, "train.dtype")
        one_of(self.quantization, TRAIN_QUANTIZATIONS, "train.quantization")
        require(self.epochs > 0, f"train.epochs={self.epochs} must be at least 1")
        require(self.max_steps is None or self.max_steps > 0,
                 f"train.max_steps={self.max_steps} must be at least 1 (or null for all epochs)")
        require(self.batch_size > 0, f"train.batch_size={self.batch_size} must be at least 1")
        require(self.lr > 0, f"train.lr={self.lr} must be positive")
        require(self.grad_clip > 0, f"train.grad_clip={self.grad_clip} must be positive (the largest gradient norm "
                 "kept; 0 would zero every gradient)")
        require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be 0 or more")
        require(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be 0 or more")
        require(self.num_threads is None or self.num_threads > 0,
                 f"train.num_threads={self.num_threads} must be positive (or null for torch's default)")


@dataclass
class EvalSettings:
    batch_size: int = 8
    max_new_tokens: int = 40
    prompts: List[str] = MISSING  # conf/train_merge.yaml: the seed's restaurant dialogue

    def __post_init__(self) -> None:
        require(self.batch_size > 0, f"eval.batch_size={self.batch_size} must be at least 1")
        require(self.max_new_tokens > 0, f"eval.max_new_tokens={self.max_new_tokens} must be at least 1")
        require(len(self.prompts) > 0, "eval.prompts is empty: give at least one prompt for the sample replies")


@dataclass
class MergeSettings:
    output_dir: str = MISSING
    adapter_dir: str = MISSING
    dtype: str = "float32"
    save_dtype: str = "bfloat16"
    max_abs_diff: float = 1e-2
    check_examples: int = 16

    def __post_init__(self) -> None:
        one_of(self.dtype, DTYPES, "merge.dtype")
        one_of(self.save_dtype, DTYPES, "merge.save_dtype")
        require(self.max_abs_diff > 0, f"merge.max_abs_diff={self.max_abs_diff} must be positive")
        require(self.check_examples > 0, f"merge.check_examples={self.check_examples} must be at least 1")


@dataclass
class TrainMergeConfig:
    model: ModelConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="train_merge"))
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        require(self.model.weights == "pretrained",
                 "model.weights=random: fine-tuning needs pretrained weights and a tokenizer")


def register_schemas() -> None:
    register_qsweep_schemas()  # the schema of the model group the sweep shares
    ConfigStore.instance().store(name="train_merge_schema", node=TrainMergeConfig)


def validate(cfg: DictConfig) -> TrainMergeConfig:
    """Composed config -> typed, value-checked TrainMergeConfig (raises ConfigError naming the field)."""
    return validate_schema(cfg, TrainMergeConfig)
