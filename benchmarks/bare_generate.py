"""A bare `model.generate` timing with nothing but torch and transformers, to tell a difference between
two tools from a difference between the library versions they run on. Runs in either environment:

    .venv/bin/python benchmarks/bare_generate.py CHECKPOINT_DIR --dtype float32
    /tmp/obvenv/bin/python benchmarks/bare_generate.py CHECKPOINT_DIR --dtype float32   # the peer's env

Random prompt ids of a fixed length (as optimum-benchmark uses), greedy, exactly --new-tokens new tokens.
Decode tokens/s is measured the way optimum-benchmark does it: (new tokens - 1) / (time of the whole
generation - time of a 1-token generation), medians over the rounds. Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def timed(model, ids, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=getattr(torch, args.dtype)).eval()
    ids = torch.randint(10, model.config.vocab_size - 10, (1, args.prompt_tokens),
                        generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        timed(model, ids, args.new_tokens)  # warm-up
        prefill = [timed(model, ids, 1) for _ in range(args.rounds)]
        whole = [timed(model, ids, args.new_tokens) for _ in range(args.rounds)]
    decode_s = statistics.median(whole) - statistics.median(prefill)
    print(json.dumps({"tool": "bare generate", "transformers": transformers.__version__, "torch": torch.__version__,
                      "attn_implementation": model.config._attn_implementation, "dtype": args.dtype,
                      "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                      "decode_tokens_per_s": round((args.new_tokens - 1) / decode_s, 2),
                      "ttft_s": round(statistics.median(prefill), 4),
                      "generate_latency_s": round(statistics.median(whole), 4)}))


if __name__ == "__main__":
    main()
