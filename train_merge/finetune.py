"""LoRA (or, on CUDA, QLoRA) fine-tuning with a plain PyTorch loop, and the measurements around it:
held-out loss on the waiter's replies and greedy sample replies. No MLflow here: `on_step` reports.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from tqdm import tqdm

from qsweep.backends.transformers.loader import from_pretrained, quantization_config
from train_merge import data
from train_merge.config import LoraSettings, TrainSettings

VISION_MODULES = r".*(vision_tower|multi_modal_projector).*"


def load_base(path: str, train: TrainSettings):
    """The base model to train: at train.dtype, or 4-bit NF4 for QLoRA (CUDA)."""
    model = from_pretrained(path, train.dtype, train.device, quantization_config(train.quantization, train.dtype))
    model.config.use_cache = False
    return model


def add_lora(model, lora: LoraSettings, train: TrainSettings):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(train.seed)  # the LoRA A matrices are initialised at random
    if train.quantization == "int4":
        # QLoRA: norms and embeddings to fp32, inputs that require grad, optional checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train.gradient_checkpointing)
    elif train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    exclude = lora.exclude_modules
    if exclude is None and any("vision_tower" in name for name, _ in model.named_modules()):
        exclude = VISION_MODULES  # multimodal Gemma 3 (4b and up): adapt the language model only
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), exclude_modules=exclude, task_type="CAUSAL_LM")
    return get_peft_model(model, config)  # the LoRA weights are float32 whatever the base dtype


def _text_config(config):
    return getattr(config, "text_config", None) or config


def reply_logits(model, batch: data.Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a reply token, and those tokens. Only these rows go through
    the output layer: with Gemma's 262k-token vocabulary that is most of the saving of a step."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    ids, mask, labels = batch.input_ids.to(device), batch.attention_mask.to(device), batch.labels.to(device)
    hidden = base.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != data.IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(_text_config(base.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float(), targets[keep]


def batch_loss(model, batch: data.Batch) -> torch.Tensor:
    logits, targets = reply_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits, targets)


@torch.no_grad()
def heldout_loss(model, batches: List[data.Batch]) -> float:
    """Mean negative log-likelihood per reply token (nats) over all batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        logits, targets = reply_logits(model, batch)
        total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += targets.numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def sample_replies(model, tokenizer, prompts: List[str], max_new_tokens: int) -> List[dict]:
    """Greedy replies to raw prompts (encoded as the sweep encodes them), stopped at end of turn."""
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              use_cache=True)
    replies = []
    for prompt in prompts:
        ids = torch.tensor([data.prompt_ids(tokenizer, prompt)], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = out[0, ids.shape[1]:].tolist()
        replies.append({"prompt": prompt, "reply": tokenizer.decode(new, skip_special_tokens=True).strip(),
                        "tokens": len(new)})
    model.train(was_training)
    return replies


@dataclass
class TrainResult:
    steps: int
    train_time_s: float
    first_loss: float  # mean of the first few steps' losses
    last_loss: float  # mean of the last few steps' losses


def train(model, examples: List[data.Encoded], pad_id: int, settings: TrainSettings,
          on_step: Optional[Callable[[int, float, float], None]] = None) -> TrainResult:
    """AdamW on the trainable (LoRA) weights, linear warm-up then linear decay, gradient clipping."""
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if settings.max_steps:
        total = min(total, settings.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = min(settings.warmup_steps, total - 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / (total - warmup)))

    model.train()
    losses: List[float] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc="train_merge: fine-tuning", unit="step")
    step = 0
    while step < total:
        for batch in data.batches(examples, settings.batch_size, pad_id, generator):
            if step == total:
                break
            loss = batch_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = schedule.get_last_lr()[0]
            schedule.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
            if on_step:
                on_step(step, losses[-1], lr)
    bar.close()
    model.eval()
    window = max(1, min(5, len(losses) // 4))
    return TrainResult(step, time.perf_counter() - start, sum(losses[:window]) / window,
                       sum(losses[-window:]) / window)
