"""qsweep's KL vs fp32 beside llama.cpp's own `llama-perplexity --kl-divergence`, on the same GGUF files and
the same text and windows (quality.method=llama-perplexity: windows of --context tokens, the second half of
each scored):

    QSWEEP_CACHE=/tmp/kl-cache .venv/bin/python benchmarks/llama_perplexity.py qsweep/data/wikitext-2/wiki.test.raw \
        --types Q4_0 Q4_K_M Q5_K_M Q6_K Q8_0 --chunks 40

1. Builds llama-perplexity from the source distribution the runtimes use (llama-cpp-python 0.3.36, fetched
   with `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` unless --sdist gives it), with
   the Makefile's CMake flags, once into --build (about 4 min on 2 cores).
2. qsweep's llama.cpp files of the bundled Gemma (backend.gguf_type=...: F32 converted, the others quantized
   from it by llama.cpp), made once in the cache.
3. llama-perplexity: the F32 file's logits as the base (--kl-divergence-base), then each type's mean KLD ± SE.
4. qsweep: transformers fp32 as the reference (what a sweep stores), each type as llama.cpp loads it in a
   qsweep job, scored by qsweep.quality (the stored reference's estimate, its batch-means SE).
Prints one line per type: both figures, their ratio, and whether they agree (within 5% or 2 SE).
"""

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from kl_tail import load  # noqa: E402  (benchmarks/ is the script's folder)

from qsweep import backends, sources
from qsweep.quality import windows_for
from qsweep.quality.cache import KEEP
from qsweep.quality.scoring import TextQuality, as_reference, score_text

CMAKE_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
               "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"]
KLD = re.compile(r"Mean\s+KLD:\s+([0-9.eE+-]+)\s+±\s+([0-9.eE+-]+)")


def build(sdist: Path, folder: Path) -> Path:
    tool = folder / "bin" / "llama-perplexity"
    if tool.is_file():
        return tool
    if not sdist:
        download = Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python==0.3.36", "-d", str(download)], check=True)
        sdist = next(download.glob("llama_cpp_python-0.3.36.tar.gz"))
    source = folder / "src"
    if not source.is_dir():
        with tarfile.open(sdist) as archive:
            archive.extractall(source, filter="data")
    llama = next(source.glob("*/vendor/llama.cpp"))
    subprocess.run(["cmake", "-S", str(llama), "-B", str(folder), *CMAKE_FLAGS], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(folder), "--target", "llama-perplexity", "-j", "2"], check=True,
                   stdout=subprocess.DEVNULL)
    return tool


def llama_perplexity(tool: Path, gguf: Path, base: Path, text: Path, context: int, chunks: int, threads: int,
                     make_base: bool) -> str:
    args = [str(tool), "-m", str(gguf), "-c", str(context), "--chunks", str(chunks), "-t", str(threads),
            "--kl-divergence-base", str(base)]
    args += ["-f", str(text)] if make_base else ["--kl-divergence"]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return done.stdout + done.stderr  # its figures go to stdout, its log to stderr


def gguf_file(cfg) -> Path:
    """The GGUF file a qsweep job of cfg loads (made once in the cache: the cache holds other models' too)."""
    checkpoint = sources.resolve(cfg.model, Path(cfg.paths.cache_dir).expanduser())
    return Path(backends.get(cfg.backend.name).prepare(cfg, checkpoint).path) / "model.gguf"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("text", type=Path)
    parser.add_argument("--types", nargs="+", default=["Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sdist", type=Path)
    parser.add_argument("--build", type=Path, default=Path("/tmp/llama-perplexity-build"))
    args = parser.parse_args()
    start = time.perf_counter()
    tool = build(args.sdist, args.build)
    quality = [f"quality.text={args.text.resolve()}", "quality.method=llama-perplexity",
               f"quality.context={args.context}", f"quality.windows={args.chunks}", "device=cpu"]
    cfg, fp32 = load(*quality)
    cut = windows_for(cfg.quality, fp32.tokenizer, 10**9)
    reference = as_reference(score_text(fp32, cut.windows, keep=KEEP, scored_from=cut.scored_from))
    del fp32
    base_cfg, _ = load(*quality, "backend=llama-cpp", "backend.gguf_type=F32")
    f32 = gguf_file(base_cfg)
    base = args.build / f"{f32.parent.parent.name}-{args.text.name}-{args.context}-{args.chunks}.kld"
    if not base.is_file():
        llama_perplexity(tool, f32, base, args.text, args.context, args.chunks, args.threads, make_base=True)
    print(f"{len(cut.windows)} windows of {cut.window} tokens, second half scored, {args.text}; "
          f"reference: qsweep transformers fp32 / llama-perplexity F32 GGUF")
    print(f"{'type':7s} {'llama-perplexity KLD':>24s} {'qsweep KL':>24s} {'ratio':>6s}  agree")
    for kind in args.types:
        run_cfg, run = load(*quality, "backend=llama-cpp", f"backend.gguf_type={kind}")
        ours = TextQuality.against_reference(score_text(run, cut.windows, reference, scored_from=cut.scored_from))
        del run
        gguf = gguf_file(run_cfg)
        theirs, theirs_se = map(float, KLD.search(llama_perplexity(tool, gguf, base, args.text, args.context,
                                                                   args.chunks, args.threads, False)).groups())
        agree = abs(ours.kl_div - theirs) <= max(0.05 * theirs, 2 * (theirs_se ** 2 + ours.kl_div_se ** 2) ** 0.5)
        print(f"{kind:7s} {theirs:12.5f} ± {theirs_se:.5f} {ours.kl_div:12.5f} ± {ours.kl_div_se:.5f} "
              f"{ours.kl_div / theirs:6.3f}  {'yes' if agree else 'NO'}", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
