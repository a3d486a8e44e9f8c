"""CPU roofline for decoding: every new token reads all weights once, so memory bandwidth bounds
tokens/s at  bandwidth / bytes of weights read per token.  Prints the measured copy bandwidth of this
machine and, per model, runtime and precision (batch 1), the bound next to qsweep's measured decode
tokens/s from a store (model_footprint_gb: what the runtime loaded, e.g. the GGUF file).

    python benchmarks/roofline.py --store sqlite:///$PWD/mlruns/mlflow.db
"""

import argparse
import json
import statistics
import time

import torch

from qsweep import tracking
from qsweep.config import TrackingConfig


def copy_bandwidth_gb_s(size_mb: int = 512, rounds: int = 10) -> float:
    """Read + write bytes per second of a large tensor copy (best of `rounds`), in GB/s."""
    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times) / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--experiment", default="qsweep")
    args = parser.parse_args()
    bandwidth = copy_bandwidth_gb_s()
    print(json.dumps({"copy_bandwidth_gb_s": round(bandwidth, 2), "torch_threads": torch.get_num_threads()}))
    store = tracking.open_store(TrackingConfig(uri=args.store, experiment=args.experiment), create=False)
    groups = {}
    for run in tracking.find_jobs(store, "attributes.status = 'FINISHED'"):
        tags, metrics = run.tags, run.metrics
        if tags.get("device") != "cpu" or tags.get("batch_size", "1") != "1" or "decode_tokens_per_s" not in metrics:
            continue
        key = (tags["model"], tags.get("runtime", tags["precision"]), run.params.get("generation.compile", "False"))
        groups.setdefault(key, []).append((metrics["model_footprint_gb"], metrics["decode_tokens_per_s"]))
    for (model, precision, compiled), values in sorted(groups.items()):
        footprint_gb = statistics.median(v[0] for v in values)
        bound = bandwidth / (footprint_gb * 2**30 / 1e9)
        measured = statistics.median(v[1] for v in values)
        print(json.dumps({"model": model, "precision": precision, "compile": compiled,
                          "weights_gb": round(footprint_gb, 3), "bound_tokens_per_s": round(bound, 1),
                          "decode_tokens_per_s": round(measured, 2),
                          "share_of_bound": round(measured / bound, 3), "runs": len(values)}))


if __name__ == "__main__":
    main()
