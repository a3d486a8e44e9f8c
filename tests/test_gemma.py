"""The embedded default, the real google/gemma-3-270m, runs end to end with no network."""

import json

import pytest


@pytest.mark.slow
def test_embedded_gemma_runs_end_to_end(sweep):
    # Converts the bundled GGUF on first use (about a minute), then measures; the default model, for real (its
    # quality on one window of the text: the whole text is three, each a forward pass over 262k-token logits)
    result = sweep.run("device=cpu", "generation.max_new_tokens=16", "generation.repeats=1", "quality.windows=1")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sweep.runs()
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "gemma-3-270m"
    assert run.data.metrics["new_tokens"] == 16 and run.data.metrics["tokens_per_s"] > 0
    # 268M parameters in fp32: about 1 GB
    assert 0.9 < run.data.metrics["model_footprint_gb"] < 1.1
    texts = json.loads(open(sweep.client().download_artifacts(run.info.run_id, "generations.json")).read())
    menu = texts[0]
    assert menu["prompt"] == "hello good morning may i see the menu"
    assert len(menu["output_ids"]) == 16 and sum(c.isalpha() for c in menu["output"]) > 10  # real words
    assert run.data.tags["quality"] == "measured" and run.data.metrics["kl_div_vs_fp32"] == 0  # fp32 is the reference
