"""Any architecture on every runtime that converts it: tiny random-weight checkpoints of five families with their
real tokenizers (tests/data/tokenizers), measured by transformers, llama.cpp (through llama.cpp's own converter)
and CTranslate2 in one sweep, each scored against the one transformers fp32 reference on the same token ids."""

import json
import lzma
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, Sweep, compose_run
from qsweep import identity, sources

TOKENIZERS = ROOT / "tests" / "data" / "tokenizers"
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)
# architecture: (transformers config class, its fields, the tokenizer of its family in tests/data/tokenizers)
ARCHITECTURES = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=50257), "gpt-2"),
    "llama": ("LlamaConfig", dict(vocab_size=32000, **SMALL), "llama-spm"),
    "mistral": ("MistralConfig", dict(vocab_size=32000, sliding_window=None, **SMALL), "llama-spm"),
    "qwen2": ("Qwen2Config", dict(vocab_size=151936, **SMALL), "qwen2"),
    "starcoder2": ("Starcoder2Config", dict(vocab_size=49152, bos_token_id=0, eos_token_id=0, **SMALL), "starcoder"),
}
RUNTIMES = ("transformers", "llama-cpp", "ctranslate2")
NOT_CONVERTED = {("starcoder2", "ctranslate2")}  # CTranslate2 4.8.5 has no Starcoder2 loader


def tokenizer_files(family: str, folder: Path) -> None:
    """A family's tokenizer as transformers saves it (tokenizer.json is stored compressed)."""
    source = TOKENIZERS / family
    (folder / "tokenizer.json").write_bytes(lzma.decompress((source / "tokenizer.json.xz").read_bytes()))
    shutil.copy(source / "tokenizer_config.json", folder / "tokenizer_config.json")


