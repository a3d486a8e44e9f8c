"""Loading at a precision, the check that it took effect, and the errors of unavailable weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import compose_run
from qsweep import sources
from qsweep.backends.transformers import loader
from qsweep.backends import PrecisionNotApplied
from qsweep.backends.transformers.loader import verify_precision


@pytest.fixture(scope="module")
def tiny_fp32():
    return loader.load(compose_run("model=tiny-gpt2", "device=cpu", "precision=fp32"))


def test_random_weights_are_built_once_and_reused(tmp_path):
    cfg = compose_run("model=tiny-gpt2", "device=cpu")
    first = sources.resolve(cfg.model, tmp_path)
    weights = next(p for p in tmp_path.rglob("model.safetensors"))
    stamp = weights.stat().st_mtime_ns
    second = sources.resolve(cfg.model, tmp_path)
    assert first == second and not first.has_tokenizer
    assert weights.stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "random").iterdir() if p.name.startswith(".")]  # no staging left


def test_random_weights_are_deterministic(tmp_path):
    cfg = compose_run("model=tiny-gpt2", "device=cpu")
    a = AutoModelForCausalLM.from_pretrained(sources.resolve(cfg.model, tmp_path / "a").path)
    b = AutoModelForCausalLM.from_pretrained(sources.resolve(cfg.model, tmp_path / "b").path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_fp32_load_reports_what_it_found(tiny_fp32):
    report = tiny_fp32.precision
    assert report.weight_dtypes == {"float32": sum(p.numel() for p in tiny_fp32.model.parameters())}
    assert report.linear_8bit == report.linear_4bit == 0 and tiny_fp32.load_time_s > 0


@pytest.mark.parametrize("precision, field", [("int8", "linear_8bit"), ("int4", "linear_4bit")])
def test_quantized_loads_have_quantized_linears(precision, field):
    loaded = loader.load(compose_run("model=tiny-gpt2", "device=cpu", f"precision={precision}"))
    assert getattr(loaded.precision, field) == 2 * 4  # 2 blocks x (qkv, proj, fc, fc-proj)
    assert loaded.precision.linear_full == 1  # the tied lm_head stays full precision


def test_fp4_is_selectable():
    loaded = loader.load(compose_run("model=tiny-gpt2", "device=cpu", "precision=int4", "precision.quant_type=fp4"))
    assert loaded.precision.quant_type == "fp4"


@pytest.mark.parametrize("precision", ["int8", "int4", "bf16"])
def test_a_precision_that_did_not_take_is_refused(tiny_fp32, precision):
    wanted = compose_run("model=tiny-gpt2", "device=cpu", f"precision={precision}").precision
    with pytest.raises(PrecisionNotApplied, match=f"asked for {precision}"):
        verify_precision(tiny_fp32.model, wanted)


def test_unreachable_hub_model_names_both_remedies(tmp_path):
    cfg = compose_run("model=gpt2", "device=cpu", "model.name_or_path=no-such-org/no-such-model")
    with pytest.raises(sources.ModelUnavailable) as err:
        sources.resolve(cfg.model, tmp_path)
    message = str(err.value)
    assert "no-such-org/no-such-model" in message
    assert "model.name_or_path=/path/to/checkpoint" in message and "model.weights=random" in message


def test_random_weights_of_gpt2_need_no_network(tmp_path):
    cfg = compose_run("model=distilgpt2", "model.weights=random", "device=cpu")
    checkpoint = sources.resolve(cfg.model, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path)
    assert model.config.n_layer == 6 and 80e6 < model.num_parameters() < 85e6  # distilgpt2 is 82M


def test_missing_local_folder_says_what_to_give(tmp_path):
    cfg = compose_run("model=gpt2", "device=cpu", f"model.name_or_path={tmp_path}/nowhere")
    with pytest.raises(sources.ModelUnavailable, match="no config.json there"):
        sources.resolve(cfg.model, tmp_path)
