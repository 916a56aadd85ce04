#!/usr/bin/env bash
# On a GPU machine (preinstalled python3 with torch 2.11.0+cu130, no package registry, no
# venv): build in place, report the build, run the whole test suite (CUDA cases included),
# compute-sanitizer memcheck, racecheck and synccheck on a short run of both CUDA paths, then
# the grid-barrier microbenchmark, the per-step times of the CUDA paths next to cuDNN (the LSTM,
# then the GRU at a few shapes), and the cost model's predictions for comparison (each cell). Each step has a time budget (the whole is meant to
# take under 10 minutes on an H100); logs and JSON go to $OUT (or results/); the measured
# tables and a summary (device, clocks, commit, each step's status) are printed last.
#   FULL_BENCH=1   also run the pytest-benchmark suite (long)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results}
mkdir -p "$OUT"
# Build for the GPU present (major.minor of device 0: 8.0 on an A100, 8.9 on an L4, 9.0 on an
# H100): one architecture builds fastest and is the one measured; 9.0 where torch sees none.
gpu_arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2> /dev/null || echo 9.0)
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$gpu_arch}
if [ -z "${TBPTT_COMMIT:-}" ] && git rev-parse --short=12 HEAD > /dev/null 2>&1; then
  TBPTT_COMMIT=$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD 2> /dev/null || echo -dirty)
fi
export TBPTT_COMMIT=${TBPTT_COMMIT:-unknown}
summary=()
step() {  # step NAME BUDGET_SECONDS LOGFILE COMMAND...
  local name=$1 budget=$2 log=$3; shift 3
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$budget" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local last
  last=$(grep -v '^\s*$' "$OUT/$log" | tail -n 1 | cut -c1-110)
  [ "$rc" = 124 ] && last="TIMED OUT after ${budget}s; $last"
  summary+=("$(printf '%-12s rc=%-3s %4ss/%-4s %s' "$name" "$rc" "$((SECONDS - start))" "$budget" "$last")")
  return $rc
}
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null || true)
clocks() { nvidia-smi --query-gpu=clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | head -n 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1

# budgets (seconds): build 240, info 60, tests 240, each sanitizer 120, barrier 60, paths 180,
# paths_gru 90, model 60, model_gru 60; the steps that follow a failed build are skipped
if ! step build 240 build.log python3 setup.py build_ext --inplace; then
  tail -n 40 "$OUT/build.log"
else
  step info 60 info.log python3 -m tbptt_cuda.info
  step tests 240 tests.log python3 -m pytest tests -q -rs -p no:cacheprovider
  if [ -n "$SANITIZER" ]; then
    for tool in memcheck racecheck synccheck; do
      step "$tool" 120 "$tool.log" "$SANITIZER" --tool "$tool" --error-exitcode 9 python3 scripts/sanitize_run.py
    done
  else
    summary+=("sanitizers   skipped: no compute-sanitizer on PATH or in /usr/local/cuda/bin")
  fi
  step barrier 60 barrier_latency.log python3 bench/barrier_latency.py --blocks 96 128 0 --threads 256 \
    --out "$OUT/barrier_latency.json"
  step paths 180 gpu_paths.log python3 bench/gpu_paths.py --out "$OUT/gpu_paths.json"
  # the GRU: 8 of the LSTM's 18 shapes (its persistent kernels are the LSTM's over G = 3H)
  step paths_gru 90 gpu_paths_gru.log python3 bench/gpu_paths.py --cell gru --hidden 256,768 \
    --batch 1,16 --out "$OUT/gpu_paths_gru.json"
  step model 60 gpu_model.log python3 bench/gpu_model.py --barrier-json "$OUT/barrier_latency.json" \
    --paths-json "$OUT/gpu_paths.json" --json "$OUT/gpu_model.json"
  step model_gru 60 gpu_model_gru.log python3 bench/gpu_model.py --cell gru \
    --barrier-json "$OUT/barrier_latency.json" --paths-json "$OUT/gpu_paths_gru.json" \
    --json "$OUT/gpu_model_gru.json"
  if [ -n "${FULL_BENCH:-}" ] && [ -f bench/summary.py ]; then
    step bench 1800 bench.log python3 -m pytest bench -q --benchmark-only --bench-device cuda \
      --benchmark-json="$OUT/bench.json"
    step summary 120 summary.log python3 bench/summary.py "$OUT/bench.json" --out "$OUT"
  fi
  echo "== grid barrier (measured)"; cat "$OUT/barrier_latency.log"
  echo "== CUDA paths (measured)"; cat "$OUT/gpu_paths.log"
  echo "== CUDA paths of the GRU (measured)"; cat "$OUT/gpu_paths_gru.log"
  echo "== cost model: the rule it derives (predictions; the whole output: $OUT/gpu_model.log)"
  grep -E "rule: |MEASURED|: persistent" "$OUT/gpu_model.log" | cut -c1-240
  echo "== cost model, the GRU: its derived rule vs the LSTM's rows it uses (predictions; $OUT/gpu_model_gru.log)"
  grep -E " in use |MEASURED|: persistent" "$OUT/gpu_model_gru.log" | cut -c1-240
fi
echo "== $(cat "$OUT/gpu.txt") | SM clock now, max: $(clocks) | torch $(python3 -c 'import torch; print(torch.__version__)' 2>&1) | commit $TBPTT_COMMIT | ${SECONDS}s in all"
printf '%s\n' "${summary[@]}"
