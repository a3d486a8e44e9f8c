"""What a job measured, as plain data that crosses process boundaries, and how it is recorded in its run:
metrics, tags and the artifacts that the report and reproduce read back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional

from qsweep import measure, quality
from qsweep.models import PrecisionReport
from qsweep.tracking import (ENVIRONMENT_FILE, GENERATIONS_FILE, GENERATIONS_MARKDOWN, PRECISION_FILE, QUALITY_FILE,
                             RunWriter)


@dataclass
class LoadMetrics:
    """Names are the MLflow metric names."""
    load_time_s: float
    model_footprint_gb: float


@dataclass
class JobResult:
    load: LoadMetrics
    speed: measure.SpeedMetrics
    memory: measure.MemoryMetrics
    precision: PrecisionReport
    texts: List[dict]  # per prompt: prompt, output, prompt_ids, output_ids (+ fp32_output, fp32_output_ids)
    environment: dict
    quality: Optional[quality.QualityResult] = None  # None: not applicable (random weights, no tokenizer)


def texts(prompts: List[str], generations: List[measure.Generation], tokenizer) -> List[dict]:
    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer else " ".join(map(str, ids))

    return [{"prompt": prompt, "output": decode(g.output_ids), "prompt_ids": g.prompt_ids,
             "output_ids": g.output_ids} for prompt, g in zip(prompts, generations)]


def add_fp32_outputs(texts: List[dict], fp32_outputs: List[List[int]], tokenizer) -> None:
    for text, fp32_ids in zip(texts, fp32_outputs):
        text["fp32_output"] = tokenizer.decode(fp32_ids, skip_special_tokens=True)
        text["fp32_output_ids"] = fp32_ids


def record(run: RunWriter, result: JobResult) -> None:
    run.log_metrics(result.load, result.speed, result.memory)
    run.set_tags({"precision_check": describe_precision(result.precision)})
    run.log_json(asdict(result.precision), PRECISION_FILE)
    run.log_json(result.environment, ENVIRONMENT_FILE)
    run.log_json(result.texts, GENERATIONS_FILE)
    run.log_text("\n\n".join(map(_markdown, result.texts)), GENERATIONS_MARKDOWN)
    if result.quality is None:
        run.set_tags({"quality": quality.NOT_APPLICABLE})
        return
    run.log_metrics(result.quality.metrics)
    run.set_tags({"quality": "measured", "degenerate_reason": result.quality.degenerate_reason,
                  "quality_reference": result.quality.reference})
    run.log_json(result.quality.details, QUALITY_FILE)


def _markdown(text: dict) -> str:
    """One prompt of generations.md: this run's output, and fp32's next to it when there is one."""
    if "fp32_output" not in text:
        return f"### {text['prompt']}\n{text['output']}"
    return f"### {text['prompt']}\n**this run:**\n{text['output']}\n\n**fp32:**\n{text['fp32_output']}"


def describe_precision(report: PrecisionReport) -> str:
    dtypes = ", ".join(f"{d}:{n}" for d, n in sorted(report.weight_dtypes.items()))
    return (f"int8 linear={report.linear_8bit}, int4 linear={report.linear_4bit}"
            f"{' (' + report.quant_type + ')' if report.quant_type else ''}, "
            f"full linear={report.linear_full}; params by dtype {dtypes}")
