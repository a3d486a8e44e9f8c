"""The runtimes behind one interface: llama.cpp and CTranslate2 measured by the same contract as
transformers (fixed length, every metric), scored against the same fp32 reference, their precision
checked after loading, and what they cannot run refused in one line."""

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import ROOT, Sweep, compose_run
from qsweep import identity, sources
from qsweep.confighash import config_hash
from qsweep.staging import build_once

SPEED = {"load_time_s", "ttft_s", "latency_s", "tokens_per_s", "decode_tokens_per_s", "peak_rss_gb",
         "model_footprint_gb"}
QUALITY = {"perplexity", "kl_div_vs_fp32", "top1_agreement_vs_fp32", "output_match_vs_fp32", "degenerate_output"}


@pytest.fixture(scope="session")
def tiny_gemma():
    """A 2-layer Gemma 3 with random weights and the real Gemma tokenizer (262k tokens), from the bundled
    checkpoint: made once per test run in the run's cache, so that every test process converts and scores the
    same files (the cache keys them by their modification times)."""
    folder = Path(os.environ["QSWEEP_CACHE"]) / "tests" / "tiny-gemma"
    build_once(folder, _make_tiny_gemma)
    return folder


def _make_tiny_gemma(folder: Path) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    bundled = sources.resolve(compose_run("device=cpu").model, Path(os.environ["QSWEEP_CACHE"]))
    config = Gemma3TextConfig(vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                              max_position_embeddings=2048, sliding_window=512, bos_token_id=2, eos_token_id=1,
                              pad_token_id=0)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # norms away from 0, so that GGUF's 1 + w convention is really exercised
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    for file in Path(bundled.path).glob("tokenizer*"):
        shutil.copy(file, folder / file.name)


def test_transformers_is_the_default_and_keeps_every_hash():
    default = compose_run("device=cpu")
    assert default.backend.name == "transformers"
    assert config_hash(compose_run("device=cpu", "backend=transformers")) == config_hash(default) == "9b6121b94e3c"
    hashes = {config_hash(compose_run("device=cpu", f"backend={b}")) for b in ("transformers", "llama-cpp", "ctranslate2")}
    assert len(hashes) == 3  # the backend is part of what is measured
    assert config_hash(compose_run("device=cpu", "backend=llama-cpp", "backend.gguf_type=Q4_0")) not in hashes


def test_names_tags_and_settings_say_the_backend():
    cfg = compose_run("device=cpu", "backend=llama-cpp", "precision=int4")
    assert identity.run_name(cfg) == "gemma-3-270m-int4-cpu-128-llama-cpp"
    tags = identity.run_tags(cfg)
    assert tags["backend"] == "llama-cpp" and tags["runtime"] == "llama.cpp Q4_K_M"
    assert identity.run_tags(compose_run("device=cpu", "backend=ctranslate2", "precision=int8"))["runtime"] == \
        "CTranslate2 int8"
    assert identity.run_name(compose_run("device=cpu")) == "gemma-3-270m-fp32-cpu-128"  # unchanged


