"""One fine-tune, top to bottom, as one MLflow run: measure the base, train LoRA, merge, check, save,
then load the saved checkpoint the way the sweep does and measure it again."""

from __future__ import annotations

import gc
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import torch
from omegaconf import OmegaConf

from qsweep import console, environment, sources, tracking
from qsweep.backends.transformers import loader
from qsweep.config import DeviceConfig, GenerationConfig, ModelConfig, PrecisionConfig, RunConfig
from qsweep.confighash import flatten
from qsweep.credentials import redact
from qsweep.quality import perplexity
from train_merge import data, finetune, merge
from train_merge.config import TrainMergeConfig

PRECISION_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass
class Result:
    run_id: str
    output_dir: str
    heldout_loss_before: float
    heldout_loss_after: float  # the adapter model, right after training
    heldout_loss_merged: float  # the saved checkpoint, loaded by the sweep's loader
    merge_max_abs_diff: float
    train_loss_first: float
    train_loss_last: float
    train_steps: int
    train_time_s: float
    total_time_s: float
    replies_before: List[dict]
    replies_after: List[dict]  # from the saved checkpoint


def say(message: str) -> None:
    console.say(message, prefix="train_merge")


def reloaded(cfg: TrainMergeConfig, output_dir: Path) -> loader.LoadedModel:
    """The saved checkpoint through qsweep's loader, at the saved dtype: what a sweep will measure."""
    precision = cfg.merge.save_dtype
    run_cfg = RunConfig(model=ModelConfig(name=output_dir.name, name_or_path=str(output_dir)),
                        precision=PrecisionConfig(name=PRECISION_NAMES[precision], dtype=precision),
                        device=DeviceConfig(name=cfg.train.device),
                        generation=GenerationConfig(prompts=list(cfg.eval.prompts)))
    run_cfg.paths.cache_dir = cfg.paths.cache_dir
    return loader.load(run_cfg)


