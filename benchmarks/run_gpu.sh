#!/usr/bin/env bash
# Every CUDA path of qsweep in one call of the device machine (README.md, section "Measuring on a GPU"):
#
#   bash benchmarks/run_gpu.sh [all|seed|gemma|compile|finetune|ct2|overhead ...]   on the device machine, from the project
#                                 root, with carry [".gpukit"] (build it first: benchmarks/gpu/gpu-wheels.sh)
#   bash benchmarks/run_gpu.sh --dry-run [PART ...]   anywhere (no GPU, no $OUT): compose and validate every
#                                 configuration the parts would run (PYTHON= picks the interpreter)
#
# Parts (benchmarks/gpu/plan.py holds their commands): seed = the T4 notebook's grid; gemma = every precision on CUDA
# with quality; compile = torch.compile vs eager; finetune = train_merge on CUDA, then finetune-cpu-vs-gpu;
# ct2 = backend=ctranslate2 on CUDA (only when conf/backend/ctranslate2.yaml exists); overhead = qsweep's timed
# loop against a bare generate on CUDA (fp16, bf16, int4; overhead.jsonl, checked >= 0.97).
# Writes under $OUT: run_gpu.log, mlruns.tar.gz (the MLflow store), report.tar.gz (report.md + charts),
# checks.txt (the PASS/FAIL lines, printed last), host.txt (GPU, driver, package versions).
# Budget: RUN_GPU_BUDGET_S (default 405) seconds for the set-up and all parts together, each part also capped on
# its own (`python benchmarks/gpu/costs.py`: the caps below, sized from the H200's measured costs so that
# `all` and the packing fit one call of 420 s); a part that fails or runs out of time is recorded, the next runs.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 2
root=$PWD