@pytest.fixture(scope="module")
def on_cuda(tmp_path_factory):
    """Both runtimes asked for device=cuda, as the two jobs of one sweep: its result and job run per backend."""
    sweep = Sweep(tmp_path_factory.mktemp("on_cuda"))
    result = sweep.run("-m", "model=tiny-gpt2", "backend=llama-cpp,ctranslate2", "device=cuda",
                       "generation.max_new_tokens=4")
    jobs = [r for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"]
    return result, {backend: [r for r in jobs if r.data.tags["backend"] == backend]
                    for backend in ("llama-cpp", "ctranslate2")}


def test_llama_cpp_refuses_cuda_in_one_line(on_cuda):
    """Its refusal comes before "this machine has no CUDA": a machine with a GPU would not help."""
    result, runs = on_cuda
    assert result.returncode == 1
    (run,) = runs["llama-cpp"]
    assert run.info.status == "FAILED" and run.data.tags["error"] == (
        "BackendUnsupported: backend=llama-cpp runs on the CPU here (llama-cpp-python is built without CUDA): use "
        "device=cpu, or backend=transformers or ctranslate2 on cuda")


def test_ctranslate2_on_cuda_without_cuda_says_what_the_machine_lacks(on_cuda):
    pytest.importorskip("ctranslate2")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result, runs = on_cuda
    assert result.returncode == 1
    (run,) = runs["ctranslate2"]
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith(
        "DeviceUnavailable: device=cuda but this machine has no CUDA")


def test_no_module_downstream_of_the_backends_names_one():
    """A fourth backend is one module and one YAML file: the job, the quality metrics and the report
    never branch on a backend's name."""
    quality = [p.relative_to(ROOT / "qsweep") for p in (ROOT / "qsweep" / "quality").glob("*.py")]
    for module in ("job.py", *quality, "report.py", "measure.py", "results.py", "charts.py"):
        text = (ROOT / "qsweep" / module).read_text().replace("llama-perplexity", "")  # a quality method's name
        assert not re.search(r"llama|ctranslate2|gguf", text, re.IGNORECASE), module


@pytest.mark.slow
def test_llama_cpp_and_ctranslate2_on_a_gemma_checkpoint(sweep, tiny_gemma):
    # the session's cache: test_handover's sweep of the same checkpoint may have made the int8 files already
    result = sweep.run("-m", "model=gemma-3-270m", "model.name=tiny-gemma", f"model.name_or_path={tiny_gemma}",
                       "device=cpu", "backend=llama-cpp,ctranslate2", "precision=fp32,int8",
                       "generation.max_new_tokens=8", "generation.repeats=2", "generation.warmup=1",
                       "quality.max_tokens=128")  # 128 scored tokens: 262k logits a position
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = sweep.client()
    runs = {(r.data.tags["backend"], r.data.tags["precision"]): r for r in sweep.runs()
            if r.data.tags.get("qsweep.kind") == "job"}
    assert set(runs) == {(b, p) for b in ("llama-cpp", "ctranslate2") for p in ("fp32", "int8")}
    for (backend, precision), run in runs.items():
        m, tags = run.data.metrics, run.data.tags
        assert run.info.status == "FINISHED" and SPEED | QUALITY | {"conversion_time_s"} <= set(m), (backend, m)
        assert m["new_tokens"] == 8 and m["timed_samples"] == 2 * 4 and 0 < m["ttft_s"] < m["latency_s"]
        assert tags["quality_reference"] in ("built", "reused") and tags["conversion"] in ("made", "reused")
        texts = json.loads(open(client.download_artifacts(run.info.run_id, "generations.json")).read())
        assert all(len(t["output_ids"]) == 8 for t in texts)
        scored = json.loads(open(client.download_artifacts(run.info.run_id, "quality.json")).read())
        assert scored["windows"] == 1 and 0 < scored["eval_positions"] < scored["window"]
        check = json.loads(open(client.download_artifacts(run.info.run_id, "precision_check.json")).read())
        if backend == "llama-cpp":
            assert check["file_type"] == {"fp32": "F32", "int8": "Q8_0"}[precision]
            assert tags["runtime"] == f"llama.cpp {check['file_type']}"
        else:
            assert check["effective"] in {"fp32": ("float32",), "int8": ("int8", "int8_float32")}[precision]
            assert set(check["stored_weight_types"]) == {"fp32": {"float32"}, "int8": {"int8"}}[precision]
    # the same fp32 reference scores every runtime: full precision matches transformers fp32
    for backend in ("llama-cpp", "ctranslate2"):
        full = runs[(backend, "fp32")].data.metrics
        assert abs(full["kl_div_vs_fp32"]) < 1e-4 and full["top1_agreement_vs_fp32"] > 0.99, (backend, full)
        assert full["output_match_vs_fp32"] == 1, backend
    # the conversion is made once: the next job of the same files finds them (what its worker's prepare does)
    from qsweep.backends import llama_cpp

    cfg = compose_run("model=gemma-3-270m", "model.name=tiny-gemma", f"model.name_or_path={tiny_gemma}", "device=cpu",
                      "backend=llama-cpp", "precision=int8")
    files = llama_cpp.prepare(cfg, sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser()))
    assert not files.converted_now and Path(files.artifact).is_file()
    assert files.conversion_time_s == runs[("llama-cpp", "int8")].data.metrics["conversion_time_s"]


