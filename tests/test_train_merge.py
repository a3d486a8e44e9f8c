"""train_merge on a tiny Gemma 3 built from config: the loss goes down, the merged model computes what the
adapter model computes, and the saved checkpoint loads through the sweep's loader."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from conftest import ROOT, RESTAURANT_PROMPTS, Sweep, compose_cfg, compose_run, fine_tune, make_tiny_gemma
from qsweep import sources
from qsweep.backends.transformers import loader
from qsweep.config import PROJECT_ROOT, ConfigError
from train_merge import data, finetune, merge, pipeline
from train_merge.config import register_schemas, validate

register_schemas()
STEPS = 24


def compose_train_merge(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train_merge", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`python -m train_merge` on the tiny Gemma, once for the module: (base, output, store uri, run)."""
    tmp = tmp_path_factory.mktemp("train_merge")
    base = make_tiny_gemma(tmp / "tiny-gemma")
    out, uri = tmp / "models" / "tiny-gemma-ft", f"sqlite:///{tmp / 'mlflow.db'}"
    result = fine_tune(base, out, uri, "data.limit_train=96", "data.limit_heldout=16", f"train.max_steps={STEPS}",
                       "train.epochs=4", "lora.r=8", "eval.max_new_tokens=12")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train_merge").experiment_id])
    return base, out, uri, run


def test_loss_goes_down(tiny):
    _, _, uri, run = tiny
    metrics = run.data.metrics
    history = [m.value for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")]
    assert len(history) == STEPS and metrics["train_steps"] == STEPS
    assert sum(history[-4:]) / 4 < 0.8 * sum(history[:4]) / 4
    assert metrics["heldout_loss_after"] < 0.8 * metrics["heldout_loss_before"]
    # the saved bf16 checkpoint measures like the model it was made from
    assert abs(metrics["heldout_loss_merged"] - metrics["heldout_loss_after"]) < 0.1


def test_merged_logits_equal_the_adapter_models(tiny):
    base, out, _, run = tiny
    assert run.data.metrics["merge_max_abs_diff"] < 1e-4
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    exchanges = data.load(limit_heldout=4).heldout
    batch = data.collate([data.encode(e, tokenizer, 128) for e in exchanges], tokenizer.pad_token_id)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        base_logits = plain(**inputs).logits
        adapted = PeftModel.from_pretrained(plain, str(out) + "-adapter").eval()
        adapter_logits = adapted(**inputs).logits
        merged_logits = adapted.merge_and_unload()(**inputs).logits
    assert (adapter_logits - base_logits).abs().max() > 0.1  # the adapter really changes the model
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)


def test_saved_checkpoint_loads_through_the_sweeps_loader(tiny):
    _, out, _, run = tiny
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "train_merge.json"]
    assert json.loads((out / "train_merge.json").read_text())["mlflow_run_id"] == run.info.run_id
    loaded = loader.load(compose_run("model=gemma-3-270m-ft", f"model.name_or_path={out}", "device=cpu",
                                     "precision=bf16"))
    assert loaded.precision.weight_dtypes.keys() == {"bfloat16"} and loaded.tokenizer is not None
    ids = loaded.tokenizer(RESTAURANT_PROMPTS[0], return_tensors="pt").input_ids
    assert loaded.model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_the_run_records_what_the_issue_asks(tiny):
    _, out, uri, run = tiny
    assert run.info.status == "FINISHED" and run.data.tags["checkpoint"] == str(out)
    for key in ("heldout_loss_before", "heldout_loss_after", "heldout_perplexity_before",
                "heldout_perplexity_after", "merge_max_abs_diff", "train_time_s"):
        assert key in run.data.metrics, key
    assert run.data.params["lora.r"] == "8" and run.data.params["train.lr"] == "0.01"
    samples = json.loads(Path(MlflowClient(uri).download_artifacts(run.info.run_id, "samples.json")).read_text())
    assert [s["prompt"] for s in samples] == RESTAURANT_PROMPTS and all("before" in s and "after" in s for s in samples)


def test_the_checkpoint_is_an_mlflow_model_made_by_its_fine_tune_run(tiny):
    """A logged model (source run, params, held-out losses) and a registered model version whose source is
    the checkpoint folder: the weights are not copied into the store."""
    _, out, uri, run = tiny
    client, made = MlflowClient(uri), json.loads((out / "train_merge.json").read_text())
    model = client.get_logged_model(made["logged_model_id"])
    assert model.source_run_id == run.info.run_id and model.name == out.name and str(model.status) == "READY"
    assert model.tags["checkpoint"] == str(out) and model.tags["weights_sha256"] == sources.weights_sha256(out)
    assert model.params["lora.r"] == "8" and model.params["train.max_steps"] == str(STEPS)
    assert {m.key: m.value for m in model.metrics}["heldout_loss_merged"] == run.data.metrics["heldout_loss_merged"]
    assert made["registered_model"] == out.name and made["model_version"] == "1"
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": out.name, "version": "1"}]
    version = client.get_model_version(out.name, "1")
    assert version.source == out.as_uri() and version.run_id == run.info.run_id
    assert version.tags["logged_model_id"] == model.model_id
    assert run.data.tags["logged_model_id"] == model.model_id and run.data.tags["model_version"] == f"{out.name}/1"
    store_files = list((out.parent.parent / "artifacts").rglob("*"))
    assert store_files and not any(f.suffix == ".safetensors" for f in store_files)


