"""optimum-benchmark on the same checkpoint, prompt length and new tokens, for the peer comparison.

Runs in optimum-benchmark's own virtual environment (it needs transformers 4.x):
    python3 -m venv /tmp/obvenv && /tmp/obvenv/bin/pip install torch==2.13.0 transformers==4.57.6 \
        optimum-benchmark==0.6.0 'datasets>=4,<5'
    /tmp/obvenv/bin/python benchmarks/peer_optimum.py CHECKPOINT_DIR --dtypes float32,bfloat16 \
        --prompt-tokens 16 --new-tokens 32,64 --launcher process
Prints one JSON line per benchmark (decode throughput, latencies) and the wall time of all of them.
"""

import argparse
import json
import time

from optimum_benchmark import Benchmark, BenchmarkConfig, InferenceConfig, InlineConfig, ProcessConfig, PyTorchConfig


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", default="64", help="comma-separated: one benchmark per value and dtype")
    parser.add_argument("--launcher", choices=["inline", "process"], default="process")
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    start = time.perf_counter()
    grid = [(dtype, int(tokens)) for dtype in args.dtypes.split(",") for tokens in args.new_tokens.split(",")]
    for dtype, new_tokens in grid:
        config = BenchmarkConfig(
            name=f"peer-{dtype}-{new_tokens}",
            launcher=InlineConfig() if args.launcher == "inline" else ProcessConfig(),
            scenario=InferenceConfig(
                latency=True, memory=False, iterations=args.iterations, duration=1, warmup_runs=1,
                input_shapes={"batch_size": 1, "sequence_length": args.prompt_tokens},
                generate_kwargs={"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}),
            backend=PyTorchConfig(model=args.checkpoint, device="cpu", no_weights=False, torch_dtype=dtype,
                                  task="text-generation"))
        report = Benchmark.launch(config).to_dict()
        decode, prefill = report["decode"], report["prefill"]
        print(json.dumps({"tool": "optimum-benchmark", "launcher": args.launcher, "dtype": dtype,
                          "prompt_tokens": args.prompt_tokens, "new_tokens": new_tokens,
                          "decode_tokens_per_s": round(decode["throughput"]["value"], 2),
                          "ttft_s": round(prefill["latency"]["p50"], 4),
                          "generate_latency_s": round(report["generate"]["latency"]["p50"], 4)}),
              flush=True)
    print(json.dumps({"tool": "optimum-benchmark", "launcher": args.launcher, "jobs": len(grid),
                      "wall_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