@pytest.mark.slow
def test_ctranslate2_runs_random_weights_without_a_tokenizer_and_refuses_int4(sweep):
    result = sweep.run("-m", "model=tiny-gpt2", "device=cpu", "backend=ctranslate2", "precision=fp32,int4",
                       "generation.max_new_tokens=6", "generation.repeats=1", "generation.warmup=0")
    assert result.returncode == 1
    runs = {r.data.tags["precision"]: r for r in sweep.runs() if r.data.tags.get("qsweep.kind") == "job"}
    assert runs["fp32"].info.status == "FINISHED" and runs["fp32"].data.metrics["new_tokens"] == 6
    assert runs["fp32"].data.tags["quality"] == "not_applicable"
    refused = runs["int4"]
    assert refused.info.status == "FAILED" and "\n" not in refused.data.tags["error"]
    assert "backend=ctranslate2 cannot run precision=int4" in refused.data.tags["error"]
    assert "use precision=fp32 or int8" in refused.data.tags["error"]
    assert "llama-cpp" not in refused.data.tags["error"]  # it cannot run random weights either


def test_ctranslate2_refusals_name_what_would_work():
    pytest.importorskip("ctranslate2")
    from qsweep.backends import BackendUnsupported, ctranslate2

    with pytest.raises(BackendUnsupported, match=r"^backend=ctranslate2 cannot run precision=int4 on cpu here .*"
                       r"use precision=fp32 or int8, .*or backend=llama-cpp, which runs this model at precision=int4"):
        ctranslate2.check(compose_run("device=cpu", "backend=ctranslate2", "precision=int4"))
    with pytest.raises(BackendUnsupported, match=r"^backend.compute_type=bogus is not a compute type of "
                       r"CTranslate2 on cpu here \(this machine offers .*float32.*\): use one of those$"):
        ctranslate2.check(compose_run("device=cpu", "backend=ctranslate2", "backend.compute_type=bogus"))


def test_llama_cpp_makes_its_batched_context_in_the_warm_up_and_clears_it_per_call(tiny_gemma, monkeypatch):
    pytest.importorskip("llama_cpp")
    import llama_cpp

    from qsweep import backends, measure, prompts
    from qsweep.trackers import Work

    cfg = compose_run("model=gemma-3-270m", "model.name=tiny-gemma", f"model.name_or_path={tiny_gemma}", "device=cpu",
                      "backend=llama-cpp", "precision=fp32", "generation.max_new_tokens=3", "generation.batch_size=2")
    backend = backends.get("llama-cpp")
    checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    runtime = backend.load(cfg, checkpoint, backend.prepare(cfg, checkpoint))
    made, timing, real = [], [], llama_cpp.llama_init_from_model
    monkeypatch.setattr(llama_cpp, "llama_init_from_model", lambda *args: made.append(bool(timing)) or real(*args))

    @contextmanager
    def timed():
        timing.append(True)
        yield Work()

    ids = prompts.encode(cfg.generation, runtime.tokenizer, runtime.vocab_size, 0)[0]
    long = (ids[0] * 200)[:600]  # a quality window longer than a small context
    try:
        first = runtime.generate(ids[:2], 3, lambda: None)  # a new context
        again = runtime.generate(ids[:2], 3, lambda: None)  # the same one, cleared
        measure.generate_timed(runtime, ids, cfg.generation, "cpu", timed)
        assert made == [False]  # one context for batch 2, made before any timed call
        # the Llama's own one-sequence context stays small (not in the setting's memory); the quality pass,
        # after the timed calls, gets a full one and scores as a batch-1 setting does
        assert runtime.llm.n_ctx() <= 256 < 600 <= runtime.context_length
        scored = runtime.logits(long)
        assert runtime.logits(long).equal(scored) and len(made) == 2  # made once, then reused
    finally:
        runtime.close()
    assert again == first
    single_cfg = compose_run("model=gemma-3-270m", "model.name=tiny-gemma", f"model.name_or_path={tiny_gemma}",
                             "device=cpu", "backend=llama-cpp", "precision=fp32")
    single = backend.load(single_cfg, checkpoint, backend.prepare(single_cfg, checkpoint))
    try:
        assert single.llm.n_ctx() == single.context_length
        assert torch.allclose(scored, single.logits(long), atol=1e-4)
    finally:
        single.close()