if [[ ${1:-} == --dry-run ]]; then
  shift
  py=${PYTHON:-}
  if [[ -z $py ]]; then if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi; fi
  parts=("$@"); [[ ${#parts[@]} -eq 0 || ${parts[0]} == all ]] && parts=()
  PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} exec "$py" benchmarks/gpu/plan.py dry-run "${parts[@]}"
fi

: "${OUT:?run_gpu.sh writes its results under \$OUT (the device tool sets it); here, use --dry-run}"
parts=("$@"); [[ ${#parts[@]} -eq 0 || ${parts[0]} == all ]] && parts=(seed gemma compile finetune ct2 overhead)
declare -A cap=([seed]=69 [gemma]=73 [compile]=68 [finetune]=112 [ct2]=70 [overhead]=73)
for p in "${parts[@]}"; do
  [[ -n ${cap[$p]:-} ]] || { echo "run_gpu.sh: unknown part '$p': use seed, gemma, compile, finetune, ct2, overhead or all" >&2; exit 2; }
done
budget=${RUN_GPU_BUDGET_S:-405}
py=${PYTHON:-python3}
site=/tmp/site work=/tmp/qsweep-gpu store=/tmp/gpu-store
export QSWEEP_GPU_WORK=$work QSWEEP_CACHE=/tmp/qsweep-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MLFLOW_TRACKING_URI=sqlite:///$store/mlflow.db MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
mkdir -p "$OUT" "$work" "$store"
exec > >(tee -a "$OUT/run_gpu.log") 2>&1
start=$SECONDS
summary=()
overhead=""; for p in "${parts[@]}"; do [[ $p == overhead ]] && overhead=1; done

finish() {  # always: pack the store, the report and the checks into $OUT, then print the checks last
  trap - EXIT INT TERM
  echo; echo "== packing results into \$OUT ($((SECONDS - start)) s so far)"
  if [[ -f $store/mlflow.db ]]; then
    if (( SECONDS - start < budget + 60 )); then
      timeout 60 "$py" -m qsweep report --tracking-uri "$MLFLOW_TRACKING_URI" --experiment qsweep \
        --out "$work/report" --no-log >"$work/report.log" 2>&1 || echo "report failed: $(tail -3 "$work/report.log")"
      cp "$work/report.log" "$work/report/" 2>/dev/null
      [[ -f $work/overhead.jsonl ]] && cp "$work/overhead.jsonl" "$OUT/"
      timeout 60 "$py" benchmarks/gpu/checks.py --tracking-uri "$MLFLOW_TRACKING_URI" \
        ${overhead:+--overhead "$work/overhead.jsonl"} >"$OUT/checks.txt" 2>&1
    else
      echo "FAIL time: no time left for the report and the checks" >"$OUT/checks.txt"
    fi
    tar -czf "$OUT/mlruns.tar.gz" -C "$(dirname "$store")" "$(basename "$store")"
    [[ -d $work/report ]] && tar -czf "$OUT/report.tar.gz" -C "$work" report
  else
    echo "FAIL store: nothing was recorded (no $store/mlflow.db)" >>"$OUT/checks.txt"
  fi
  ls -la "$OUT"
  echo; echo "== parts"; printf '%s\n' "${summary[@]}"
  echo; echo "== checks ($((SECONDS - start)) s in all)"; cat "$OUT/checks.txt"
  grep -q '^FAIL' "$OUT/checks.txt" && exit 1
  exit 0
}
trap finish EXIT
trap 'echo "run_gpu.sh: interrupted"; exit 143' INT TERM

echo "== run_gpu.sh ${parts[*]} ($(date -u +%FT%TZ), budget ${budget} s)"
if [[ ! -f .gpukit/site.tar.xz ]]; then
  echo "FAIL bundle: no .gpukit/site.tar.xz: build it with benchmarks/gpu/gpu-wheels.sh .gpukit and carry [\".gpukit\"]" \
    | tee "$OUT/checks.txt"
  exit 1
fi
mkdir -p "$site" && tar -xJf .gpukit/site.tar.xz -C "$site" || { echo "FAIL bundle: cannot unpack" >"$OUT/checks.txt"; exit 1; }
export PYTHONPATH=$site:$root
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  "$py" - <<'PY'
import importlib.metadata as m, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
for name in ("transformers", "tokenizers", "huggingface-hub", "accelerate", "peft", "bitsandbytes", "hydra-core",
             "omegaconf", "mlflow-skinny", "gguf", "matplotlib", "nvidia-ml-py", "ctranslate2"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "-")
PY
} 2>&1 | tee "$OUT/host.txt"
"$py" -c 'import hydra, mlflow, bitsandbytes, transformers; assert transformers.__version__ == "5.23.0", transformers.__version__' \
  || { echo "FAIL bundle: qsweep's packages do not import (see above)" >"$OUT/checks.txt"; exit 1; }
"$py" -c 'from mlflow import MlflowClient; import os; MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()' \
  >/dev/null 2>&1  # create the SQLite store once, before any sweep touches it

for part in "${parts[@]}"; do
  left=$((budget - (SECONDS - start)))
  limit=$(( left < ${cap[$part]} ? left : ${cap[$part]} ))
  if (( limit < 15 )); then summary+=("$part: SKIPPED (no time left)"); echo "== $part: SKIPPED, no time left"; continue; fi
  if [[ $part == ct2 ]]; then
    if [[ ! -f conf/backend/ctranslate2.yaml ]]; then
      summary+=("ct2: SKIPPED (conf/backend/ctranslate2.yaml is not in this tree)"); continue
    fi
    if [[ -f .gpukit/ct2.tar.xz ]]; then tar -xJf .gpukit/ct2.tar.xz -C "$site"; fi
    timeout 30 "$py" -c 'import ctranslate2 as c; print("ctranslate2", c.__version__, "CUDA devices:", c.get_cuda_device_count()); print("compute types on cuda:", sorted(c.get_supported_compute_types("cuda")))' \
      || echo "ct2: ctranslate2 does not run on CUDA here (its wheels are built for CUDA 12; this host has CUDA 13)"
  fi
  echo; echo "== $part (at most $limit s)"
  t0=$SECONDS
  timeout -k 10 "$limit" "$py" benchmarks/gpu/plan.py run "$part"
  code=$?
  case $code in
    0) state=ok ;;
    124|137) state="TIMED OUT after ${limit} s" ;;
    *) state="FAILED (exit $code)" ;;
  esac
  summary+=("$part: $state, $((SECONDS - t0)) s")
done
