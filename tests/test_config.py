"""Every option composes and validates; bad input fails with a message that names the fix; the hash is stable."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from conftest import ROOT, compose_cfg, compose_run
from qsweep import config, confighash
from qsweep.config import ConfigError
from qsweep.confighash import config_hash

CUDA = torch.cuda.is_available()


def options(group: str):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "precision", "device", "generation", "setting", "experiment"])
def test_every_option_composes_and_validates(group):
    """On any machine: validation checks values, not hardware (a CUDA config validates without a GPU)."""
    for option in options(group):
        raw = compose_cfg(f"{group}={option}")
        cfg = compose_run(f"{group}={option}")
        assert cfg.generation.max_new_tokens > 0 and cfg.model.name, (group, option, raw)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_a_missing_gpu_is_a_fact_about_the_machine_not_a_config_error():
    from qsweep.environment import DeviceUnavailable, require_device

    cfg = compose_run("setting=cuda-int4")
    assert cfg.device.name == "cuda"  # validates, and keeps what was asked for
    with pytest.raises(DeviceUnavailable, match="device=cuda but this machine has no CUDA"):
        require_device(cfg.device.name)


def test_default_is_the_embedded_gemma_at_fp32():
    cfg = compose_run()
    assert cfg.model.name_or_path == "bundled:gemma-3-270m"
    assert cfg.precision.name == "fp32" and cfg.generation.max_new_tokens == 128
    assert cfg.device.name == ("cuda" if CUDA else "cpu")  # auto is resolved before anything loads


def test_setting_sets_device_and_precision():
    cfg = compose_cfg("setting=cpu-int4")
    assert (cfg.device.name, cfg.precision.name, cfg.precision.quant_type) == ("cpu", "int4", "nf4")


def test_the_t4_notebook_grid_preset_is_its_sweep():
    cfg = compose_cfg("experiment=t4-notebook-grid", hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {
        "model": "gpt2,distilgpt2", "setting": "cpu-fp32,cuda-fp16,cuda-int8,cuda-int4",
        "generation.max_new_tokens": "128,256"}


def test_hash_ignores_override_order_and_tracking_but_not_what_is_measured():
    a = config_hash(compose_run("model=tiny-gpt2", "precision=int8", "device=cpu", "generation.max_new_tokens=7"))
    b = config_hash(compose_run("generation.max_new_tokens=7", "device=cpu", "precision=int8", "model=tiny-gpt2",
                                "tracking.uri=sqlite:////elsewhere.db", "tracking.experiment=other"))
    assert a == b and len(a) == 12
    assert a != config_hash(compose_run("model=tiny-gpt2", "precision=int4", "device=cpu",
                                        "generation.max_new_tokens=7"))
    assert a != config_hash(compose_run("model=tiny-gpt2", "precision=int8", "device=cpu",
                                        "generation.max_new_tokens=8"))
    # how much of the text quality is scored on changes the quality figures: hashed, unless left at the whole text
    assert a != config_hash(compose_run("model=tiny-gpt2", "precision=int8", "device=cpu",
                                        "generation.max_new_tokens=7", "quality.windows=1"))
    assert a == config_hash(compose_run("model=tiny-gpt2", "precision=int8", "device=cpu",
                                        "generation.max_new_tokens=7", "quality.windows=null"))


def test_hash_is_the_same_in_another_process():
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import compose_run; "
            "from qsweep.confighash import config_hash; "
            "print(config_hash(compose_run('model=tiny-gpt2', 'precision=bf16', 'device=cpu')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == config_hash(compose_run("model=tiny-gpt2", "precision=bf16", "device=cpu"))


def test_a_checkpoint_the_project_makes_has_the_same_hash_in_every_clone(monkeypatch, tmp_path):
    here = compose_run("model=gemma-3-270m-ft", "device=cpu")
    assert here.model.name_or_path == str(ROOT / "models" / "gemma-3-270m-ft")
    hash_here = config_hash(here)
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path / "another-clone")
    there = compose_run("model=gemma-3-270m-ft", "device=cpu")
    assert there.model.name_or_path == str(tmp_path / "another-clone" / "models" / "gemma-3-270m-ft")
    assert config_hash(there) == hash_here
    # a checkpoint outside the project is identified by where it is
    outside = config_hash(compose_run("model=gemma-3-270m-ft", f"model.name_or_path={tmp_path}/ft", "device=cpu"))
    assert outside != config_hash(compose_run("model=gemma-3-270m-ft", f"model.name_or_path={tmp_path}/ft2",
                                              "device=cpu"))


def test_a_recorded_config_finds_the_checkpoint_in_the_clone_that_reads_it(monkeypatch, tmp_path):
    text = confighash.to_yaml(compose_run("model=gemma-3-270m-ft", "device=cpu"))
    assert "name_or_path: ${qsweep.root:}/models/gemma-3-270m-ft" in text
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path / "another-clone")
    read_back = config.validate(OmegaConf.create(text))
    assert read_back.model.name_or_path == str(tmp_path / "another-clone" / "models" / "gemma-3-270m-ft")
    hub = confighash.to_yaml(compose_run("model=tiny-gpt2", "device=cpu"))
    assert config.validate(OmegaConf.create(hub)).model.name_or_path == "tiny-gpt2"


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException, match="fp32"):
        compose_cfg("precision=fp8")


def test_misspelled_key_is_refused():
    with pytest.raises(ConfigCompositionException, match="max_new_tokenz"):
        compose_cfg("generation.max_new_tokenz=3")


@pytest.mark.parametrize("override, message", [
    ("generation.max_new_tokens=0", "generation.max_new_tokens=0 must be at least 1"),
    ("generation.max_new_tokens=-5", "generation.max_new_tokens=-5 must be at least 1"),
    ("generation.repeats=0", "generation.repeats=0 must be at least 1"),
    ("generation.prompts=[]", "generation.prompts is empty"),
    ("quality.windows=0", "quality.windows=0 must be at least 1"),
    ("model.weights=randm", "model.weights='randm' is not valid: use one of pretrained, random"),
    ("precision.quant_type=nf3", "precision.quant_type='nf3' is not valid"),
    ("precision.dtype=float8", "precision.dtype='float8' is not valid"),
    ("precision.quant_type=fp4", "precision.quant_type and precision.double_quant apply to precision=int4 only, "
                                 "not fp32"),
])
def test_bad_values_name_the_field_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        compose_run(override)


def test_wrong_type_is_refused_while_composing():
    with pytest.raises(ConfigCompositionException, match="max_new_tokens"):
        compose_cfg("generation.max_new_tokens=many")


def test_bad_option_on_the_command_line_fails_before_any_work(sweep):
    result = sweep.run("-m", "precision=fp32,fp8", "model=tiny-gpt2")
    assert result.returncode != 0
    assert "Could not find 'precision/fp8'" in result.stderr and "fp32" in result.stderr
    assert sweep.runs() == []  # no job started, and no empty sweep run left behind


def test_options_that_change_the_measurement_show_in_the_name_and_the_setting():
    from qsweep import identity

    plain, fp4 = compose_run("device=cpu", "precision=int4"), compose_run("device=cpu", "precision=int4",
                                                                          "precision.quant_type=fp4")
    compiled = compose_run("device=cpu", "precision=bf16", "generation.compile=true")
    assert [identity.run_name(c) for c in (plain, fp4, compiled)] == [
        "gemma-3-270m-int4-cpu-128", "gemma-3-270m-int4-fp4-cpu-128", "gemma-3-270m-bf16-cpu-128-compiled"]
    assert [identity.run_tags(c)["setting"] for c in (plain, fp4, compiled)] == [
        "CPU INT4", "CPU INT4 FP4", "CPU BF16 compiled"]
    # the sweep's progress line names an unvalidated composed config the same way
    assert identity.run_name(compose_cfg("device=cpu", "precision=int4", "precision.quant_type=fp4")) == \
        identity.run_name(fp4)
