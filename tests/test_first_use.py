"""Defects found trying qsweep as a new user would: each one pinned by a test."""

import json
import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from conftest import compose_run
from qsweep import quality, sources


def gpt2_folder(path, with_tokenizer: bool):
    """A small GPT-2 checkpoint folder unlike tiny-gpt2's architecture (3 layers, 48 wide)."""
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=48, n_head=2, n_positions=256, vocab_size=300)).save_pretrained(path)
    if with_tokenizer:
        from tokenizers import Tokenizer, models as tok_models

        vocab = {chr(32 + i): i for i in range(95)}
        vocab["<unk>"] = 95
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.BPE(vocab, [], unk_token="<unk>")),
                                            unk_token="<unk>")
        tokenizer.save_pretrained(path)
    return path


def test_a_named_folder_wins_over_the_options_architecture(tmp_path):
    """model=tiny-gpt2 model.name_or_path=/folder measures that folder's architecture, with its tokenizer."""
    folder = gpt2_folder(tmp_path / "small-gpt2", with_tokenizer=True)
    cfg = compose_run("model=tiny-gpt2", f"model.name_or_path={folder}", "device=cpu")
    checkpoint = sources.resolve(cfg.model, tmp_path / "cache")
    measured = json.loads((tmp_path / "cache").joinpath(checkpoint.path, "config.json").read_text())
    assert (measured["n_layer"], measured["n_embd"]) == (3, 48)  # not tiny-gpt2's 2 x 64
    assert checkpoint.tokenizer_path == str(folder)  # real prompt tokens from the folder's tokenizer


def test_random_weights_of_a_real_gpt2_folder(tmp_path):
    folder = gpt2_folder(tmp_path / "gpt2-like", with_tokenizer=False)
    cfg = compose_run("model=gpt2", "model.weights=random", f"model.name_or_path={folder}", "device=cpu")
    checkpoint = sources.resolve(cfg.model, tmp_path / "cache")
    assert json.loads((tmp_path / "cache").joinpath(checkpoint.path, "config.json").read_text())["n_layer"] == 3
    assert checkpoint.tokenizer_path is None


def test_a_missing_named_folder_is_the_usual_one_line_error(tmp_path):
    cfg = compose_run("model=tiny-gpt2", f"model.name_or_path={tmp_path}/nowhere", "device=cpu")
    with pytest.raises(sources.ModelUnavailable, match="no config.json there"):
        sources.resolve(cfg.model, tmp_path / "cache")


def test_the_long_evaluation_text_does_not_warn_about_the_context(tmp_path, caplog):
    """The text is longer than the model's context on purpose (GPT-2: 2205 > 1024 tokens): it is cut into
    windows, so transformers' warning about it is noise in every quality-bearing job's log."""
    from transformers.utils import logging as hf_logging

    gpt2_folder(tmp_path, with_tokenizer=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path, model_max_length=256)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            windows = quality.eval_windows(tokenizer, quality.eval_text(), 256)
            tokenizer("x" * 300)  # the check itself: the same tokenizer does warn on a plain call
    finally:
        hf_logging.disable_propagation()
    assert len(windows) > 1
    warnings = [r for r in caplog.records if "sequence length is longer" in r.getMessage()]
    assert warnings and all("(300 > 256)" in r.getMessage() for r in warnings)  # the plain call's only


@pytest.mark.slow
def test_one_name_per_job_in_the_progress_line_the_run_and_the_summary(sweep):
    """device=auto is named by what it means here, everywhere (it once read -auto- in the progress line)."""
    result = sweep.run("-m", "model=tiny-gpt2", "precision=fp32,bf16", "generation.max_new_tokens=2",
                       "generation.repeats=1", "generation.warmup=0")
    assert result.returncode == 0, result.stderr[-3000:]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = sorted(r.info.run_name for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job")
    assert names == [f"tiny-gpt2-{p}-{device}-2" for p in ("bf16", "fp32")]
    for name in names:
        assert f": {name}: load," in result.stdout  # the progress line
    assert "-auto-" not in result.stdout
