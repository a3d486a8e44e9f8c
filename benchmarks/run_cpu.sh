#!/usr/bin/env bash
# Every CPU benchmark of RESULTS.md, one after another on an otherwise idle machine (anything else running
# on the cores distorts every figure). Results go to benchmarks/results/ as JSON lines; the sweeps also
# land in the MLflow store of the experiment named below.
#   bash benchmarks/run_cpu.sh            # all of them (about 40 minutes on 2 cores)
#   bash benchmarks/run_cpu.sh overhead   # one part: overhead | runtimes | peer | compile | roofline | cost
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PEER_PY=${PEER_PY:-/tmp/obvenv/bin/python}   # optimum-benchmark's own venv, see peer_optimum.py
OUT=benchmarks/results
STORE="sqlite:///$PWD/mlruns/mlflow.db"
EXP=benchmarks
PROMPT="The three most important things to know before deploying a language model are"
mkdir -p "$OUT"
part=${1:-all}

run() { [[ $part == all || $part == "$1" ]]; }

if run overhead; then
  $PY benchmarks/overhead.py model=tiny-gpt2 model=gpt2 model=gemma-3-270m --rounds 7 --tokens 64 \
    | tee "$OUT/overhead.jsonl"
fi

if run peer; then
  CACHE=${QSWEEP_CACHE:-$HOME/.cache/qsweep}
  GPT2_RANDOM=$(ls -d "$CACHE"/random/gpt2-*/ | head -1)   # made by any sweep with model=gpt2 model.weights=random
  json() { grep --line-buffered '^{'; }                      # optimum-benchmark logs to stdout too
  # decode speed: gemma-3-270m fp32 and bf16, 64 new tokens, 8 timed repeats, in both tools
  $PY run.py -m tracking.experiment=$EXP model=gemma-3-270m device=cpu precision=fp32,bf16 \
    generation.max_new_tokens=64 generation.repeats=8 "generation.prompts=[\"$PROMPT\"]"
  for launcher in process inline; do
    $PEER_PY benchmarks/peer_optimum.py "$CACHE/gemma-3-270m" --dtypes float32,bfloat16 --prompt-tokens 16 \
      --new-tokens 64 --launcher $launcher 2>/dev/null | json | tee -a "$OUT/peer_gemma.jsonl"
  done
  # the same bare generate loop in both environments: tool differences vs library-version differences
  for python in $PY $PEER_PY; do
    for dtype in float32 bfloat16; do
      $python benchmarks/bare_generate.py "$CACHE/gemma-3-270m" --dtype $dtype 2>/dev/null | json \
        | tee -a "$OUT/bare_generate.jsonl"
    done
  done
  # the same 4-job sweep in each tool: random-weight gpt2, fp32/bf16 x 32/64 new tokens, 8 repeats
  /usr/bin/time -f '{"tool": "qsweep", "jobs": 4, "wall_s": %e}' -a -o "$OUT/peer_sweep_wall.jsonl" \
    $PY run.py -m tracking.experiment=$EXP model=gpt2 model.weights=random device=cpu precision=fp32,bf16 \
    generation.max_new_tokens=32,64 generation.repeats=8 "generation.prompts=[\"$PROMPT\"]"
  $PEER_PY benchmarks/peer_optimum.py "$GPT2_RANDOM" --dtypes float32,bfloat16 --prompt-tokens 16 \
    --new-tokens 32,64 2>/dev/null | json | tee -a "$OUT/peer_sweep_wall.jsonl"
fi

if run runtimes; then  # llama.cpp and CTranslate2: qsweep's timing against each library's own loop
  $PY benchmarks/overhead.py backend=llama-cpp,precision=int4 backend=llama-cpp,precision=fp32 \
    backend=ctranslate2,precision=int8 backend=ctranslate2,precision=fp32 --rounds 5 --tokens 64 \
    | tee "$OUT/runtime_overhead.jsonl"
fi

if run compile; then
  $PY run.py -m tracking.experiment=$EXP model=gemma-3-270m device=cpu precision=fp32,bf16 \
    generation.compile=false,true
fi

if run roofline; then
  $PY benchmarks/roofline.py --store "$STORE" --experiment $EXP | tee "$OUT/roofline.jsonl"
fi

if run cost; then
  $PY benchmarks/sweep_cost.py --store "$STORE" --experiment $EXP | tee "$OUT/sweep_cost.jsonl"
fi
