"""How far qsweep's stored-reference KL is from the full-vocabulary KL, on the same positions: the bundled
Gemma's transformers fp32 as the reference, llama.cpp GGUF types as the runs, the evaluation windows of a
quality config. Per type it prints the exact KL (both models' full distributions, nothing stored), the
estimate qsweep records (top-k + draws from the tail, qsweep.quality.cache.KEEP), and the top-k + one
bucket lower bound of earlier versions, with their ratios to the exact KL:

    QSWEEP_CACHE=/tmp/kl-cache .venv/bin/python benchmarks/kl_tail.py Q4_0 Q4_K_M Q8_0 -- quality.context=512

Overrides after `--` are Hydra overrides of the config (the text, the window, the number of windows).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from qsweep import backends, environment, sources
from qsweep.config import register_schemas, validate
from qsweep.quality import windows_for
from qsweep.quality.cache import KEEP
from qsweep.quality.scoring import CHUNK, kl_estimate, keep_reference

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"estimate": KEEP, "top-64 + bucket": (64, 0), "top-256 + bucket": (KEEP[0], 0)}


def load(*overrides):
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = environment.on_this_machine(validate(compose(config_name="config", overrides=list(overrides))))
    checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    backend = backends.get(cfg.backend.name)
    return cfg, backend.load(cfg, checkpoint, backend.prepare(cfg, checkpoint))


@torch.inference_mode()
def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("types", nargs="+")
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]
    cfg, fp32 = load("device=cpu", *overrides)
    runs = {t: load("device=cpu", "backend=llama-cpp", f"backend.gguf_type={t}", *overrides)[1] for t in args.types}
    cut = windows_for(cfg.quality, fp32.tokenizer, min(r.context_length or 10**9 for r in [fp32, *runs.values()]))
    sums = {t: {name: 0.0 for name in ["exact", *VARIANTS]} for t in runs}
    positions, start = 0, time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    for window in cut.windows:
        p_all = torch.log_softmax(fp32.logits(window)[:-1][cut.scored_from:].float(), -1)
        targets = torch.tensor(window[1:][cut.scored_from:])
        q_all = {t: torch.log_softmax(r.logits(window)[:-1][cut.scored_from:].float(), -1) for t, r in runs.items()}
        for s in range(0, len(targets), CHUNK):
            p = p_all[s:s + CHUNK]
            nll = -p.gather(1, targets[s:s + CHUNK, None])[:, 0]
            refs = {name: keep_reference(p, nll, *keep, generator) for name, keep in VARIANTS.items()}
            for t, q_full in q_all.items():
                q = q_full[s:s + CHUNK]
                sums[t]["exact"] += (p.exp() * (p - q)).sum().item()
                for name, ref in refs.items():
                    sums[t][name] += kl_estimate(ref, q).sum().item()
            positions += len(p)
        print(f"window {cut.windows.index(window) + 1}/{len(cut.windows)}: {time.perf_counter() - start:.0f} s",
              flush=True)
    print(f"{len(cut.windows)} windows of {cut.window} tokens, scored from {cut.scored_from}: {positions} positions "
          f"of {cut.text.name} ({time.perf_counter() - start:.0f} s)")
    for t, s in sums.items():
        exact = s["exact"] / positions
        print(f"{t:7s} exact {exact:.5f}  " + "  ".join(
            f"{name} {s[name] / positions:.5f} ({s[name] / positions / exact:.3f})" for name in VARIANTS))


if __name__ == "__main__":
    main()
