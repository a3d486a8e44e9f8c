"""Time to first token and latency by batch size, through qsweep's measure.generate_timed, one loaded model:
what a timed call holds besides the setting's work shows as a TTFT that grows with the batch for no reason
(llama.cpp made its batched context inside every timed call until issue 30).

    python benchmarks/batch_ttft.py model=gemma-3-270m,backend=llama-cpp,precision=int4 --batch-sizes 1 2 --rounds 5

Rounds alternate the batch sizes (each round: generate_timed with its warm-up, 4 prompts x 1 repeat). Prints
one JSON line per setting: median TTFT and latency per batch size over every timed call of every round.
"""

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overhead import config  # noqa: E402  (its sys.path set-up makes qsweep importable)

from qsweep import backends, measure, prompts, sources  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="+", help="comma-separated overrides")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    for setting in args.settings:
        cfg = config(setting, args.tokens, "cpu")
        backend = backends.get(cfg.backend.name)
        checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
        runtime = backend.load(cfg, checkpoint, backend.prepare(cfg, checkpoint))
        ids = prompts.encode(cfg.generation, runtime.tokenizer, runtime.vocab_size, 0)[0]
        ttft = {b: [] for b in args.batch_sizes}
        latency = {b: [] for b in args.batch_sizes}
        for _ in range(args.rounds):
            for size in args.batch_sizes:
                gen = replace(cfg.generation, batch_size=size, repeats=1, warmup=1)
                speed, _ = measure.generate_timed(runtime, ids, gen, "cpu")
                ttft[size].append(speed.ttft_s)
                latency[size].append(speed.latency_s)
        runtime.close()
        print(json.dumps({"setting": setting, "rounds": args.rounds, "new_tokens": args.tokens,
                          "prompt_tokens": [len(p) for p in ids],
                          **{f"ttft_s_batch{b}": round(statistics.median(ttft[b]), 4) for b in args.batch_sizes},
                          **{f"latency_s_batch{b}": round(statistics.median(latency[b]), 4)
                             for b in args.batch_sizes}}), flush=True)


if __name__ == "__main__":
    main()
