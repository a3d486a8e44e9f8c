"""The one transformers loader (the sweep, the fine-tune and the merge): a checkpoint at a precision on a
device, and the check that the precision really took effect."""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from qsweep.backends import PrecisionNotApplied, tokenizer
from qsweep.config import PrecisionConfig, RunConfig
from qsweep.sources import Checkpoint, ModelUnavailable, resolve

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BitsAndBytesUnsupported(RuntimeError):
    """bitsandbytes has no working kernel for this model on this device."""


@dataclass
class PrecisionReport:
    """What the loaded model really holds: logged with every run."""
    weight_dtypes: dict  # dtype name -> number of parameters
    linear_8bit: int
    linear_4bit: int
    linear_full: int  # nn.Linear layers left unquantized (e.g. the tied lm_head)
    quant_type: Optional[str] = None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any  # None for random weights without a tokenizer
    checkpoint: Checkpoint
    load_time_s: float
    precision: PrecisionReport


def quantization_config(quantization: str, dtype: str, quant_type: str = PrecisionConfig.quant_type,
                        double_quant: bool = PrecisionConfig.double_quant):
    """bitsandbytes' config for int8 / int4 (computing in `dtype`), None for "none": the sweep's precisions
    and the fine-tune's QLoRA base alike."""
    from transformers import BitsAndBytesConfig

    if quantization != "none":
        import bitsandbytes  # noqa: F401  (initialised here, outside any timed region)

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "int4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=DTYPES[dtype])
    return None


def from_pretrained(path: str, dtype: str, device: str, quantization=None, trust_remote_code: bool = False,
                    allow_pickle: bool = False):
    """The causal LM at `path` (its own class from config.json, e.g. Gemma3ForCausalLM for a multimodal
    Gemma 3), at `dtype` on `device`: the one loader of the sweep, the fine-tune and the merge."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), AutoModelForCausalLM)
        return model_class.from_pretrained(
            path, config=config, dtype=DTYPES[dtype], quantization_config=quantization,
            device_map={"": 0} if device == "cuda" else "cpu", trust_remote_code=trust_remote_code,
            # pickle (.bin) checkpoints can run code when loaded: only when the user allows them
            use_safetensors=None if allow_pickle else True)
    except Exception as err:
        raise explain_load_error(err, path) from err


def load(cfg: RunConfig, checkpoint: Optional[Checkpoint] = None) -> LoadedModel:
    """Load at cfg.precision on cfg.device; pass a resolved checkpoint to keep conversions out of timing."""
    from transformers import AutoConfig

    checkpoint = checkpoint or resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    device = cfg.device.name
    p = cfg.precision
    quantization = quantization_config(p.quantization, p.dtype, p.quant_type, p.double_quant)
    # Read config.json and import the modeling code first: in a fresh worker that is seconds of Python
    # imports, which would otherwise be counted as loading time.
    try:
        AutoConfig.from_pretrained(checkpoint.path, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as err:
        raise explain_load_error(err, checkpoint.path) from err
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model = from_pretrained(checkpoint.path, cfg.precision.dtype, device, quantization, cfg.model.trust_remote_code,
                            cfg.model.allow_pickle).eval()
    if device == "cuda":
        torch.cuda.synchronize()
    load_time_s = time.perf_counter() - start
    return LoadedModel(model, tokenizer(checkpoint.tokenizer_path), checkpoint, load_time_s,
                       verify_precision(model, cfg.precision))


def describe_precision(report: PrecisionReport) -> str:
    dtypes = ", ".join(f"{d}:{n}" for d, n in sorted(report.weight_dtypes.items()))
    return (f"int8 linear={report.linear_8bit}, int4 linear={report.linear_4bit}"
            f"{' (' + report.quant_type + ')' if report.quant_type else ''}, "
            f"full linear={report.linear_full}; params by dtype {dtypes}")


def explain_load_error(err: Exception, path: str) -> Exception:
    """Turn transformers' loading errors into one line that says what is wrong and what to do."""
    text = " ".join(str(err).split())
    if "trust_remote_code" in text:
        return ModelUnavailable(f"{path} needs its own Python code to load: set model.trust_remote_code=true "
                                "only if you trust that code")
    if "not a valid JSON file" in text:
        return ModelUnavailable(f"{path}/config.json is not valid JSON: repair it or re-save the checkpoint")
    if "no file named" in text:
        return ModelUnavailable(f"no safetensors weights in {path}: save the checkpoint with safetensors, "
                                "or set model.allow_pickle=true to load .bin files you trust")
    if type(err).__name__ == "SafetensorError":
        return ModelUnavailable(f"the weights in {path} cannot be read ({text}): the file is corrupt or "
                                "incomplete; re-download or re-save the checkpoint")
    return err


def explain_backend_error(err: Exception, precision: PrecisionConfig, device: str) -> Exception:
    """A bitsandbytes kernel that fails at run time: say which precision cannot run here."""
    if precision.quantization == "none" or not any(
            "bitsandbytes" in frame.filename for frame in traceback.extract_tb(err.__traceback__)):
        return err
    text = " ".join(str(err).split())
    return BitsAndBytesUnsupported(f"bitsandbytes {precision.name} cannot run this model on {device} "
                              f"({type(err).__name__}: {text}): use another precision or device")


def inspect_precision(model) -> PrecisionReport:
    # Never imported here (a second of imports per job): where nothing imported bitsandbytes, the model
    # cannot hold its layers.
    bnb = sys.modules.get("bitsandbytes")
    dtypes = Counter()
    for param in model.parameters():
        dtypes[str(param.dtype).removeprefix("torch.")] += param.numel()
    modules = list(model.modules())
    four_bit = [m for m in modules if bnb and isinstance(m, bnb.nn.Linear4bit)]
    return PrecisionReport(
        weight_dtypes=dict(dtypes),
        linear_8bit=sum(isinstance(m, bnb.nn.Linear8bitLt) for m in modules) if bnb else 0,
        linear_4bit=len(four_bit),
        linear_full=sum(type(m) is torch.nn.Linear for m in modules),
        quant_type=four_bit[0].weight.quant_type if four_bit else None,
    )


def verify_precision(model, precision: PrecisionConfig) -> PrecisionReport:
    report = inspect_precision(model)
    expected = precision.dtype
    if precision.quantization == "none":
        floats = {d for d in report.weight_dtypes if d.startswith(("float", "bfloat"))}
        ok = floats == {expected} and not (report.linear_8bit or report.linear_4bit)
    elif precision.quantization == "int8":
        ok = report.linear_8bit > 0 and report.linear_4bit == 0
    else:
        ok = report.linear_4bit > 0 and report.quant_type == precision.quant_type
    if not ok:
        raise PrecisionNotApplied(
            f"asked for {precision.name} ({precision.quantization}, {expected}) but the loaded model has "
            f"{report.linear_8bit} 8-bit and {report.linear_4bit} 4-bit linear layers and weight dtypes "
            f"{report.weight_dtypes}")
    return report
