"""How to run a measured setting with its own runtime, outside qsweep: the command that serves it and the
Python that loads it, naming the artifact that was measured and the settings it was measured with (threads,
context, compute type, dtype and quantization config). Pure text: recommend prints it, export writes it into
its README, and the tests run it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from qsweep.tracking import (PARAM_COMPILE, PARAM_DOUBLE_QUANT, PARAM_DTYPE, PARAM_QUANT_TYPE, PARAM_QUANTIZATION,
                             TAG_BACKEND, TAG_DEVICE, RunRecord)

PROMPT = "The capital of France is"
NEW_TOKENS = 16
PORT = 8000


@dataclass(frozen=True)
class Measured:
    """How a run loaded its artifact: from its params, precision_check.json and environment.json."""
    backend: str
    device: str
    threads: Optional[int]
    context: Optional[int] = None  # llama.cpp's n_ctx
    compute_type: str = ""  # CTranslate2's
    dtype: str = "float32"  # transformers': the dtype, and bitsandbytes' quantization
    quantization: str = "none"
    quant_type: str = "nf4"
    double_quant: bool = True
    compile: bool = False


def measured(run: RunRecord, precision: dict, environment: dict) -> Measured:
    p = run.params
    threads = precision.get("threads") or environment.get("torch_threads")
    return Measured(run.tags.get(TAG_BACKEND, "transformers"), run.tags.get(TAG_DEVICE, "cpu"),
                    int(threads) if threads else None, precision.get("n_ctx"), precision.get("requested", ""),
                    p.get(PARAM_DTYPE, "float32"), p.get(PARAM_QUANTIZATION, "none"),
                    p.get(PARAM_QUANT_TYPE, "nf4"), p.get(PARAM_DOUBLE_QUANT, "True") == "True",
                    p.get(PARAM_COMPILE, "False") == "True")


def server_command(m: Measured, artifact: Path, port: int = PORT) -> Optional[List[str]]:
    """llama-cpp-python's OpenAI-compatible server on the GGUF; None for runtimes without a server of their own."""
    if m.backend != "llama-cpp":
        return None
    return ["python", "-m", "llama_cpp.server", "--model", str(artifact), "--n_threads", str(m.threads),
            "--n_ctx", str(m.context), "--host", "127.0.0.1", "--port", str(port)]


def python_snippet(m: Measured, artifact: Path, tokenizer: Optional[Path]) -> str:
    """Python that loads the artifact as measured and greedily continues PROMPT (token ids without a tokenizer)."""
    return "\n".join({"llama-cpp": _llama_cpp, "ctranslate2": _ctranslate2}.get(m.backend, _transformers)(
        m, str(artifact), str(tokenizer) if tokenizer else None))


def _llama_cpp(m: Measured, artifact: str, tokenizer: Optional[str]) -> List[str]:
    return ["from llama_cpp import Llama",
            f"llm = Llama(model_path={artifact!r}, n_threads={m.threads}, n_ctx={m.context}, verbose=False)",
            f"print(llm.create_completion({PROMPT!r}, max_tokens={NEW_TOKENS}, temperature=0)['choices'][0]['text'])"]


def _ctranslate2(m: Measured, artifact: str, tokenizer: Optional[str]) -> List[str]:
    lines = ["import ctranslate2"]
    if tokenizer:
        lines += ["from transformers import AutoTokenizer", f"tokenizer = AutoTokenizer.from_pretrained({tokenizer!r})",
                  f"prompt = tokenizer.convert_ids_to_tokens(tokenizer.encode({PROMPT!r}))"]
    else:  # random weights: the converted vocabulary names token i "<i>"
        lines += ["prompt = ['<1>', '<2>', '<3>']"]
    lines += [f"generator = ctranslate2.Generator({artifact!r}, device={m.device!r}, compute_type={m.compute_type!r}, "
              f"intra_threads={m.threads or 0})",
              f"result = generator.generate_batch([prompt], max_length={NEW_TOKENS}, sampling_topk=1, "
              "include_prompt_in_result=False)[0]",
              "print(tokenizer.decode(result.sequences_ids[0]))" if tokenizer else "print(result.sequences_ids[0])"]
    return lines


def _quantization(m: Measured) -> str:
    if m.quantization == "int8":
        return "BitsAndBytesConfig(load_in_8bit=True)"
    return (f"BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={m.quant_type!r}, "
            f"bnb_4bit_use_double_quant={m.double_quant}, bnb_4bit_compute_dtype=torch.{m.dtype})")


def _transformers(m: Measured, artifact: str, tokenizer: Optional[str]) -> List[str]:
    quantized = m.quantization != "none"
    names = ["AutoModelForCausalLM", *(["AutoTokenizer"] if tokenizer else []),
             *(["BitsAndBytesConfig"] if quantized else []), *(["CompileConfig"] if m.compile else [])]
    lines = ["import torch", f"from transformers import {', '.join(names)}"]
    lines += [f"torch.set_num_threads({m.threads})"] if m.device == "cpu" and m.threads else []
    lines += [f"model = AutoModelForCausalLM.from_pretrained({artifact!r}, dtype=torch.{m.dtype}, "
              + (f"quantization_config={_quantization(m)}, " if quantized else "") + f"device_map={m.device!r})"]
    if m.compile:  # what generation.compile=true measured: a static cache, compiled
        lines += ["model.generation_config.cache_implementation = 'static'",
                  "model.generation_config.compile_config = CompileConfig()"]
    if tokenizer:
        lines += [f"tokenizer = AutoTokenizer.from_pretrained({tokenizer!r})",
                  f"inputs = tokenizer({PROMPT!r}, return_tensors='pt').to(model.device)",
                  f"out = model.generate(**inputs, max_new_tokens={NEW_TOKENS}, do_sample=False)",
                  "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))"]
    else:  # random weights: token ids in and out
        lines += ["ids = torch.tensor([[1, 2, 3]], device=model.device)",
                  f"print(model.generate(ids, max_new_tokens={NEW_TOKENS}, do_sample=False)[0, 3:].tolist())"]
    return lines


RUNTIMES = {"llama-cpp": "llama.cpp (llama-cpp-python)", "ctranslate2": "CTranslate2", "transformers": "transformers"}


def how_to_run(m: Measured, artifact: Path, tokenizer: Optional[Path]) -> List[str]:
    """Markdown list items: what was measured, the server command where the runtime has one, the Python."""
    settings = [f"{m.threads} threads" if m.threads else "", f"context {m.context}" if m.context else "",
                f"compute type {m.compute_type}" if m.compute_type else ""]
    lines = [f"- runtime: {RUNTIMES.get(m.backend, m.backend)} on {m.device}; measured artifact: {artifact}"
             + "".join(f", {s}" for s in settings if s)]
    server = server_command(m, artifact)
    if server:
        lines.append(f"- serve it (OpenAI-compatible, pip install 'llama-cpp-python[server]'): `{shlex.join(server)}`; "
                     f"or with llama.cpp's own server: `llama-server -m {shlex.quote(str(artifact))} -t {m.threads} "
                     f"-c {m.context} --port {PORT}`")
    lines += ["- load it in Python:", "", "  ```python",
              *(f"  {line}" for line in python_snippet(m, artifact, tokenizer).splitlines()), "  ```"]
    return lines
