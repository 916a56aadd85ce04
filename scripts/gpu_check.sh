#!/usr/bin/env bash
# On a GPU machine (preinstalled python3 with torch 2.11.0+cu130, no package registry, no
# venv): build in place, report the build, run the whole test suite (CUDA cases included),
# a small compute-sanitizer run, and the quick GPU benchmarks. Logs go to $OUT (or results/);
# a short summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
summary=()
step() {  # step NAME LOGFILE COMMAND...
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$OUT/$log")")")
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
step build build.log python3 setup.py build_ext --inplace || { cat "$OUT/build.log" | tail -40; }
step info info.log python3 -m tbptt_cuda.info
step tests tests.log python3 -m pytest tests -q -rs
step cuda-tests cuda_tests.log python3 -m pytest tests -q -m cuda -rs
if command -v compute-sanitizer > /dev/null; then
  step memcheck memcheck.log compute-sanitizer --tool memcheck --error-exitcode 9 python3 scripts/sanitize_run.py
  step racecheck racecheck.log compute-sanitizer --tool racecheck --error-exitcode 9 python3 scripts/sanitize_run.py
fi
if [ -d bench ] && [ -z "${SKIP_BENCH:-}" ]; then
  step bench bench.log python3 -m pytest bench -q --benchmark-only --bench-device cuda --benchmark-json="$OUT/bench.json"
  [ -f bench/summary.py ] && step summary summary.log python3 bench/summary.py "$OUT/bench.json" --out "$OUT"
fi
echo "== $(cat "$OUT/gpu.txt") | torch $(python3 -c 'import torch; print(torch.__version__)') | $(git rev-parse --short HEAD 2>/dev/null)"
printf '%s\n' "${summary[@]}"
