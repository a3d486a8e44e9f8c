"""Is qsweep's timed generation on llama.cpp and CTranslate2 as fast as each library's own loop?

Same file, same threads, same prompt, one process: rounds alternate qsweep's measure.generate_timed
(through the backend's Runtime, with its first-token stamp and exact-length check) with the library's own
call: llama-cpp-python's create_completion (EOS banned, greedy) and CTranslate2's bare generate_batch.
Prints one JSON line per setting: median tokens/s of each and their ratio (target >= 0.97).

    python benchmarks/runtime_overhead.py backend=llama-cpp,precision=int4 backend=ctranslate2,precision=int8
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydra import compose, initialize_config_dir  # noqa: E402

from qsweep import backends, measure, prompts, sources  # noqa: E402
from qsweep.config import register_schemas, validate  # noqa: E402
from qsweep.environment import on_this_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def config(overrides: str, tokens: int):
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        raw = compose(config_name="config", overrides=[*overrides.split(","), "device=cpu",
                                                       f"generation.max_new_tokens={tokens}"])
    return on_this_machine(validate(raw))


def library_loop(runtime, ids, tokens: int):
    """The library's own generation of `tokens` greedy tokens: a callable timing one call."""
    if hasattr(runtime, "llm"):  # llama-cpp-python
        eos = {int(runtime.llm.token_eos()): float("-inf")}

        def run():
            runtime.llm.reset()
            return runtime.llm.create_completion(ids, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0,
                                                 logit_bias=eos)["usage"]["completion_tokens"]
        return run
    batch = [[runtime.vocabulary[i] for i in ids]]

    def run():  # CTranslate2
        result = runtime.generator.generate_batch(batch, max_length=tokens, min_length=tokens, sampling_topk=1,
                                                  end_token=runtime.end_tokens, include_prompt_in_result=False)
        return len(result[0].sequences_ids[0])
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="+", help="comma-separated overrides, e.g. backend=llama-cpp,precision=int4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    for setting in args.settings:
        cfg = config(setting, args.tokens)
        backend = backends.get(cfg.backend.name)
        checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
        runtime = backend.load(cfg, checkpoint, backend.prepare(cfg, checkpoint))
        gen = replace(cfg.generation, prompts=cfg.generation.prompts[:1], warmup=0, repeats=1)
        ids = prompts.encode(gen, runtime.tokenizer, runtime.vocab_size, 0)[0]
        bare = library_loop(runtime, ids[0], args.tokens)
        bare(), measure.generate_timed(runtime, ids, gen, "cpu")  # warm-up, both paths
        qsweep_rates, bare_rates = [], []
        for _ in range(args.rounds):
            qsweep_rates.append(measure.generate_timed(runtime, ids, gen, "cpu")[0].tokens_per_s)
            start = time.perf_counter()
            made = bare()
            bare_rates.append(made / (time.perf_counter() - start))
        runtime.close()
        q, b = statistics.median(qsweep_rates), statistics.median(bare_rates)
        print(json.dumps({"setting": setting, "runtime": backend.label(cfg), "new_tokens": args.tokens,
                          "rounds": args.rounds, "qsweep_tokens_per_s": round(q, 2), "library_tokens_per_s": round(b, 2),
                          "ratio": round(q / b, 3), "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
