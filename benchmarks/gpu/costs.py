"""What each part of the GPU kit costs, from the costs the H200 measured, so that `all` fits one call:

    python benchmarks/gpu/costs.py     each part's expected seconds and its cap (run_gpu.sh's table)

The estimate composes each part's jobs (plan.py) and adds up per job: load and fixed cost, warm-up and timed
generations at the measured seconds per token, compilation, quality; per sweep: start-up and the warm
worker's initialisation. tests/test_gpu_kit.py keeps run_gpu.sh's caps and budget equal to these.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan import PARTS, Step, compose, expand, overhead_configs, steps  # noqa: E402

# Sized so that `all` fits one call of CALL_S on the H200, from the costs it measured on 2026-11-30
# (../shared/gpu-runs/2026-11-30-h200/, seconds). What the warm worker changes is unverified there: a CUDA load
# without the CUDA initialisation (1.6-2.7 s measured where bitsandbytes had initialised CUDA before the load,
# 6-8 s where the load did it) and the fixed cost (<= 3 s per job by design, 12-25 s measured before).
CALL_S, SETUP_S, PACK_S = 420, 30, 15  # setup: bundle unpack, host record, store; pack: report, checks, tars
SWEEP_START_S = 12  # one sweep's Python, Hydra and MLflow start-up
WORKER_INIT_S = 8  # the warm worker's imports and CUDA context, once per sweep (or per overhead run)
JOB_S = 5  # per job: load (~2.5 s) + fixed cost (< 3 s)
COMPILE_S = 20  # torch.compile's first graphs (a 31 s job with a 6 s load and 0.23 s latency)
QUALITY_S = 1  # quality metrics of the tiny stand-in (0.2-0.9 s)
TRAIN_S = 40  # train_merge of the stand-in (exit after 37 s)
CONVERT_S = 15  # CTranslate2's conversion (gemma-3-270m in about 15 s; gpt2 is smaller)
# seconds per generated token at batch 1 (gpt2 random weights, 128-256 tokens; the tiny stand-in is faster)
SECONDS_PER_TOKEN = {("cuda", "none"): 0.010, ("cuda", "int8"): 0.024, ("cuda", "int4"): 0.010, ("cpu", "none"): 0.015,
                     "compiled": 0.002}
CAP_MARGIN = 1.25  # a part's cap in run_gpu.sh: its estimate plus a quarter


def _generation_s(cfg) -> float:
    """Seconds of warm-up and timed generation of one composed job."""
    gen = cfg.generation
    per_token = SECONDS_PER_TOKEN["compiled" if gen.compile else (cfg.device.name, cfg.precision.quantization)]
    generations = gen.warmup * (len(gen.prompts) if gen.compile else 1) + gen.repeats * len(gen.prompts)
    return generations * gen.max_new_tokens * per_token


def estimate_s(step: Step) -> float:
    """The expected seconds of one step, from its composed jobs and the measured costs above."""
    from qsweep.config import register_schemas, validate

    if step.kind == "train_merge":
        return TRAIN_S
    register_schemas()
    if step.kind == "overhead":
        rounds = int(step.overrides[step.overrides.index("--rounds") + 1])
        return SWEEP_START_S + WORKER_INIT_S + sum(  # a warm-up and `rounds` of each path, per setting
            JOB_S + (2 + 2 * rounds) * cfg.generation.max_new_tokens
            * SECONDS_PER_TOKEN[("cuda", cfg.precision.quantization)] for cfg in overhead_configs(step))
    jobs = [validate(compose("config", job)) for job in expand([o for o in step.overrides if o != "-m"])]
    converts = CONVERT_S if any(cfg.backend.name == "ctranslate2" for cfg in jobs) else 0
    return SWEEP_START_S + WORKER_INIT_S + converts + sum(
        JOB_S + _generation_s(cfg) + (COMPILE_S if cfg.generation.compile else 0)
        + (QUALITY_S if cfg.model.weights == "pretrained" else 0) for cfg in jobs)


def part_estimate_s(part: str) -> float:
    """A part as it runs on the device machine, where gemma-3-270m cannot travel (the stand-in runs)."""
    return sum(estimate_s(step) for step in steps(part, real_gemma=False, ct2=True))


def caps() -> dict:
    return {part: round(part_estimate_s(part) * CAP_MARGIN) for part in PARTS}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    for part, cap in caps().items():
        print(f"{part}: about {part_estimate_s(part):.0f} s, cap {cap} s")
    print(f"all: {SETUP_S} s setup + {sum(part_estimate_s(p) for p in PARTS):.0f} s + {PACK_S} s packing, "
          f"of one call's {CALL_S} s")