@pytest.mark.slow
def test_sweep_runs_of_the_checkpoint_point_to_its_model_and_a_new_fine_tune_is_a_new_version(tiny):
    base, out, uri, run = tiny
    made = json.loads((out / "train_merge.json").read_text())
    sweep = Sweep(out.parent.parent)  # the fine-tune's store
    result = sweep.run("-m", "model=gemma-3-270m-ft", f"model.name_or_path={out}", "device=cpu",
                       "precision=fp32,bf16", "generation.max_new_tokens=4", "generation.repeats=1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    jobs = {r.data.tags["precision"]: r for r in sweep.runs() if r.data.tags["qsweep.kind"] == "job"}
    assert set(jobs) == {"fp32", "bf16"}
    client = MlflowClient(uri)
    for job in jobs.values():
        assert job.data.tags["fine_tune_run"] == run.info.run_id
        assert job.data.tags["logged_model_id"] == made["logged_model_id"]
        assert job.data.tags["model_version"] == f"{out.name}/1"
        inputs = client.get_run(job.info.run_id).inputs  # search_runs leaves model inputs out
        assert [m.model_id for m in inputs.model_inputs] == [made["logged_model_id"]]
        # real weights: the evaluation text is an input too
        assert {d.dataset.name for d in job.inputs.dataset_inputs} == {"prompts", "eval_text"}
    # the model's page lists the runs that measured it, through their metrics
    model_runs = {m.run_id for m in client.get_logged_model(made["logged_model_id"]).metrics}
    assert model_runs == {run.info.run_id, *(j.info.run_id for j in jobs.values())}
    tables = {}
    for precision, job in jobs.items():
        logged = json.loads(Path(client.download_artifacts(job.info.run_id, "generations_table.json")).read_text())
        tables[precision] = dict(zip(logged["columns"], map(list, zip(*logged["data"]))))
    fp32, bf16 = tables["fp32"], tables["bf16"]
    assert fp32["fp32_output"] == fp32["output"] and fp32["matching_tokens"] == [4] * len(fp32["prompt"])
    assert bf16["prompt"] == fp32["prompt"] and bf16["fp32_output"] == fp32["output"]
    assert all(0 <= n <= 4 for n in bf16["matching_tokens"])
    assert all(reason for reason in bf16["degenerate_reason"])

    again = out.parent.parent / "again" / out.name  # a second fine-tune of a checkpoint of the same name
    result = fine_tune(base, again, uri)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    second = json.loads((again / "train_merge.json").read_text())
    assert second["registered_model"] == out.name and second["model_version"] == "2"
    assert second["logged_model_id"] != made["logged_model_id"]
    assert client.get_logged_model(second["logged_model_id"]).source_run_id == second["mlflow_run_id"]
    assert client.get_model_version(out.name, "2").source == again.as_uri()


def test_reply_logits_are_the_models_logits_at_the_reply(tiny):
    base, _, _, _ = tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    batch = data.collate([data.encode(e, tokenizer, 128) for e in data.load(limit_heldout=3).heldout], 0)
    with torch.no_grad():
        selected, targets = finetune.reply_logits(model, batch)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    keep = batch.labels[:, 1:] != data.IGNORE
    torch.testing.assert_close(selected, full[:, :-1][keep])
    assert torch.equal(targets, batch.labels[:, 1:][keep]) and len(targets) == batch.target_tokens


def test_only_the_reply_is_learned():
    class Chars:  # a stand-in tokenizer: one id per character, bos=2, eos=1
        eos_token_id = 1

        def __call__(self, text, add_special_tokens=True):
            return type("Enc", (), {"input_ids": ([2] if add_special_tokens else []) + [ord(c) for c in text]})

    encoded = data.encode(data.Exchange("x", "t", "hi", "Hello!"), Chars(), max_length=64)
    assert encoded.input_ids == [2, ord("h"), ord("i"), ord("\n")] + [ord(c) for c in "Hello!"] + [1]
    assert encoded.labels[:3] == [data.IGNORE] * 3 and encoded.labels[3:] == encoded.input_ids[3:]


def test_shipped_data_set_has_a_fixed_held_out_split_without_the_seed_prompts():
    dialogues = data.load()
    assert 300 <= len(dialogues.train) + len(dialogues.heldout) <= 600
    assert 0.08 <= len(dialogues.heldout) / (len(dialogues.train) + len(dialogues.heldout)) <= 0.12
    customers = {e.customer for e in dialogues.train} | {e.customer for e in dialogues.heldout}
    assert not customers & set(RESTAURANT_PROMPTS)
    assert not {e.customer for e in dialogues.train} & {e.customer for e in dialogues.heldout}
    # no held-out reply is learned word for word: the held-out loss measures what was not seen
    assert not {e.waiter.lower() for e in dialogues.train} & {e.waiter.lower() for e in dialogues.heldout}
    topics = {e.topic for e in dialogues.train}
    assert {"greeting_menu", "order", "drinks", "change", "allergy", "bill"} <= topics


def test_default_config_fine_tunes_the_embedded_gemma_into_models():
    cfg = validate(compose_train_merge("train.device=cpu"))
    assert cfg.model.name_or_path == "bundled:gemma-3-270m"
    assert cfg.merge.output_dir == str(PROJECT_ROOT / "models" / "gemma-3-270m-ft")
    assert cfg.eval.prompts == RESTAURANT_PROMPTS


@pytest.mark.parametrize("override, message", [
    ("train.quantization=int8", "train.quantization"), ("lora.r=0", "lora.r=0"), ("train.dtype=float8", "train.dtype"),
    ("model.weights=random", "pretrained weights"), ("train.grad_clip=0", "train.grad_clip=0"),
    ("train.grad_clip=-1", "train.grad_clip=-1"), ("lora.alpha=0", "lora.alpha=0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1"), ("train.weight_decay=-0.1", "train.weight_decay=-0.1"),
    ("eval.prompts=[]", "eval.prompts is empty"), ("data.path=/nonexistent.jsonl", "no such file")])
def test_bad_values_are_refused_before_loading(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_train_merge("train.device=cpu", override))


def test_qlora_merges_into_a_fresh_unquantized_base(tiny, tmp_path):
    """QLoRA (4-bit base, bitsandbytes; also runs on CPU): the adapter is merged into the base loaded anew
    at merge.dtype, so the saved checkpoint is a plain bf16 one."""
    base, _, _, _ = tiny
    out = tmp_path / "tiny-gemma-qlora"
    cfg = validate(compose_train_merge(
        "model.name=tiny-gemma", f"model.name_or_path={base}", "data.limit_train=32", "data.limit_heldout=8",
        "data.max_length=128", "train.max_steps=8", "train.lr=1e-2", "train.device=cpu", "train.num_threads=1",
        "train.quantization=int4", "lora.r=8", "eval.max_new_tokens=4", "merge.check_examples=8",
        f"merge.output_dir={out}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"))
    result = pipeline.run(cfg)
    assert result.heldout_loss_after < result.heldout_loss_before and result.merge_max_abs_diff < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    loaded = loader.load(compose_run("model=gemma-3-270m-ft", f"model.name_or_path={out}", "device=cpu",
                                     "precision=bf16"))
    assert loaded.precision.linear_4bit == 0


def test_a_failed_merge_check_fails_the_run_and_saves_nothing(tiny, tmp_path):
    base, _, _, _ = tiny
    out, uri = tmp_path / "tiny-gemma-ft", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = validate(compose_train_merge(
        "model.name=tiny-gemma", f"model.name_or_path={base}", "data.limit_train=16", "data.limit_heldout=8",
        "data.max_length=128", "train.max_steps=2", "train.device=cpu", "train.num_threads=1",
        "eval.max_new_tokens=2", "merge.max_abs_diff=1e-12", f"merge.output_dir={out}", f"tracking.uri={uri}"))
    with pytest.raises(merge.MergeMismatch):
        pipeline.run(cfg)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train_merge").experiment_id])
    assert run.info.status == "FAILED" and "MergeMismatch" in run.data.tags["error"]
    assert "merge_max_abs_diff" in run.data.metrics and not out.exists()


def test_the_merge_check_refuses_a_mismatch():
    merge.require_close(1e-6, 1e-3)
    for bad in (0.5, float("nan")):
        with pytest.raises(merge.MergeMismatch, match="nothing was saved"):
            merge.require_close(bad, 1e-3)


def test_fine_tuned_model_before_it_exists_says_how_to_make_it(tmp_path):
    assert compose_cfg("model=gemma-3-270m-ft").model.name_or_path == str(PROJECT_ROOT / "models" / "gemma-3-270m-ft")
    cfg = compose_run("model=gemma-3-270m-ft", f"model.name_or_path={tmp_path}/gemma-3-270m-ft", "device=cpu")
    with pytest.raises(sources.ModelUnavailable, match="python -m train_merge"):
        sources.resolve(cfg.model, tmp_path)


def test_the_finetune_preset_compares_the_fine_tuned_model_on_cpu_and_gpu():
    cfg = compose_cfg("experiment=finetune-cpu-vs-gpu", hydra_config=True)
    assert cfg.model.name == "gemma-3-270m-ft"
    assert dict(cfg.hydra.sweeper.params) == {"setting": "cpu-fp32,cuda-bf16,cuda-int8,cuda-int4"}
    assert list(cfg.generation.prompts) == RESTAURANT_PROMPTS
