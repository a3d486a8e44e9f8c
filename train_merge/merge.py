"""Merge the trained LoRA adapter into a fresh, unquantized copy of the base, check that the merged model
computes what the adapter model computes, and save it as a standalone checkpoint.

The adapter is always merged into the base loaded anew at `merge.dtype` (float32 by default), never
into the weights it was trained on: after QLoRA those are 4-bit, and merging into them would round the
update away (PEFT's advice). The check compares full logits, at every real token of held-out examples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import torch

from qsweep.backends.transformers.loader import DTYPES, from_pretrained
from qsweep.sources import PROVENANCE_FILE
from qsweep.staging import replace_folder
from train_merge import data


class MergeMismatch(RuntimeError):
    """The merged model's logits differ from the adapter model's by more than merge.max_abs_diff."""


def save_adapter(model, adapter_dir: Path) -> None:
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    model.save_pretrained(adapter_dir)


@torch.no_grad()
def _logits(model, batches: List[data.Batch]) -> List[torch.Tensor]:
    """float32 logits of every real (unpadded) token, one tensor per batch."""
    device = next(model.parameters()).device
    out = []
    for batch in batches:
        mask = batch.attention_mask.to(device).bool()
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=mask.long(), use_cache=False).logits
        out.append(logits[mask].float().cpu())
    return out


def merge(base_path: str, adapter_dir: Path, dtype: str, device: str, check: List[data.Batch]):
    """(merged model, merge_max_abs_diff, largest |logit|): the diff is the largest |logit| difference
    between the adapter model and the merged one; the largest logit gives its scale."""
    from peft import PeftModel

    base = from_pretrained(base_path, dtype, device)
    adapted = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    before = _logits(adapted, check)
    merged = adapted.merge_and_unload().eval()
    after = _logits(merged, check)
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    return merged, diff, max(float(a.abs().max()) for a in before)


def require_close(diff: float, tolerance: float) -> None:
    if not diff <= tolerance:  # also catches NaN
        raise MergeMismatch(f"merge_max_abs_diff={diff:.3g} exceeds merge.max_abs_diff={tolerance:g}: the merged "
                            "model does not compute what the adapter model computes; nothing was saved")


def save(merged, tokenizer, output_dir: Path, save_dtype: str, provenance: dict) -> None:
    """bf16 (save_dtype) safetensors + tokenizer + provenance, replacing output_dir atomically."""
    def build(folder: Path) -> None:
        merged.to(DTYPES[save_dtype])
        merged.config.use_cache = True
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    replace_folder(output_dir, build)


def add_provenance(output_dir: Path, fields: dict) -> None:
    """Add fields to the saved checkpoint's train_merge.json (the MLflow model it became)."""
    path = output_dir / PROVENANCE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}, indent=2) + "\n")
