#!/usr/bin/env bash
# gpu-wheels.sh [--ct2] DEST [EXTRA_REQUIREMENT ...]
# Builds DEST/site.tar.xz: the Python packages qsweep needs on the CUDA device host that it lacks, unpacked
# and compressed, with bitsandbytes trimmed to its CUDA 13 library so the bundle stays small; DEST/packages.txt
# and benchmarks/gpu/bundle-packages.txt list what it holds (name==version, one a line).
# --ct2 also builds DEST/ct2.tar.xz (ctranslate2==4.8.5 alone, for the CTranslate2 part; see docs/gpu/).
# Extra requirements (e.g. "rich==14.*") are added to the resolution.
#
# Here, in the project root:  echo /.gpukit/ >> "$(git rev-parse --git-common-dir)/info/exclude"
#                             bash benchmarks/gpu/gpu-wheels.sh .gpukit
# There (benchmarks/run_gpu.sh does it): mkdir -p /tmp/site && tar -xJf .gpukit/site.tar.xz -C /tmp/site &&
#                             export PYTHONPATH=/tmp/site:$PWD
#
# Fixed from ../shared/tools/gpu-wheels.sh (never run on the host before):
# - transformers was counted as present, so the host's 5.17 would have run instead of the pinned 5.23.0
#   (5.23.0 needs huggingface-hub>=1.31, tokenizers>=0.23.1,<0.24, safetensors>=0.8: the host's 1.33.0,
#   0.23.2 and 0.8.0 do);
# - "present" was a hand-written regex that named packages the host's list does not have (pytz, tzdata) and
#   missed ones it has; it is now read from host-packages.txt beside this script;
# - the resolution ran under whatever python3 was here (3.11: markers evaluated for 3.11); it uses a 3.12;
# - wheels with a .data/purelib or platlib folder were unpacked where Python cannot import them;
# - the resolution pulled torch's CUDA 12 libraries (nvidia-*-cu12, 4.4 GB) through bitsandbytes' and peft's
#   torch requirement: torch's closure is excluded by pattern;
# - peft is carried at the project's pin (0.21.2): the host's version is unknown, and it must work with
#   transformers 5.23.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ct2=0
if [[ ${1:-} == --ct2 ]]; then ct2=1; shift; fi
dest=${1:?usage: gpu-wheels.sh [--ct2] DEST [EXTRA_REQUIREMENT ...]}; shift || true
roots=("transformers==5.23.0" "bitsandbytes==0.50.2" "hydra-core==1.3.8" "omegaconf==2.3.0" "mlflow-skinny==3.17.2"
       "sqlalchemy" "alembic" "gguf==0.19.0" "peft==0.21.2" "$@")
carried_anyway='^(transformers|peft|bitsandbytes)$'  # present there, but not at the version qsweep pins
# already on the CUDA host (host-packages.txt), never shipped again; torch's own closure (its CUDA libraries,
# whose names differ by CUDA version) stays the host's too
present="torch|triton|nvidia-.*|cuda-.*|$(grep -v '^#' "$here/host-packages.txt" | tr 'A-Z_' 'a-z-' | paste -sd'|')"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
py=""
for candidate in "${PYTHON:-}" python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 python3; do
  if [[ -n $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    py=$candidate; break
  fi
done
if [[ -z $py ]]; then py=python3; echo "gpu-wheels: no Python 3.12 here; resolving with $(python3 -V) for 3.12" >&2; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
pip() { "$py" -m pip "$@" 2> >(grep -v 'is ignored' >&2); }  # this machine's pip config names absent local indexes
# antlr4-python3-runtime 4.9.3 (Hydra's parser) is published as source only: build its pure-Python wheel here
pip wheel -q --no-deps -w "$work/wheels" "antlr4-python3-runtime==4.9.3"
pip install -q --dry-run --ignore-installed "${plat[@]}" --target "$work/t" \
  --find-links "$work/wheels" --report "$work/r.json" "${roots[@]}"
"$py" - "$work/r.json" "^($present)\$" "$carried_anyway" >"$work/list" <<'PY'
import json, re, sys
report, present, anyway = json.load(open(sys.argv[1])), re.compile(sys.argv[2], re.I), re.compile(sys.argv[3], re.I)
for item in report["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-")
    if (anyway.match(name) or not present.match(name)) and name != "antlr4-python3-runtime":
        print(f'{name}=={item["metadata"]["version"]}')
PY
pip download -q --no-deps "${plat[@]}" -d "$work/wheels" -r "$work/list"
unpack() {  # wheel -> site folder, with .data/purelib and .data/platlib moved where Python imports them
  local wheel=$1 site=$2
  "$py" -m zipfile -e "$wheel" "$site"
  for lib in "$site"/*.data/purelib "$site"/*.data/platlib; do
    [[ -d $lib ]] && cp -a "$lib"/. "$site"/
  done
  rm -rf "$site"/*.data
}
mkdir -p "$work/site" "$dest"
for w in "$work"/wheels/*.whl; do unpack "$w" "$work/site"; done
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda130.so' \
  ! -name 'libbitsandbytes_cpu.so' -delete
find "$work/site" -name __pycache__ -type d -prune -exec rm -rf {} +
(cd "$work/site" && ls -d *.dist-info | sed -E 's/\.dist-info$//; s/-([^-]+)$/==\1/' | tr 'A-Z_' 'a-z-' | sort) \
  > "$dest/packages.txt"
XZ_OPT="-9 -T0" tar -cJf "$dest/site.tar.xz" -C "$work/site" .
cp "$dest/packages.txt" "$here/bundle-packages.txt"
echo "$(wc -l <"$dest/packages.txt") packages, $(du -sh "$work/site" | cut -f1) unpacked," \
     "$(du -b "$dest/site.tar.xz" | cut -f1) bytes in $dest/site.tar.xz:"
tr '\n' ' ' <"$dest/packages.txt"; echo
if (( ct2 )); then
  pip download -q --no-deps "${plat[@]}" -d "$work/ct2w" "ctranslate2==4.8.5"
  mkdir -p "$work/ct2"
  for w in "$work"/ct2w/*.whl; do unpack "$w" "$work/ct2"; done
  XZ_OPT="-9 -T0" tar -cJf "$dest/ct2.tar.xz" -C "$work/ct2" .
  echo "ctranslate2==4.8.5  # in ct2.tar.xz (--ct2), unpacked by run_gpu.sh for the ct2 part only" >>"$dest/packages.txt"
  cp "$dest/packages.txt" "$here/bundle-packages.txt"
  echo "ctranslate2==4.8.5: $(du -sh "$work/ct2" | cut -f1) unpacked, $(du -b "$dest/ct2.tar.xz" | cut -f1) bytes in $dest/ct2.tar.xz"
fi
