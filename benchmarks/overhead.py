"""Is qsweep's timed generation as fast as each runtime's own generation call?

Same loaded model, same threads, same prompt, one process: rounds alternate qsweep's measure.generate_timed
(fixed-length greedy, the first-token clock and the exact-length check, inside the job's trackers as in a
job) with the library's own call of the same length: transformers' bare `model.generate`, llama-cpp-python's
`create_completion` (EOS banned, greedy), CTranslate2's bare `generate_batch`. Prints one JSON line per
setting: median tokens/s of each, their ratio (target >= 0.97), the spread of the per-round ratios, and
`extra_threads`: the most threads alive during a qsweep generate call beyond those alive before its trackers
started (target 0: nothing of qsweep's runs beside a timed generation).

    python benchmarks/overhead.py model=tiny-gpt2 model=gemma-3-270m backend=llama-cpp,precision=int4 --rounds 7
    python benchmarks/overhead.py model=gpt2,precision=fp16 model=gpt2,precision=int4 --device cuda   # GPU kit

Each setting is comma-separated overrides; gpt2-family models get random weights (theirs cannot be fetched).
On CUDA both clocks synchronize the device before reading the time, as qsweep's does.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydra import compose, initialize_config_dir  # noqa: E402

from qsweep import backends, measure, prompts, sources, trackers  # noqa: E402
from qsweep.config import register_schemas, validate  # noqa: E402
from qsweep.environment import on_this_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def config(setting: str, tokens: int, device: str):
    overrides = setting.split(",")
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        raw = compose(config_name="config", overrides=[
            *overrides, f"device={device}", f"generation.max_new_tokens={tokens}",
            *(["model.weights=random"] if any("gpt2" in o for o in overrides) else [])])
    return on_this_machine(validate(raw))


def library_call(runtime, ids, tokens: int, device: str):
    """The runtime's own generation of `tokens` greedy tokens: a callable returning how many it made."""
    if hasattr(runtime, "llm"):  # llama-cpp-python
        eos = {int(runtime.llm.token_eos()): float("-inf")}

        def run():
            runtime.llm.reset()
            return runtime.llm.create_completion(ids, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0,
                                                 logit_bias=eos)["usage"]["completion_tokens"]
    elif hasattr(runtime, "generator"):  # CTranslate2
        batch = [[runtime.vocabulary[i] for i in ids]]

        def run():
            result = runtime.generator.generate_batch(batch, max_length=tokens, min_length=tokens, sampling_topk=1,
                                                      end_token=runtime.end_tokens, include_prompt_in_result=False)
            return len(result[0].sequences_ids[0])
    else:  # transformers
        tensor = torch.tensor([ids], device=device)

        def run():
            out = runtime.model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor),
                                         max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                         pad_token_id=0)
            return out.shape[1] - tensor.shape[1]
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="+", help="comma-separated overrides, e.g. backend=llama-cpp,precision=int4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    cuda = args.device == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    for setting in args.settings:
        cfg = config(setting, args.tokens, args.device)
        backend = backends.get(cfg.backend.name)
        checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
        runtime = backend.load(cfg, checkpoint, backend.prepare(cfg, checkpoint))
        gen = replace(cfg.generation, prompts=cfg.generation.prompts[:1], warmup=0, repeats=1)
        ids = prompts.encode(gen, runtime.tokenizer, runtime.vocab_size, 0)[0]
        library = library_call(runtime, ids[0], args.tokens, args.device)
        qsweep_rates, library_rates, extra = [], [], [0]
        generate = runtime.generate

        def watched(*call):  # threads alive at each call: counted before it starts, outside its clock
            extra[0] = max(extra[0], len({t.ident for t in threading.enumerate()} - before))
            return generate(*call)

        with torch.inference_mode():
            library(), measure.generate_timed(runtime, ids, gen, args.device)  # warm-up, both paths
            runtime.generate = watched
            for _ in range(args.rounds):
                before = {t.ident for t in threading.enumerate()}
                tracked = trackers.Trackers(args.device)
                with tracked.track():  # as in a job
                    qsweep_rates.append(measure.generate_timed(runtime, ids, gen, args.device,
                                                               tracked.timed)[0].tokens_per_s)
                start = now()
                made = library()
                library_rates.append(made / (now() - start))
        runtime.close()
        q, b = statistics.median(qsweep_rates), statistics.median(library_rates)
        ratios = sorted(x / y for x, y in zip(qsweep_rates, library_rates))  # round by round
        print(json.dumps({"setting": setting, "runtime": backend.label(cfg), "weights": cfg.model.weights,
                          "new_tokens": args.tokens, "rounds": args.rounds, "qsweep_tokens_per_s": round(q, 2),
                          "library_tokens_per_s": round(b, 2), "ratio": round(q / b, 3),
                          "round_ratio_min": round(ratios[0], 3), "round_ratio_max": round(ratios[-1], 3),
                          "extra_threads": extra[0], "device": args.device, "threads": torch.get_num_threads()}),
              flush=True)


if __name__ == "__main__":
    main()