def run(cfg: TrainMergeConfig) -> Result:
    start = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    output_dir = Path(cfg.merge.output_dir).expanduser().resolve()
    adapter_dir = Path(cfg.merge.adapter_dir).expanduser().resolve()
    data_file = Path(cfg.data.path).expanduser() if cfg.data.path else data.DATA_FILE
    store = tracking.open_store(cfg.tracking)
    tags = {tracking.TAG_MODEL: cfg.model.name, tracking.TAG_DEVICE: cfg.train.device,
            tracking.TAG_QUANTIZATION: cfg.train.quantization, tracking.TAG_CHECKPOINT: str(output_dir)}
    with tracking.train_run(store, f"{cfg.model.name}-lora-r{cfg.lora.r}", tags) as mlrun:
        say(f"MLflow run {mlrun.run_id} in {store.uri} (experiment {cfg.tracking.experiment})")
        mlrun.log_params(flatten(asdict(cfg)))
        mlrun.log_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), tracking.CONFIG_FILE)
        mlrun.log_json(environment.collect(), tracking.ENVIRONMENT_FILE)

        from transformers import AutoTokenizer

        checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
        if not checkpoint.has_tokenizer:
            raise sources.ModelUnavailable(f"{checkpoint.path} has no tokenizer: fine-tuning needs one")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.tokenizer_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        dialogues = data.load(cfg.data.path, cfg.data.limit_train, cfg.data.limit_heldout)
        train_set = data.encode_all(dialogues.train, tokenizer, cfg.data.max_length)
        heldout = data.encode_all(dialogues.heldout, tokenizer, cfg.data.max_length)
        heldout_batches = data.batches(heldout, cfg.eval.batch_size, pad_id)
        check_batches = data.batches(heldout[:cfg.merge.check_examples], cfg.eval.batch_size, pad_id)
        mlrun.log_metrics({"train_examples": len(train_set), "heldout_examples": len(heldout),
                          "heldout_tokens": sum(b.target_tokens for b in heldout_batches)})
        mlrun.set_tags({tracking.TAG_BASE_CHECKPOINT: checkpoint.path, tracking.TAG_DATA_FILE: str(data_file),
                        tracking.TAG_DATA_SHA256: hashlib.sha256(data_file.read_bytes()).hexdigest()[:12]})
        say(f"{len(train_set)} training and {len(heldout)} held-out exchanges from {data_file.name}")

        model = finetune.load_base(checkpoint.path, cfg.train)
        say("measuring the base model (held-out loss, sample replies)")
        loss_before = finetune.heldout_loss(model, heldout_batches)
        replies_before = finetune.sample_replies(model, tokenizer, cfg.eval.prompts, cfg.eval.max_new_tokens)
        say(f"held-out loss before: {loss_before:.3f} (perplexity {perplexity(loss_before):.1f})")

        model = finetune.add_lora(model, cfg.lora, cfg.train)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        mlrun.log_metrics({"heldout_loss_before": loss_before,
                          "heldout_perplexity_before": perplexity(loss_before),
                          "trainable_params": trainable})
        trained = finetune.train(model, train_set, pad_id, cfg.train,
                                 on_step=lambda step, loss, lr: mlrun.log_metrics({"train_loss": loss, "lr": lr}, step=step))
        loss_after = finetune.heldout_loss(model, heldout_batches)
        say(f"held-out loss after: {loss_after:.3f} (perplexity {perplexity(loss_after):.1f}), "
            f"{trained.steps} steps in {trained.train_time_s:.0f} s")
        mlrun.log_metrics({"heldout_loss_after": loss_after, "heldout_perplexity_after": perplexity(loss_after),
                          "train_time_s": trained.train_time_s, "train_steps": trained.steps})
        merge.save_adapter(model, adapter_dir)
        del model
        gc.collect()

        say(f"merging into a fresh {cfg.merge.dtype} base and checking logits on {cfg.merge.check_examples} "
            "held-out exchanges")
        merged, diff, scale = merge.merge(checkpoint.path, adapter_dir, cfg.merge.dtype, cfg.train.device,
                                          check_batches)
        mlrun.log_metrics({"merge_max_abs_diff": diff, "merge_max_abs_logit": scale})
        say(f"merge_max_abs_diff = {diff:.3g} (limit {cfg.merge.max_abs_diff:g}; logits up to {scale:.1f})")
        merge.require_close(diff, cfg.merge.max_abs_diff)
        provenance = {"base_model": cfg.model.name_or_path, "base_checkpoint": checkpoint.path,
                      "adapter": str(adapter_dir), "mlflow_run_id": mlrun.run_id, "tracking_uri": redact(store.uri),
                      "data_file": str(data_file), "lora": asdict(cfg.lora), "train": asdict(cfg.train),
                      "heldout_loss_before": loss_before, "heldout_loss_after": loss_after,
                      "merge_max_abs_diff": diff}
        merge.save(merged, tokenizer, output_dir, cfg.merge.save_dtype, provenance)
        del merged
        gc.collect()
        say(f"saved the merged {cfg.merge.save_dtype} checkpoint to {output_dir}")
        mlrun.set_tags({tracking.TAG_ADAPTER: str(adapter_dir)})
        model = tracking.register_checkpoint(
            mlrun, output_dir, flatten({"lora": asdict(cfg.lora), "train": asdict(cfg.train)}),
            {tracking.TAG_BASE_MODEL: cfg.model.name_or_path, tracking.TAG_WEIGHTS: sources.weights_sha256(output_dir)})
        merge.add_provenance(output_dir, model)
        mlrun.set_tags({tracking.TAG_LOGGED_MODEL: model["logged_model_id"],
                        tracking.TAG_MODEL_VERSION: f"{model['registered_model']}/{model['model_version']}"})
        say(f"registered as MLflow model {model['registered_model']} version {model['model_version']} "
            f"(logged model {model['logged_model_id']}; the weights stay in {output_dir})")

        loaded = reloaded(cfg, output_dir)
        loss_merged = finetune.heldout_loss(loaded.model, heldout_batches)
        replies_after = finetune.sample_replies(loaded.model, loaded.tokenizer, cfg.eval.prompts,
                                                cfg.eval.max_new_tokens)
        del loaded
        total = time.perf_counter() - start
        mlrun.log_metrics({"heldout_loss_merged": loss_merged,  # the run's and, from now on, its model's
                          "heldout_perplexity_merged": perplexity(loss_merged),
                          "train_loss_first": trained.first_loss, "train_loss_last": trained.last_loss,
                          "total_time_s": total})
        tracking.model_ready(mlrun)
        samples = [{"prompt": b["prompt"], "before": b["reply"], "after": a["reply"]}
                   for b, a in zip(replies_before, replies_after)]
        mlrun.log_json(samples, "samples.json")
        mlrun.log_text("\n\n".join(f"### {s['prompt']}\n**before:** {s['before']}\n\n**after:** {s['after']}"
                                   for s in samples), "samples.md")
        mlrun.log_json(provenance, sources.PROVENANCE_FILE)
        return Result(mlrun.run_id, str(output_dir), loss_before, loss_after, loss_merged, diff,
                      trained.first_loss, trained.last_loss, trained.steps, trained.train_time_s, total,
                      replies_before, replies_after)