def tiny_checkpoint(name: str, folder: Path) -> Path:
    import transformers

    config_class, fields, family = ARCHITECTURES[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**fields)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer_files(family, folder)
    return folder


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep: every architecture x runtime at fp32 (llama.cpp F32), four new tokens, one quality window."""
    root = tmp_path_factory.mktemp("architectures")
    (root / "conf" / "model").mkdir(parents=True)
    for name in ARCHITECTURES:
        folder = tiny_checkpoint(name, root / "checkpoints" / name)
        (root / "conf" / "model" / f"arch-{name}.yaml").write_text(f"name: arch-{name}\nname_or_path: {folder}\n")
    sweep = Sweep(root)
    result = sweep.run("-m", f"hydra.searchpath=[file://{root / 'conf'}]",
                       "model=" + ",".join(f"arch-{n}" for n in ARCHITECTURES), f"backend={','.join(RUNTIMES)}",
                       "device=cpu", "precision=fp32", "generation.max_new_tokens=4", "generation.repeats=1",
                       "generation.warmup=0", "quality.windows=1", "runner.reuse_worker=always",  # one warm worker
                       f"paths.cache_dir={root / 'cache'}")
    runs = {(r.data.tags["model"][len("arch-"):], r.data.tags["backend"]): r for r in sweep.runs()
            if r.data.tags.get("qsweep.kind") == "job"}
    return result, runs, sweep


@pytest.mark.slow
def test_every_architecture_finishes_on_every_runtime_that_converts_it(swept):
    result, runs, _ = swept
    assert set(runs) == {(a, b) for a in ARCHITECTURES for b in RUNTIMES}, result.stderr[-3000:]
    for key, run in runs.items():
        if key in NOT_CONVERTED:
            continue
        assert run.info.status == "FINISHED", (key, run.data.tags.get("error"), result.stdout[-2000:])
        assert run.data.metrics["new_tokens"] == 4 and run.data.tags["quality"] == "measured", key
        assert "quant_type" not in run.data.tags, key  # bitsandbytes' setting: on no fp32 run, on no other runtime
    assert runs[("gpt2", "llama-cpp")].data.tags["runtime"] == "llama.cpp F32"
    assert runs[("gpt2", "llama-cpp")].data.tags["setting"] == "CPU FP32 llama.cpp F32"


@pytest.mark.slow
def test_llama_cpp_f32_matches_transformers_fp32_on_every_architecture(swept):
    _, runs, sweep = swept
    for name in ARCHITECTURES:
        for backend in ("llama-cpp", "ctranslate2"):
            if (name, backend) in NOT_CONVERTED:
                continue
            m = runs[(name, backend)].data.metrics
            assert abs(m["kl_div_vs_fp32"]) <= 1e-4 and m["top1_agreement_vs_fp32"] > 0.99, (name, backend, m)
            assert m["output_match_vs_fp32"] == 1, (name, backend)
        check = json.loads(open(sweep.client().download_artifacts(runs[(name, "llama-cpp")].info.run_id,
                                                                   "precision_check.json")).read())
        assert check["file_type"] == "F32" and set(check["tensor_types"]) == {"F32"}, name


@pytest.mark.slow
def test_an_architecture_a_converter_lacks_is_refused_in_one_line_naming_who_runs_it(swept):
    _, runs, _ = swept
    (refused,) = [runs[key] for key in NOT_CONVERTED]
    assert refused.info.status == "FAILED" and "\n" not in refused.data.tags["error"]
    assert refused.data.tags["error"] == (
        "BackendUnsupported: backend=ctranslate2 cannot run Starcoder2ForCausalLM (CTranslate2 4.8.5's converter has "
        "no loader for model_type=starcoder2): use backend=llama-cpp or transformers")


def test_no_converter_takes_it_names_the_backends_that_can(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("ctranslate2")
    from qsweep.backends import BackendUnsupported, ctranslate2, llama_cpp

    cfg = compose_run("model=tiny-gpt2", "device=cpu", "backend=llama-cpp")
    cfg.model.architecture = {"model_type": "xglm", "num_layers": 1, "d_model": 32, "attention_heads": 2}
    with pytest.raises(BackendUnsupported, match=r"^backend=llama-cpp cannot run XGLMForCausalLM \(llama.cpp's "
                       r"converter \(llama-cpp-python 0\.3\.36\) does not convert it\): use backend=transformers$"):
        llama_cpp.check(cfg)
    cfg.backend = compose_run("backend=ctranslate2", "device=cpu").backend
    with pytest.raises(BackendUnsupported, match=r"^backend=ctranslate2 cannot run XGLMForCausalLM .*: use "
                       r"backend=transformers$"):
        ctranslate2.check(cfg)


def test_a_missing_converter_says_how_to_install_it(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    from qsweep.backends import BackendUnsupported, llama_cpp

    monkeypatch.setenv("QSWEEP_LLAMA_CPP_SOURCE", str(tmp_path))
    with pytest.raises(BackendUnsupported, match=r"^backend=llama-cpp needs llama.cpp's converter for "
                       r"llama-cpp-python 0\.3\.36, which is not in .*: run `make runtimes`"):
        llama_cpp.check(compose_run("model=tiny-gpt2", "device=cpu", "backend=llama-cpp"))


def test_other_runtimes_are_tagged_with_their_own_quantization_only():
    cfg = compose_run("device=cpu", "backend=llama-cpp", "precision=int4")
    tags = identity.run_tags(cfg)
    assert "quant_type" not in tags and tags["setting"] == "CPU INT4 llama.cpp Q4_K_M"
    assert identity.run_tags(compose_run("device=cpu", "precision=int4"))["quant_type"] == "nf4"  # bitsandbytes'
    pytest.importorskip("llama_cpp")
    from qsweep.backends import BackendUnsupported, llama_cpp

    with pytest.raises(BackendUnsupported, match=r"^precision.quant_type and precision.double_quant are "
                       r"bitsandbytes' settings \(backend=transformers\), unused by backend=llama-cpp: "):
        llama_cpp.check(compose_run("device=cpu", "backend=llama-cpp", "precision=int4", "precision.quant_type=fp4"))


def test_weights_are_hashed_once_per_file_state(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    first = sources.weights_sha256(folder, cache)
    assert first == sources.weights_sha256(folder)  # the same value as hashing the files again
    stamp = weights.stat().st_mtime_ns
    weights.write_bytes(b"b" * 1000)  # same size, same time: the file is not read again
    os.utime(weights, ns=(stamp, stamp))
    assert sources.weights_sha256(folder, cache) == first
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # modified: read again
    assert sources.weights_sha256(folder, cache) == sources.weights_sha256(folder) != first


def test_random_weights_of_a_hub_model_take_its_tokenizer_from_the_hub_cache(tmp_path, monkeypatch):
    """model=gpt2 model.weights=random, as a user who once downloaded GPT-2 has it (benchmarks/mission_grid.py
    lays the cache out): the architecture from the model's config, the real tokenizer from the hub cache."""
    import importlib.util

    import huggingface_hub.constants
    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("mission_grid", ROOT / "benchmarks" / "mission_grid.py")
    mission_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mission_grid)
    mission_grid.hub_cache(tmp_path / "hf")
    model = compose_run("model=distilgpt2", "model.weights=random", "device=cpu").model
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert sources._architecture_for_random(model)[1] is None  # nothing cached: random token ids, said elsewhere
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    config, tokenizer_path = sources._architecture_for_random(model)
    assert config.model_type == "gpt2" and config.n_layer == 6  # conf/model/distilgpt2.yaml's architecture
    assert tokenizer_path == str(tmp_path / "hf" / "hub" / "models--distilbert--distilgpt2" / "snapshots" /
                                 mission_grid.REVISION)
    assert AutoTokenizer.from_pretrained(tokenizer_path)("Hello world").input_ids == [15496, 995]  # GPT-2's ids
