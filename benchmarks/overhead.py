"""Is qsweep's measured generation as fast as a bare `model.generate` loop?

Same loaded model, same process, same prompt: rounds alternate qsweep's `measure.generate_timed`
(fixed-length greedy + the first-token clock, inside the memory tracker's region, as in a job) with
a bare timed `model.generate` of the same length. Prints one JSON line per model: median tokens/s of
each, their ratio (target: >= 0.97) and the spread of the per-round ratios.

    python benchmarks/overhead.py model=tiny-gpt2 model=gpt2 model=gemma-3-270m --rounds 5
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


def config(model_override: str, tokens: int):
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        raw = compose(config_name="config", overrides=[
            model_override, "device=cpu", f"generation.max_new_tokens={tokens}", "generation.warmup=0",
            "generation.repeats=1", *(["model.weights=random"] if "gpt2" in model_override else [])])
    return on_this_machine(validate(raw))


def bare_tokens_per_s(model, ids, tokens: int) -> float:
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                         min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    elapsed = time.perf_counter() - start
    return (out.shape[1] - ids.shape[1]) / elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="model overrides, e.g. model=gpt2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    for model_override in args.models:
        cfg = config(model_override, args.tokens)
        transformers = backends.get("transformers")
        checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
        runtime = transformers.load(cfg, checkpoint, transformers.prepare(cfg, checkpoint))
        gen = replace(cfg.generation, prompts=cfg.generation.prompts[:1])
        ids = prompts.encode(gen, runtime.tokenizer, runtime.vocab_size, 0)[0]
        model, tensor = runtime.model, torch.tensor([ids[0]])
        with torch.inference_mode():
            bare_tokens_per_s(model, tensor, args.tokens)  # warm-up, both paths share it
            measure.generate_timed(runtime, ids, gen, "cpu")
            qsweep_rates, bare_rates = [], []
            for _ in range(args.rounds):
                with measure.MemoryTracker("cpu").track():  # as in a job
                    qsweep_rates.append(measure.generate_timed(runtime, ids, gen, "cpu")[0].tokens_per_s)
                bare_rates.append(bare_tokens_per_s(model, tensor, args.tokens))
        q, b = statistics.median(qsweep_rates), statistics.median(bare_rates)
        ratios = sorted(x / y for x, y in zip(qsweep_rates, bare_rates))  # round by round
        print(json.dumps({"model": cfg.model.name, "weights": cfg.model.weights, "new_tokens": args.tokens,
                          "rounds": args.rounds, "qsweep_tokens_per_s": round(q, 2),
                          "bare_tokens_per_s": round(b, 2), "ratio": round(q / b, 3),
                          "round_ratio_min": round(ratios[0], 3), "round_ratio_max": round(ratios[-1], 3),
                          "torch_threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
