"""A GGUF file as the model (measured as it is, quantized to other types, scored against its dequantized fp32
reference), and chat templates: every runtime generates from the ids of the template's rendering."""

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import Sweep, compose_run, make_tiny_gemma, write_gguf
from qsweep import backends, gguf_source, identity, prompts
from qsweep.backends import BackendUnsupported
from qsweep import gguf_files
from qsweep.backends import _hf_to_gguf as hf_to_gguf
from qsweep.backends import llama_cpp
from qsweep.confighash import config_hash
from test_architectures import tiny_checkpoint
from test_backends import QUALITY, SPEED, tiny_gemma  # noqa: F401  (the session's tiny Gemma, real tokenizer)

FAST = ["device=cpu", "generation.max_new_tokens=4", "generation.repeats=1", "generation.warmup=0",
        "quality.max_tokens=128"]  # 128 scored tokens (the tiny Gemma's: 262k logits a position)
# A Gemma-style template: the turn markers are real tokens of the Gemma vocabulary
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                 "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny Llama (random weights, a real 32k SentencePiece vocabulary) as an F32 GGUF file made by llama.cpp's
    own converter, as a user who converted their model would have it. Not the tiny Gemma: transformers reads a
    GGUF's 262k-token vocabulary for a minute or more each time it dequantizes one."""
    root = tmp_path_factory.mktemp("gguf")
    folder = tiny_checkpoint("llama", root / "tiny-llama")
    path = root / "tiny-llama-f32.gguf"
    hf_to_gguf.convert(hf_to_gguf.stage(folder, folder, root / "staged"), path, "F32")
    return path


def _same_split_text(folder: Path) -> Path:
    """A user's text that llama.cpp and transformers split alike with this Llama vocabulary (the built-in text
    they split otherwise: the test's tokenizer.json is rebuilt from llama.cpp's vocabulary without its scores)."""
    path = folder / "text.txt"
    path.write_text("hello world\n\nline one\n\nline two\n\n" * 30)
    return path


def _jobs(sweep):
    return {(r.data.tags["backend"], r.data.tags["precision"]): r for r in sweep.runs()
            if r.data.tags.get("qsweep.kind") == "job"}


@pytest.fixture(scope="module")
def gguf_sweep(tiny_gguf, tmp_path_factory):
    """The GGUF on llama.cpp as it is and as Q8_0 and Q4_K_M, and on CTranslate2 (dequantized): one multirun."""
    sweep = Sweep(tmp_path_factory.mktemp("gguf_sweep"))
    result = sweep.run("-m", "model=gemma-3-270m", "model.name=tiny-gguf", f"model.name_or_path={tiny_gguf}",
                       "backend=llama-cpp,ctranslate2", "precision=gguf,int8,int4", *FAST,
                       f"quality.text={_same_split_text(sweep.tmp_path)}")
    return result, _jobs(sweep), sweep


