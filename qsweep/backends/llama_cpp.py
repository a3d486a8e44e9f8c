"""llama.cpp (llama-cpp-python) on GGUF files made once from the checkpoint by llama.cpp's own converter
(_hf_to_gguf.py; the bundled Gemma 3 by _gguf.py), or on the GGUF file the user named as the model: as it is
(precision=gguf, or the precision of its own type), or quantized from it where it is F32/F16/BF16 (an already
quantized file only with backend.requantize=true).

Precisions map to GGUF types: fp32/fp16/bf16/int8/int4 = F32/F16/BF16/Q8_0/Q4_K_M, or
backend.gguf_type. Generation is llama.cpp's own decode loop driven token by token (greedy argmax, so
EOS means nothing to it and every sequence gets exactly max_new_tokens); several sequences decode
together in one batch, each with its own sequence id in the KV cache. Built here without CUDA.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from qsweep import gguf_source, sources
from qsweep.backends import (BackendUnsupported, Files, PrecisionCheck, Runtime, context_length, convert_once,
                             refuse_architecture, require_own_quantization, require_package, require_precision,
                             tokenizer)
from qsweep import gguf_files
from qsweep.backends import _hf_to_gguf as hf_to_gguf
from qsweep.config import GGUF_PRECISION, BackendConfig, RunConfig
from qsweep.sources import Checkpoint, fingerprint_key

PRECISION_TYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "int8": "Q8_0", "int4": "Q4_K_M"}
N_BATCH = 256  # tokens per llama_decode call; its compute buffer holds n_batch x vocabulary logits
MAX_CONTEXT = 2048  # the KV cache: enough for the evaluation windows (1024) and long prompts
SMALL_CONTEXT = 256  # the one-sequence context of a batch > 1 setting, which decodes in a context of its own
LIBRARIES = ("llama_cpp",)  # imported by a job before its memory is tracked (backends/__init__.py)


@dataclass
class LlamaCppConfig(BackendConfig):
    name: str = "llama-cpp"
    gguf_type: Optional[str] = None  # a GGUF type instead of the precision's (Q4_0, Q5_K_M, ...)
    # a GGUF model that is quantized already may be quantized again (from its quantized weights) to other types
    requantize: Optional[bool] = None


def gguf_type(cfg: RunConfig) -> str:
    """The GGUF type the job measures ("" where unknown: a GGUF model's own type before the file is there)."""
    if cfg.backend.gguf_type:
        return cfg.backend.gguf_type
    if cfg.precision.name == GGUF_PRECISION:
        return gguf_source.file_type(cfg.model) or ""
    return PRECISION_TYPES.get(cfg.precision.name, "")


def label(cfg: RunConfig) -> str:
    return f"llama.cpp {gguf_type(cfg) or 'GGUF'}"


def _from_file(cfg: RunConfig, file_type: str) -> str:
    """How the job's file comes from the model's GGUF of `file_type`: "as is", "quantize", or a refusal."""
    wanted = cfg.backend.gguf_type or (file_type if cfg.precision.name == GGUF_PRECISION else gguf_type(cfg))
    if wanted == file_type:
        return "as is"
    if file_type in gguf_files.WRITTEN_HERE or cfg.backend.requantize:
        return "quantize"
    raise BackendUnsupported(
        f"{cfg.model.name_or_path} is quantized already ({file_type}): quantizing it again to {wanted} compounds "
        f"the two errors; use precision={GGUF_PRECISION} to measure it as it is, or backend.requantize=true to "
        "quantize it anyway")


def takes(config: dict) -> bool:
    """Whether llama.cpp can run this architecture (config.json's fields): its own converter registers it, or
    it is a Gemma 3 text checkpoint without a SentencePiece file, which gguf_files.py writes."""
    return _gemma_writer(config) or any(hf_to_gguf.converts(a) for a in config.get("architectures") or [])


def _gemma_writer(config: dict, folder: Optional[Path] = None) -> bool:
    """The bundled Gemma 3 (and checkpoints made from it) has its tokenizer as tokenizer.json only, rebuilt by
    transformers from the GGUF it ships as; llama.cpp's converter reads a Gemma vocabulary from tokenizer.model.
    Such checkpoints are written by gguf_files.py, with the bundled GGUF's own tokenizer."""
    return config.get("model_type") == "gemma3_text" and (folder is None or not (folder / "tokenizer.model").is_file())


def check(cfg: RunConfig) -> None:
    require_package("llama-cpp", "llama_cpp", "llama-cpp-python")
    if cfg.device.name != "cpu":
        raise BackendUnsupported("backend=llama-cpp runs on the CPU here (llama-cpp-python is built without CUDA): "
                                 "use device=cpu, or backend=transformers or ctranslate2 on cuda")
    if cfg.precision.name == GGUF_PRECISION and not cfg.model.is_gguf:
        raise BackendUnsupported(f"precision={GGUF_PRECISION} measures a GGUF file as it is, and model.name_or_path="
                                 f"{cfg.model.name_or_path} is not one: name a .gguf file, or use another precision")
    if cfg.model.is_gguf:
        described = gguf_source.describe(cfg.model)  # a missing or broken file: its one-line error
        if described is not None:
            _from_file(cfg, described["file_type"])
    if cfg.precision.name != GGUF_PRECISION and gguf_type(cfg) not in gguf_files.FTYPES:
        raise BackendUnsupported(f"backend=llama-cpp has no GGUF type for precision={cfg.precision.name} "
                                 f"(backend.gguf_type={cfg.backend.gguf_type}): use one of "
                                 f"{', '.join(gguf_files.FTYPES)}")
    require_own_quantization(cfg)
    try:
        config = sources.declared_config(cfg.model)  # None: a hub model not yet downloaded; prepare() decides
        if config is not None and not takes(config):
            refuse_architecture("llama-cpp", config, f"llama.cpp's converter "
                                f"(llama-cpp-python {metadata.version('llama-cpp-python')}) does not convert it")
    except hf_to_gguf.ConverterMissing as err:
        raise BackendUnsupported(str(err)) from None


def prepare(cfg: RunConfig, checkpoint: Checkpoint) -> Files:
    """<cache>/gguf/<checkpoint key>/<type>/model.gguf: F32 (F16, BF16) converted once by llama.cpp's own
    converter, the other types quantized from the F32 file by llama.cpp; for a GGUF model, its file or files
    quantized from it."""
    if checkpoint.gguf:
        files = _prepare_from_file(cfg, Path(checkpoint.gguf))
        return replace(files, artifact=str(Path(files.path) / "model.gguf"))  # as is: the user's file (a link)
    if not checkpoint.has_tokenizer:
        raise BackendUnsupported("backend=llama-cpp needs a checkpoint with its tokenizer (a GGUF carries its "
                                 "vocabulary): use backend=transformers or ctranslate2 for random weights")
    cache = Path(cfg.paths.cache_dir).expanduser()
    source, tokenizer = Path(checkpoint.path), Path(checkpoint.tokenizer_path)
    key = fingerprint_key(checkpoint.path) + ("" if tokenizer == source else
                                              "-" + hashlib.sha256(str(tokenizer).encode()).hexdigest()[:8])
    threads = cfg.device.num_threads or torch.get_num_threads()
    config = json.loads((source / "config.json").read_text())

    def write(kind: str) -> Files:
        def make(staging: Path) -> None:
            out = staging / "model.gguf"
            if kind not in gguf_files.WRITTEN_HERE:
                gguf_files.quantize(Path(write("F32").path) / "model.gguf", out, kind, threads)
            elif _gemma_writer(config, tokenizer):
                gguf_files.convert(source, out, kind, gguf_files.template(cache))
            else:
                hf_to_gguf.convert(hf_to_gguf.stage(source, tokenizer, staging / "checkpoint"), out, kind)
                shutil.rmtree(staging / "checkpoint")
        return convert_once(cache / "gguf" / key / kind, make)

    try:
        files = write(gguf_type(cfg))
        return replace(files, artifact=str(Path(files.path) / "model.gguf"))
    except (gguf_files.Unconvertible, hf_to_gguf.ConverterMissing) as err:
        raise BackendUnsupported(str(err)) from None


def _prepare_from_file(cfg: RunConfig, source: Path) -> Files:
    """<cache>/gguf/<file key>/<type>/model.gguf: a link to the file itself, or llama.cpp's quantization of it."""
    file_type = gguf_source.read(source)["file_type"]
    how = _from_file(cfg, file_type)
    kind = file_type if how == "as is" else gguf_type(cfg)
    threads = cfg.device.num_threads or torch.get_num_threads()

    def make(staging: Path) -> None:
        if how == "as is":
            (staging / "model.gguf").symlink_to(source.resolve())
        else:
            gguf_files.quantize(source, staging / "model.gguf", kind, threads)
    files = convert_once(Path(cfg.paths.cache_dir).expanduser() / "gguf" / gguf_source.file_key(source) / kind, make)
    return files if how == "quantize" else Files(files.path)  # as is: nothing was converted


def load(cfg: RunConfig, checkpoint: Checkpoint, files: Files) -> "LlamaRuntime":
    return LlamaRuntime(cfg, checkpoint, Path(files.artifact))


class LlamaRuntime(Runtime):
    def __init__(self, cfg: RunConfig, checkpoint: Checkpoint, path: Path):
        import llama_cpp
        from transformers import AutoConfig

        self.llama_cpp = llama_cpp
        self._batch_context = None  # (context, batch, sequences, tokens per sequence, n_batch): see _batched
        self.threads = cfg.device.num_threads or torch.get_num_threads()
        found = gguf_files.inspect(path)
        # a GGUF that transformers cannot read has no checkpoint folder: its own header says the context
        longest = found["context_length"] if checkpoint.path is None else \
            context_length(AutoConfig.from_pretrained(checkpoint.path).get_text_config())
        self.context_length = min(longest or MAX_CONTEXT, MAX_CONTEXT)
        # At batch > 1 the setting decodes in a context of B sequences (_batched), as a deployment at batch B
        # would: the one-sequence context every Llama makes is kept small there, so that its KV cache (33 MB of
        # the embedded Gemma's at 2048 tokens; a quarter GB of an 8B Llama's) does not count in the setting's
        # memory. The quality pass, after the tracked region, makes a full one (ctx).
        own_context = self.context_length if cfg.generation.batch_size == 1 else \
            min(SMALL_CONTEXT, self.context_length)
        start = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=own_context, n_batch=N_BATCH,
                                   n_ubatch=N_BATCH, n_threads=self.threads, n_threads_batch=self.threads,
                                   n_gpu_layers=0, seed=0, verbose=False)
        self.load_time_s = time.perf_counter() - start
        self.tokenizer = tokenizer(checkpoint.tokenizer_path) if checkpoint.has_tokenizer else None
        self.vocab_size = self.llm.n_vocab()
        self.footprint_gb = path.stat().st_size / 1024**3
        expected = gguf_type(cfg)
        require_precision(found["file_type"] == expected, cfg, f"a GGUF of type {found['file_type']}")
        self.precision = PrecisionCheck(
            f"GGUF {found['file_type']}: tensors " + ", ".join(f"{t}:{n}" for t, n in found["tensor_types"].items()),
            {**found, "n_ctx": self.context_length, "n_batch": N_BATCH, "threads": self.threads})

    def own_tokens(self, text: str) -> List[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    @property
    def ctx(self):
        """The one-sequence context of context_length tokens: the Llama's own, or made once it is needed where
        the Llama's was kept small (batch > 1: only the quality pass decodes one sequence)."""
        if self.llm.n_ctx() >= self.context_length:
            return self.llm._ctx.ctx
        return self._batched(1, self.context_length, N_BATCH)[0]

    def _decode(self, ctx, batch) -> None:
        if self.llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed (out of KV cache or memory?)")

    def _argmax(self, ctx, index: int) -> int:
        row = self.llama_cpp.llama_get_logits_ith(ctx, index)
        return int(np.ctypeslib.as_array(row, shape=(self.vocab_size,)).argmax())

    def _clear(self) -> None:
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(self.ctx), True)
        self.llm.reset()

    def generate(self, prompts: List[List[int]], max_new_tokens: int,
                 on_first_token: Callable[[], None]) -> List[List[int]]:
        if len(prompts) > 1:
            return self._generate_batch(prompts, max_new_tokens, on_first_token)
        lib, ctx = self.llama_cpp, self.ctx
        self._clear()
        prompt = prompts[0]
        for i in range(0, len(prompt), N_BATCH):  # positions follow the KV cache; logits of the last token only
            chunk = (lib.llama_token * len(prompt[i:i + N_BATCH]))(*prompt[i:i + N_BATCH])  # kept alive: the
            self._decode(ctx, lib.llama_batch_get_one(chunk, len(chunk)))                  # batch points to it
        token = self._argmax(ctx, -1)
        on_first_token()
        out, one = [token], (lib.llama_token * 1)()
        while len(out) < max_new_tokens:
            one[0] = token
            self._decode(ctx, lib.llama_batch_get_one(one, 1))
            token = self._argmax(ctx, -1)
            out.append(token)
        return [out]

    def _generate_batch(self, prompts: List[List[int]], max_new_tokens: int,
                        on_first_token: Callable[[], None]) -> List[List[int]]:
        """B sequences in one batch per step (seq_id b each), in a context with n_seq_max = B (made by
        _batched, outside the timed calls once warmed up)."""
        lib, size = self.llama_cpp, len(prompts)
        ctx, batch = self._batched(size, 256 * -(-(max(map(len, prompts)) + max_new_tokens) // 256),
                                   max(N_BATCH, sum(map(len, prompts))))

        def fill(items):  # (token, position, sequence, wants logits)
            batch.n_tokens = len(items)
            for j, (token, position, sequence, logits) in enumerate(items):
                batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, position, 1, logits
                batch.seq_id[j][0] = sequence

        items, last = [], []
        for s, prompt in enumerate(prompts):
            items += [(t, k, s, k == len(prompt) - 1) for k, t in enumerate(prompt)]
            last.append(len(items) - 1)
        fill(items)
        self._decode(ctx, batch)
        tokens = [self._argmax(ctx, i) for i in last]
        on_first_token()
        out = [[t] for t in tokens]
        for step in range(1, max_new_tokens):
            fill([(tokens[s], len(prompts[s]) + step - 1, s, True) for s in range(size)])
            self._decode(ctx, batch)
            tokens = [self._argmax(ctx, s) for s in range(size)]
            for s in range(size):
                out[s].append(tokens[s])
        return out

    def _batched(self, size: int, per_sequence: int, n_batch: int):
        """A cleared context for `size` sequences of `per_sequence` tokens, taking `n_batch` tokens per decode,
        and its batch. llama_cpp.Llama does not expose n_seq_max, so the context is made here on the same model,
        once per batch size: later calls reuse it (the warm-up makes it for every prompt length, so a timed call
        never does), and one that needs more remakes it at the largest shape seen."""
        lib, have = self.llama_cpp, self._batch_context
        if have is not None and have[2] == size and have[3] >= per_sequence and have[4] >= n_batch:
            lib.llama_memory_clear(lib.llama_get_memory(have[0]), True)
            return have[0], have[1]
        if have is not None and have[2] == size:  # grown to the largest shape this batch size has needed
            per_sequence, n_batch = max(per_sequence, have[3]), max(n_batch, have[4])
        self._free_batched()
        params = lib.llama_context_params.from_buffer_copy(self.llm.context_params)
        params.n_seq_max, params.n_ctx = size, size * per_sequence
        params.n_batch = params.n_ubatch = n_batch
        ctx = lib.llama_init_from_model(self.llm.model, params)
        if not ctx:
            raise MemoryError(f"llama.cpp could not make a context for {size} sequences of {per_sequence} tokens")
        self._batch_context = (ctx, lib.llama_batch_init(n_batch, 0, 1), size, per_sequence, n_batch)
        return self._batch_context[:2]

    def _free_batched(self) -> None:
        if self._batch_context is not None:
            ctx, batch = self._batch_context[:2]
            self._batch_context = None
            self.llama_cpp.llama_batch_free(batch)
            self.llama_cpp.llama_free(ctx)

    def close(self) -> None:
        self._free_batched()

    def logits(self, ids: List[int]) -> torch.Tensor:
        lib, ctx = self.llama_cpp, self.ctx
        self._clear()
        out = np.empty((len(ids), self.vocab_size), dtype=np.float32)
        batch = lib.llama_batch_init(N_BATCH, 0, 1)
        try:
            for i in range(0, len(ids), N_BATCH):
                chunk = ids[i:i + N_BATCH]
                batch.n_tokens = len(chunk)
                for j, token in enumerate(chunk):
                    batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, i + j, 1, True
                    batch.seq_id[j][0] = 0
                self._decode(ctx, batch)
                out[i:i + len(chunk)] = np.ctypeslib.as_array(lib.llama_get_logits(ctx),
                                                              shape=(len(chunk), self.vocab_size))
        finally:
            lib.llama_batch_free(batch)
        return torch.from_numpy(out)
