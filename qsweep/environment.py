"""The machine a run measures on: which device `auto` means here, whether the asked-for device exists,
and the environment recorded with every run (software versions, CPU, GPU, git commit)."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from qsweep.config import PROJECT_ROOT, RunConfig

PACKAGES = ("torch", "transformers", "accelerate", "bitsandbytes", "hydra-core", "mlflow", "gguf", "llama-cpp-python",
            "ctranslate2", "qsweep")
# where a package may be installed under another distribution name (the GPU kit carries MLflow's client half)
ALSO_KNOWN_AS = {"mlflow": "mlflow-skinny"}


class DeviceUnavailable(RuntimeError):
    """The config asks for a device this machine does not have."""


def resolve_device(name: str) -> str:
    """auto -> cuda when this machine has CUDA, else cpu; other names are kept (checked by require_device)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def on_this_machine(cfg: RunConfig) -> RunConfig:
    """The config with device=auto resolved: what is measured, hashed and named."""
    device = dataclasses.replace(cfg.device, name=resolve_device(cfg.device.name))
    return dataclasses.replace(cfg, device=device)


def require_device(name: str) -> None:
    """A missing GPU is a fact about this machine, not a config error: never a silent fallback to CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device=cuda but this machine has no CUDA (torch {torch.__version__}): run it on "
                                "a machine with a GPU, or use device=cpu (device=auto takes a GPU only when there is one)")


def _version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str):
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _gpu() -> dict:
    if not torch.cuda.is_available():
        return {"cuda_available": False}
    info = {"cuda_available": True, "cuda": torch.version.cuda,
            "gpu_name": torch.cuda.get_device_name(), "gpu_count": torch.cuda.device_count()}
    try:
        import pynvml

        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML is optional
        info["driver"] = None
    return info


def package_versions() -> dict:
    return {name: _version(name) or _version(ALSO_KNOWN_AS.get(name, name)) for name in PACKAGES}


def collect() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        **_gpu(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