@pytest.mark.slow
def test_a_gguf_is_measured_as_it_is_and_quantized_against_its_dequantized_reference(tiny_gguf, gguf_sweep):
    result, jobs, sweep = gguf_sweep
    assert result.returncode == 1, result.stderr[-3000:]  # the two CTranslate2 refusals below
    types = {"gguf": "F32", "int8": "Q8_0", "int4": "Q4_K_M"}
    kl = {}
    for precision, gguf_type in types.items():
        run = jobs[("llama-cpp", precision)]
        m, tags = run.data.metrics, run.data.tags
        assert run.info.status == "FINISHED" and SPEED | QUALITY <= set(m), (precision, tags.get("error"))
        assert tags["runtime"] == f"llama.cpp {gguf_type}" and "weights_quantized_from" not in tags
        check = json.loads(open(sweep.client().download_artifacts(run.info.run_id, "precision_check.json")).read())
        assert check["file_type"] == gguf_type and check["architecture"] == "llama"
        kl[precision] = m["kl_div_vs_fp32"]
        # its own tokenizer is compared on the text quality.text names (split alike), not on the built-in one
        assert tags["quality_text"] == str(sweep.tmp_path / "text.txt")
        assert "the evaluation text" not in tags["runtime_tokenizer"]
    # ... where the built-in text would have been named: this vocabulary's two tokenizers split it otherwise
    import llama_cpp
    from transformers import AutoTokenizer

    builtin = prompts.eval_text()
    own = llama_cpp.Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)
    checkpoints = AutoTokenizer.from_pretrained(jobs[("llama-cpp", "gguf")].data.tags["artifact_tokenizer"])
    assert own.tokenize(builtin.encode(), add_bos=True, special=False) != checkpoints(builtin, verbose=False).input_ids
    as_is = jobs[("llama-cpp", "gguf")]
    assert as_is.data.tags["setting"] == "CPU GGUF F32" and "conversion" not in as_is.data.tags  # nothing made
    assert jobs[("llama-cpp", "int8")].data.tags["conversion"] == "made"
    # the file itself is its dequantized reference: the same weights, so no divergence; quantized, some
    assert abs(kl["gguf"]) < 1e-4 and as_is.data.metrics["output_match_vs_fp32"] == 1
    # F32 and Q8_0 are both ~0 on this random tiny model, where most of fp32's mass is in the tail the KL
    # estimates from draws (docs/quality.md): their order is inside that noise; Q4_K_M's loss is not
    assert abs(kl["int8"]) < 1e-4 and max(kl["gguf"], kl["int8"]) < kl["int4"], kl
    # every job says what the file held (the start of its sha256sum), whatever it measured
    assert {r.data.tags["weights_sha256"] for r in jobs.values()} == {_sha256sum(tiny_gguf)[:16]}
    dequantized = jobs[("ctranslate2", "int8")]  # another runtime takes the same file, through transformers
    assert dequantized.info.status == "FINISHED" and "weights_quantized_from" not in dequantized.data.tags
    assert QUALITY <= set(dequantized.data.metrics)
    refused = jobs[("ctranslate2", "gguf")]
    assert refused.info.status == "FAILED" and refused.data.tags["error"] == (
        "BackendUnsupported: precision=gguf is the GGUF file's own type, which backend=llama-cpp runs as it is; "
        "backend=ctranslate2 loads the file dequantized: use precision=fp32 (the quality reference) or another "
        "precision")


def _sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_gguf_rewritten_at_the_same_path_is_told_apart_by_its_weights_tag(tiny_gguf, tmp_path):
    """The same path is the same config_hash; a new download or quantization written there holds other weights:
    weights_sha256 (which skip_completed and reproduce compare) follows the file, read once per file state."""
    path = tmp_path / "model.gguf"
    shutil.copy(tiny_gguf, path)
    cfg = compose_run("model=gemma-3-270m", "model.name=tiny-gguf", f"model.name_or_path={path}",
                      "backend=llama-cpp", "precision=gguf", f"paths.cache_dir={tmp_path / 'cache'}")
    first = identity.weights_tag(cfg)
    assert first == {"weights_sha256": _sha256sum(tiny_gguf)[:16]}
    assert identity.weights_tag(cfg) == first and len(list((tmp_path / "cache" / "sha256").iterdir())) == 1
    gguf_files.quantize(tiny_gguf, path, "Q8_0", 1)
    assert identity.weights_tag(cfg) == {"weights_sha256": _sha256sum(path)[:16]} != first
    assert len(list((tmp_path / "cache" / "sha256").iterdir())) == 2  # one hash per state of the file


def _gguf_with_vocabulary(path: Path, tokens, template=None) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    if template:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_files_of_one_vocabulary_share_one_tokenizer_conversion(tiny_gguf, gguf_sweep, tmp_path):
    """The sweep's dequantization converted the file's vocabulary once, under a digest its quantizations share.
    One token more is another vocabulary; a chat template is the file's own (set after the shared conversion)."""
    digest = gguf_files.tokenizer_digest(tiny_gguf)
    assert (Path(os.environ["QSWEEP_CACHE"]) / "gguf-tokenizers" / digest / "tokenizer_config.json").is_file()
    gguf_files.quantize(tiny_gguf, tmp_path / "q8_0.gguf", "Q8_0", 1)
    assert gguf_files.tokenizer_digest(tmp_path / "q8_0.gguf") == digest
    made = {name: gguf_files.tokenizer_digest(_gguf_with_vocabulary(tmp_path / f"{name}.gguf", tokens, template))
            for name, tokens, template in (("a", ["<s>", "a"], None), ("chat", ["<s>", "a"], CHAT_TEMPLATE),
                                           ("more", ["<s>", "a", "b"], None))}
    assert made["a"] == made["chat"] != made["more"]


