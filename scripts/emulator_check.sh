#!/usr/bin/env bash
# The SIMT emulator's standalone test (tests/cpp/emu_selftest.cpp), framework-free, in three
# builds: plain (-O2), under ThreadSanitizer, and under AddressSanitizer + UBSan. Checks that
# correct kernels run clean in all three, that TSan reports the planted missing barriers
# (global memory across blocks, shared memory within one) and that ASan reports a planted
# out-of-bounds global write. Prints one line per check; exits non-zero if any fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=build/emu
mkdir -p "$OUT"
CXX=${CXX:-g++}
INCLUDES=(-Icsrc -Itests/cpp)
for toolkit in "${CUDA_HOME:-}" /usr/local/cuda; do  # the half-conversion check compares with it
  if [ -n "$toolkit" ] && [ -f "$toolkit/include/cuda_fp16.h" ]; then INCLUDES+=(-I"$toolkit/include"); break; fi
done
SOURCES=(tests/cpp/emu_selftest.cpp csrc/emulation/simt_emu.cpp csrc/emulation/lstm_kernels_emu.cpp)
FLAGS=(-std=c++17 -g -Wall -Wno-class-memaccess -pthread)

build() {  # build NAME FLAGS...
  local name=$1; shift
  "$CXX" "${FLAGS[@]}" "$@" "${INCLUDES[@]}" "${SOURCES[@]}" -o "$OUT/$name" > "$OUT/$name.build.log" 2>&1 \
    || { echo "build of $name failed:"; cat "$OUT/$name.build.log"; return 1; }
}
start=$SECONDS
build emu_selftest -O2 &
build emu_selftest_tsan -O1 -fsanitize=thread &
wait
build emu_selftest_asan -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined || exit 1
[ -x "$OUT/emu_selftest" ] && [ -x "$OUT/emu_selftest_tsan" ] || exit 1
echo "built in $((SECONDS - start)) s"

failed=0
check() {  # check DESCRIPTION EXPECTED_STATUS MUST_CONTAIN COMMAND...
  local what=$1 expected=$2 pattern=$3; shift 3
  local log="$OUT/check_$(echo "$what" | tr ' /' '__').log" t0=$SECONDS
  "$@" > "$log" 2>&1
  local status=$?
  if [ "$status" = "$expected" ] && grep -q -- "$pattern" "$log"; then
    printf 'ok    %-58s (%ss)\n' "$what" "$((SECONDS - t0))"
  else
    printf 'FAIL  %-58s exit %s, expected %s and "%s"; see %s\n' "$what" "$status" "$expected" "$pattern" "$log"
    tail -n 20 "$log"
    failed=1
  fi
}
tsan() { TSAN_OPTIONS="exitcode=66 halt_on_error=0 report_signal_unsafe=0" "$@"; }
asan() { ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="print_stacktrace=1" "$@"; }

check "plain: correct kernels vs references" 0 "check: ok" "$OUT/emu_selftest" check
check "plain: planted faults reported" 0 "faults: ok" "$OUT/emu_selftest" faults
check "tsan: correct kernels, no race reported" 0 "sanitize: ok" tsan "$OUT/emu_selftest_tsan" sanitize
check "tsan: missing grid barrier -> race in global memory" 66 "ThreadSanitizer: data race" \
  tsan "$OUT/emu_selftest_tsan" fault no-grid-barrier
check "tsan: missing block barrier -> race in shared memory" 66 "ThreadSanitizer: data race" \
  tsan "$OUT/emu_selftest_tsan" fault no-block-barrier
check "asan+ubsan: correct kernels and faults, clean" 0 "faults: ok" asan "$OUT/emu_selftest_asan" all
check "asan: global write out of bounds reported" 1 "heap-buffer-overflow" \
  asan "$OUT/emu_selftest_asan" fault global-overrun
echo "emulator check: $([ $failed = 0 ] && echo ok || echo FAILED) in $((SECONDS - start)) s"
exit $failed
