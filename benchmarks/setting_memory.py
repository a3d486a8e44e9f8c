"""Is qsweep's setting_memory_gb what a minimal deployment of the setting needs?

For each setting: qsweep measures it as a sweep does (a fresh worker from the fork server, measure_job; the
quality pass, which runs after the tracked region, skipped for time), and a bare process that imports only
the setting's runtime loads the same artifact (the GGUF file, the CTranslate2 folder, the checkpoint) with the
same options, generates the same tokens greedily from the same prompt ids and reads its peak RSS (VmHWM) above its RSS once the runtime is imported. Prints one JSON
line per setting: both figures, their ratio (target within 15 %), qsweep's harness and peak RSS, the runtime's
import cost, and for llama.cpp its own accounting of its buffers (model, KV cache, compute, output).

    python benchmarks/setting_memory.py backend=llama-cpp,precision=int4 backend=llama-cpp,precision=int8 \\
        backend=llama-cpp,precision=fp32 backend=ctranslate2,precision=int8 backend=transformers,precision=fp32

Each setting is comma-separated overrides on model=gemma-3-270m (the embedded Gemma) and device=cpu.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3
PROMPT = "hello good morning may i see the menu"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def bare(spec: dict) -> dict:
    """The bare process: only the runtime imported, the artifact loaded, `tokens` greedy tokens generated."""
    started = _status_kb("VmRSS")
    ids, tokens, threads = spec["ids"], spec["tokens"], spec["threads"]
    accounting = {}
    if spec["runtime"] == "llama-cpp":
        import ctypes

        import llama_cpp

        @llama_cpp.llama_log_callback
        def log(level, text, user_data):  # llama.cpp's own report of its buffers, as it allocates them
            line = text.decode(errors="replace")
            found = re.search(r"(\w+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB", line)
            if found:
                key = found.group(2)
                accounting[key] = accounting.get(key, 0.0) + float(found.group(3)) / 1024

        imported = _status_kb("VmRSS")
        _status_reset()
        llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
        llm = llama_cpp.Llama(model_path=spec["path"], n_ctx=spec["n_ctx"], n_batch=spec["n_batch"],
                              n_ubatch=spec["n_batch"], n_threads=threads, n_threads_batch=threads, n_gpu_layers=0,
                              seed=0, verbose=True)
        eos = {int(llm.token_eos()): float("-inf")}
        made = llm.create_completion(ids, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0,
                                     logit_bias=eos)["usage"]["completion_tokens"]
    elif spec["runtime"] == "ctranslate2":
        import ctranslate2

        imported = _status_kb("VmRSS")
        _status_reset()
        generator = ctranslate2.Generator(spec["path"], device="cpu", compute_type=spec["compute_type"],
                                          intra_threads=threads, inter_threads=1)
        vocabulary = json.loads((Path(spec["path"]) / "vocabulary.json").read_text(encoding="utf-8"))
        result = generator.generate_batch([[vocabulary[i] for i in ids]], max_length=tokens, min_length=tokens,
                                          sampling_topk=1, include_prompt_in_result=False)
        made = len(result[0].sequences_ids[0])
    else:
        import torch
        from transformers import AutoModelForCausalLM

        imported = _status_kb("VmRSS")
        _status_reset()
        torch.set_num_threads(threads)
        model = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=getattr(torch, spec["dtype"])).eval()
        tensor = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        made = out.shape[1] - tensor.shape[1]
    return {"bare_gb": (_status_kb("VmHWM") - imported) / GB, "import_gb": (imported - started) / GB,
            "bare_tokens": made, "runtime_accounting_gb": {k: round(v, 3) for k, v in accounting.items()}}


def _status_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: the import's transient is not the setting's


def measure_without_quality(cfg):
    """job.measure_job, as a sweep runs it, without the quality pass (it runs after the tracked region and
    changes no memory figure: skipped for time)."""
    from qsweep import job, quality

    quality.applicable = lambda *args: False
    return job.measure_job(cfg)


def qsweep_side(setting: str, tokens: int) -> dict:
    """qsweep's figures for the setting (measured in a fresh worker, as a sweep does) and the bare process's spec."""
    import torch
    from hydra import compose, initialize_config_dir

    from qsweep import backends, prompts, sources, worker
    from qsweep.backends import ctranslate2, llama_cpp
    from qsweep.config import register_schemas, validate
    from qsweep.environment import on_this_machine

    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        raw = compose(config_name="config", overrides=[
            "model=gemma-3-270m", "device=cpu", *setting.split(","), f"generation.max_new_tokens={tokens}",
            f"generation.prompts=[{PROMPT}]", "generation.repeats=1"])
    cfg = on_this_machine(validate(raw))
    backend = backends.get(cfg.backend.name)
    checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    files = backend.prepare(cfg, checkpoint)
    from setting_memory import measure_without_quality  # by name: the worker imports it (this folder is on its path)

    result = worker.call(measure_without_quality, cfg, True, cfg.runner.timeout_s)
    (memory,) = [r for r in result.tracked if hasattr(r, "setting_memory_gb")]
    ids = prompts.encode(cfg.generation, backends.tokenizer(checkpoint.tokenizer_path), 0, 0)[0][0]
    spec = {"runtime": cfg.backend.name, "ids": ids, "tokens": tokens, "threads": torch.get_num_threads()}
    if cfg.backend.name == "llama-cpp":
        spec.update(path=str(Path(files.path) / "model.gguf"), n_batch=llama_cpp.N_BATCH,
                    n_ctx=result.precision.details["n_ctx"])
    elif cfg.backend.name == "ctranslate2":
        spec.update(path=files.path, compute_type=ctranslate2.compute_type(cfg))
    else:
        spec.update(path=checkpoint.path, dtype=cfg.precision.dtype)
    return {"setting": setting, "runtime": backend.label(cfg), "setting_memory_gb": memory.setting_memory_gb,
            "harness_rss_gb": memory.harness_rss_gb, "peak_rss_gb": memory.peak_rss_gb,
            "weights_gb": result.load.model_footprint_gb}, spec


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="*")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # the bare process's spec, JSON
    args = parser.parse_args()
    if args.bare:
        print(json.dumps(bare(json.loads(args.bare))), flush=True)
        os._exit(0)  # no interpreter teardown: llama.cpp logs through a callback while it frees, after Python's
    sys.path.insert(0, str(ROOT))
    for setting in args.settings:
        figures, spec = qsweep_side(setting, args.tokens)
        done = subprocess.run([sys.executable, __file__, "--bare", json.dumps(spec)], capture_output=True, text=True,
                              check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        figures.update(measured, ratio=figures["setting_memory_gb"] / measured["bare_gb"])
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}), flush=True)


if __name__ == "__main__":
    main()
