"""The mission's grid on every runtime, as a user who once downloaded GPT-2's tokenizer has it:

    python run.py -m backend=transformers,llama-cpp,ctranslate2 precision=fp32,int8 model=gpt2,distilgpt2 \\
        model.weights=random device=cpu
    python -m qsweep recommend

GPT-2's weights are not reachable here; its tokenizer is (tests/data/tokenizers/gpt-2). This script puts that
tokenizer into a Hugging Face hub cache of its own, in the hub's layout (models--<org>--<name>/snapshots/<rev>,
refs/main), for both repositories the configs name, and runs the two commands with HF_HOME pointing there and no
network: random weights of each real architecture (GPT-2 small, DistilGPT-2) get the real tokenizer, as their own
weights would. Random weights have no meaningful text, so no quality figure: recommend ranks speed and memory.

    python benchmarks/mission_grid.py [--out DIR] [extra overrides ...]
"""

import argparse
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "data" / "tokenizers" / "gpt-2"
REPOSITORIES = ("openai-community/gpt2", "distilbert/distilgpt2")  # conf/model/gpt2.yaml, distilgpt2.yaml
REVISION = "0" * 40  # the snapshot's folder name; refs/main points to it


def hub_cache(home: Path) -> None:
    """GPT-2's tokenizer files in `home`'s hub cache, as `huggingface_hub` lays out a download."""
    for repository in REPOSITORIES:
        repo = home / "hub" / f"models--{repository.replace('/', '--')}"
        snapshot = repo / "snapshots" / REVISION
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(REVISION)
        (snapshot / "tokenizer.json").write_bytes(lzma.decompress((TOKENIZER / "tokenizer.json.xz").read_bytes()))
        shutil.copy(TOKENIZER / "tokenizer_config.json", snapshot / "tokenizer_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where the store, the hub cache and qsweep's cache go "
                        "(default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*", help="more overrides for the sweep")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="mission-grid-"))
    hub_cache(out / "hf")
    env = {**os.environ, "HF_HOME": str(out / "hf"), "HF_HUB_OFFLINE": "1"}
    store = f"sqlite:///{out / 'mlflow.db'}"
    sweep = [sys.executable, "run.py", "-m", "backend=transformers,llama-cpp,ctranslate2", "precision=fp32,int8",
             "model=gpt2,distilgpt2", "model.weights=random", "device=cpu", f"tracking.uri={store}",
             f"paths.cache_dir={out / 'cache'}", *args.overrides]
    print("$", " ".join(sweep[1:]), flush=True)
    subprocess.run(sweep, cwd=ROOT, env=env, check=False)
    recommend = [sys.executable, "-m", "qsweep", "recommend", "--tracking-uri", store]
    print("$ python -m qsweep recommend", flush=True)
    sys.exit(subprocess.run(recommend, cwd=ROOT, env=env).returncode)


if __name__ == "__main__":
    main()