@pytest.mark.slow
def test_a_quantized_gguf_is_quantized_again_only_when_asked(tiny_gguf, tmp_path):
    """A Q8_0 file: measured as it is (precision=gguf, or the precision whose type it is), refused in one
    line at another type unless backend.requantize=true. The check reads the header only."""
    q8 = tmp_path / "tiny-q8_0.gguf"
    gguf_files.quantize(tiny_gguf, q8, "Q8_0", 1)
    model = ["model=gemma-3-270m", f"model.name_or_path={q8}", "device=cpu", "backend=llama-cpp"]
    for fine in (["precision=gguf"], ["precision=int8"], ["precision=int4", "backend.requantize=true"]):
        llama_cpp.check(compose_run(*model, *fine))
    with pytest.raises(BackendUnsupported, match=r"quantized already \(Q8_0\): quantizing it again to Q4_K_M .*"
                                                 r"use precision=gguf .* or backend.requantize=true") as refused:
        llama_cpp.check(compose_run(*model, "precision=int4"))
    assert "\n" not in str(refused.value)
    assert identity.run_name(compose_run(*model, "precision=gguf")).startswith("gemma-3-270m-gguf-Q8_0-cpu-")


def test_a_gguf_of_a_hub_repository_is_found_in_the_hub_cache_with_no_network(tiny_gguf, tmp_path, monkeypatch):
    """model.name_or_path=<org>/<repo> model.gguf_file=<file>, as a user who downloaded the file once has it: it
    is found in the hub cache offline and read there; a file the cache lacks is refused in one line that says what
    to do."""
    import huggingface_hub.constants

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-llama-GGUF"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    blob = repo / "blobs" / _sha256sum(tiny_gguf)  # as huggingface_hub lays a download out: a link to its blob
    blob.parent.mkdir()
    shutil.copy(tiny_gguf, blob)
    cached = repo / "snapshots" / revision / "tiny-llama-f32.gguf"
    cached.symlink_to(os.path.relpath(blob, cached.parent))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = compose_run("model=gemma-3-270m", "model.name=tiny-gguf", "model.name_or_path=someone/tiny-llama-GGUF",
                      "model.gguf_file=tiny-llama-f32.gguf", f"paths.cache_dir={tmp_path / 'cache'}")
    model = cfg.model
    assert gguf_source.locate(model, download=False) == gguf_source.locate(model) == cached
    assert gguf_source.file_type(model) == "F32"
    assert identity.weights_tag(cfg) == {"weights_sha256": blob.name[:16]}

    missing = dataclasses.replace(model, gguf_file="tiny-llama-Q8_0.gguf")
    assert gguf_source.locate(missing, download=False) is None and gguf_source.file_type(missing) is None
    assert identity.weights_tag(dataclasses.replace(cfg, model=missing)) == {}  # tagged by the job that downloads it
    with pytest.raises(gguf_source.GgufUnavailable) as refused:
        gguf_source.locate(missing)
    assert "\n" not in str(refused.value)
    assert "tiny-llama-Q8_0.gguf" in str(refused.value) and "download it once" in str(refused.value)


def test_gguf_options_keep_every_pinned_hash_and_refuse_what_cannot_work():
    base = compose_run("device=cpu")
    assert config_hash(compose_run("device=cpu", "generation.chat_template=none")) == config_hash(base)
    assert config_hash(compose_run("device=cpu", "generation.chat_template=auto")) != config_hash(base)
    with pytest.raises(BackendUnsupported, match="precision=gguf measures a GGUF file as it is, and model."
                                                 "name_or_path=bundled:gemma-3-270m is not one"):
        llama_cpp.check(compose_run("device=cpu", "precision=gguf", "backend=llama-cpp"))
    with pytest.raises(BackendUnsupported, match="precision=gguf is the GGUF file's own type"):
        backends.get("transformers").check(compose_run("device=cpu", "precision=gguf"))
    with pytest.raises(Exception, match="generation.chat_template=auto wraps text prompts"):
        compose_run("device=cpu", "generation.chat_template=auto", "generation.prompt_tokens=16")


def test_a_gguf_transformers_cannot_read_is_tagged_and_refused_where_it_needs_transformers(tmp_path):
    """llama.cpp still measures it (speed, memory); the tag says why there is no quality reference, and the
    runtimes that load it through transformers say in one line that they cannot."""
    model = ["model=gemma-3-270m", f"model.name_or_path={write_gguf(tmp_path / 'x.gguf', 'rwkv6')}", "device=cpu"]
    tags = identity.run_tags(compose_run(*model, "backend=llama-cpp", "precision=gguf"))
    assert tags["weights_quantized_from"] == "Q8_0" and tags["runtime"] == "llama.cpp Q8_0"
    assert tags["quality_unavailable"].startswith("transformers cannot read GGUF architecture rwkv6, so it has no "
                                                  "fp32 reference")
    for backend in ("transformers", "ctranslate2"):
        with pytest.raises(BackendUnsupported, match="cannot read GGUF architecture rwkv6.*: use backend=llama-cpp"):
            backends.get(backend).check(compose_run(*model, f"backend={backend}"))
    assert "quality_unavailable" not in identity.run_tags(compose_run(*model[:1], "device=cpu"))


