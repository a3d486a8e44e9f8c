"""Settings this machine only emulates: a precision its CPU has no arithmetic for, which torch computes by
converting to fp32, so its speed says more about the CPU than about the setting.

fp16 without AVX512-FP16 or AMX-FP16, and bf16 without AVX512-BF16 or AMX-BF16, on the transformers backend.
Measured on this project's AMD EPYC (AVX-512 with BF16, no FP16; torch 2.13, one thread): a 2048x2048
linear layer on 64 tokens takes 11.6 ms in fp32, 4.3 in bf16 and 36.3 in fp16; with oneDNN held to
AVX512_CORE (ONEDNN_MAX_CPU_ISA, i.e. no BF16 instructions) bf16 takes 24.2 ms, like fp16. One token at a
time (decoding at batch 1) all three take 0.4-0.9 ms: the penalty shows in prefill, batches and the
quality pass (issue 22: gpt2 fp16 on that EPYC 6.5 tokens/s against fp32's 20.3; its fp16 job took
7 min 20 s of the sweep's 14 min 42 s). llama.cpp and CTranslate2 run their own kernels, and bitsandbytes int8/int4 have
their own CPU paths: none of those is called emulated here. Only x86 CPUs are judged (their flags in
/proc/cpuinfo); elsewhere nothing is said.
"""

from __future__ import annotations

from pathlib import Path
from typing import FrozenSet, Optional

from qsweep import console
from qsweep.tracking.names import TAG_EMULATED

NATIVE = {"fp16": ("avx512_fp16", "amx_fp16"), "bf16": ("avx512_bf16", "amx_bf16")}  # /proc/cpuinfo names
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Optional[str] = None) -> Optional[FrozenSet[str]]:
    """The x86 flags of this machine's CPU (or of a /proc/cpuinfo text); None when unknown (not Linux,
    not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return None
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    return frozenset(line.split(":", 1)[1].split()) if line and ":" in line else None


def emulated(device: str, precision: str, backend: str, flags: Optional[FrozenSet[str]]) -> Optional[str]:
    """Why this setting is emulated on a CPU with these flags, in a few words; None when it is not (or
    when that cannot be told)."""
    if device != "cpu" or backend != "transformers" or precision not in NATIVE or flags is None:
        return None
    needed = NATIVE[precision]
    if any(flag in flags for flag in needed):
        return None
    return (f"{precision} on a CPU without {' or '.join(f.upper().replace('_', '-') for f in needed)}: "
            "torch converts every matrix product to fp32 (2-3x slower than fp32 beyond one token at a time)")


def check(cfg) -> dict:
    """Before a job runs: one line when this machine only emulates its setting, and the run's tag."""
    why = emulated(cfg.device.name, cfg.precision.name, cfg.backend.name, cpu_flags())
    if why is None:
        return {}
    console.say(f"emulated setting: {why}; its speed is this CPU's, not {cfg.precision.name}'s")
    return {TAG_EMULATED: why}
