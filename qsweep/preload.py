"""Imported once by the fork server that qsweep's workers are forked from (qsweep/worker.py): everything a job
needs, so that no worker imports it again. It decides here, not in the sweep process, so the fork server can
start before the sweep has imported torch. On a machine with a GPU it imports the job module only: bitsandbytes
queries the GPU when imported, and a fork server that has initialised CUDA forks workers that cannot use it
(the warm worker imports the rest once itself)."""

import importlib
import os

import torch

from qsweep.worker import MODULES


def _has_cuda() -> bool:
    """torch.cuda.is_available() through NVML, which does not initialise CUDA in this process."""
    previous = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        return torch.cuda.is_available()
    finally:
        if previous is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK")
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = previous


for _module in MODULES[:1] if _has_cuda() else MODULES:
    importlib.import_module(_module)