@pytest.fixture(scope="module")
def chat_gemma(tiny_gemma, tmp_path_factory):  # noqa: F811
    """The tiny Gemma with a chat template in its tokenizer_config.json; a copy that keeps every file's
    modification time, so it shares the tiny Gemma's conversions and references in the cache."""
    folder = tmp_path_factory.mktemp("chat") / "tiny-gemma-chat"
    shutil.copytree(tiny_gemma, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


@pytest.mark.slow
def test_every_runtime_generates_from_the_chat_templates_rendering(chat_gemma, tmp_path):
    from transformers import AutoTokenizer

    sweep = Sweep(tmp_path)
    result = sweep.run("-m", "model=gemma-3-270m", "model.name=tiny-chat", f"model.name_or_path={chat_gemma}",
                       "backend=transformers,llama-cpp,ctranslate2", "generation.chat_template=required", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(chat_gemma)
    written = list(compose_run("device=cpu").generation.prompts)
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              tokenize=False) for p in written]
    assert all(r.startswith("<bos><start_of_turn>user\n") and r.endswith("<start_of_turn>model\n") for r in rendered)
    expected = [tokenizer(r, add_special_tokens=False).input_ids for r in rendered]
    assert all(ids.count(tokenizer.bos_token_id) == 1 for ids in expected)  # the template's BOS, none added
    for backend, run in {b: r for (b, _), r in _jobs(sweep).items()}.items():
        texts = json.loads(open(sweep.client().download_artifacts(run.info.run_id, "generations.json")).read())
        assert [t["prompt_ids"] for t in texts] == expected, backend


def test_a_chat_template_wraps_prompts_and_renders_in_a_sandbox(tmp_path):
    """A template is code from the model's files: transformers renders it in jinja2's sandbox, which refuses
    Python internals (a template cannot reach os or subprocess through them)."""
    from jinja2.exceptions import SecurityError
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_gemma(tmp_path / "tiny"))  # a character vocabulary
    gen = compose_run("device=cpu", "generation.chat_template=auto").generation
    raw, _ = prompts.encode(compose_run("device=cpu").generation, tokenizer, tokenizer.vocab_size, 0)
    assert raw[0] == tokenizer(gen.prompts[0]).input_ids  # chat_template=none: the prompts as written
    assert prompts.encode(gen, tokenizer, tokenizer.vocab_size, 0)[0] == raw  # auto, and no template: as written
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Bot:"
    wrapped, _ = prompts.encode(gen, tokenizer, tokenizer.vocab_size, 0)
    assert tokenizer.decode(wrapped[0]) == f"<bos>User: {gen.prompts[0]}\nBot:"
    tokenizer.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SecurityError):
        prompts.encode(gen, tokenizer, tokenizer.vocab_size, 0)


def test_a_runtime_whose_own_tokenizer_splits_otherwise_says_where(tmp_path):
    """runtime_tokenizer: every runtime is fed the checkpoint's ids; the tag names the texts the runtime's own
    tokenizer (the one a deployment would use) would split otherwise, "same" where none, nothing without one.
    The evaluation text is the one quality.text names, not the built-in one."""
    class Tokenizer:
        def __call__(self, text, **_):
            return type("Encoded", (), {"input_ids": [ord(c) for c in text]})()

    class Runtime:
        tokenizer = Tokenizer()

        def __init__(self, splits):
            self.splits = splits

        def own_tokens(self, text):
            return None if self.splits is None else [ord(c) for c in text.replace(self.splits, "")]

    from qsweep.config import QualityConfig

    builtin = QualityConfig()
    users = tmp_path / "users.txt"
    users.write_text("a user's \u2603 text")
    assert prompts.own_splits(Runtime("\u2603"), ["hello", "the \u2603 menu"], builtin) == "differs: prompt 2"
    assert prompts.own_splits(Runtime("\u2603"), ["hello"], builtin) == "same"
    assert prompts.own_splits(Runtime("\u2603"), ["hello"], QualityConfig(text=str(users))) == \
        "differs: the evaluation text"
    assert prompts.own_splits(Runtime(" the "), ["hello"], builtin) == "differs: the evaluation text"
    gone = QualityConfig(text=str(users))
    users.unlink()  # a runtime without a tokenizer of its own does not read the text
    assert prompts.own_splits(Runtime(None), ["hello"], gone) is None
