"""config_hash is a run's identity in every store ever written: the hash of every option in conf/ is
pinned here, so a change to the schema or the hash that would orphan old runs fails loudly."""


import pytest

from conftest import ROOT, compose_run
from qsweep.confighash import config_hash

# Hashes as recorded by qsweep at commit 2176144 (before the architecture refactor): each option with
# every other group at its default, on device=cpu unless the option itself names the device.
PINNED = {
    "model=distilgpt2": "46be67648aba", "model=gemma-3-270m-ft": "2c3b748fde28",
    "model=gemma-3-270m": "9b6121b94e3c", "model=gemma-3-4b-it": "8933cfd0f4af", "model=gpt2": "e43b91c0920f",
    "model=tiny-gpt2": "b62f92020d96",
    "precision=bf16": "5e9fd181d667", "precision=fp16": "ef7853e4fe8c", "precision=fp32": "9b6121b94e3c",
    "precision=int4": "1af37d297aa0", "precision=int8": "0f162359e5e2",
    "device=cpu": "9b6121b94e3c", "device=cuda": "8c30022ba484",
    "generation=default": "9b6121b94e3c", "generation=long": "87bf93b96253",
    "setting=cpu-bf16": "5e9fd181d667", "setting=cpu-fp16": "ef7853e4fe8c", "setting=cpu-fp32": "9b6121b94e3c",
    "setting=cpu-int4": "1af37d297aa0", "setting=cpu-int8": "0f162359e5e2", "setting=cuda-bf16": "2168750f7d1c",
    "setting=cuda-fp16": "0b9dfbbdd966", "setting=cuda-fp32": "8c30022ba484", "setting=cuda-int4": "05ad540f3d38",
    "setting=cuda-int8": "f3b020a0fd4c",
    "experiment=cpu-precisions": "9b6121b94e3c", "experiment=seed-cpu-vs-gpu": "ccaf744802f7",
    "experiment=seed-grid": "9b6121b94e3c",
    # renamed by what they compare; the old names above stay as aliases and keep their runs' hashes
    "experiment=t4-notebook-grid": "9b6121b94e3c", "experiment=finetune-cpu-vs-gpu": "ccaf744802f7",
    "backend=transformers": "9b6121b94e3c",  # the default backend: every earlier run was measured on it
}
# Options added later hash as the settings they stand for, or are new measurements with a hash of their own.
NEW_OPTIONS = {"device=auto", "generation=restaurant", "backend=llama-cpp", "backend=ctranslate2", "experiment=serving",
               "precision=gguf"}  # precision=gguf: a GGUF model only (tests/test_gguf_model.py)


def _options():
    for group in ("model", "precision", "device", "generation", "setting", "experiment", "backend"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            yield f"{group}={path.stem}"


def _device_for(option: str) -> list:
    return [] if option.startswith(("device=", "setting=")) else ["device=cpu"]


@pytest.mark.parametrize("option", sorted(PINNED))
def test_every_existing_option_keeps_its_hash(option):
    assert config_hash(compose_run(option, *_device_for(option))) == PINNED[option]


def test_every_option_in_conf_is_pinned_or_known_to_be_new():
    assert set(_options()) - set(PINNED) - NEW_OPTIONS == set(), "pin the hash of the new option here"
