"""History modes side by side: "activations", "states" and "checkpoints" (TruncatedLSTM(
history=...)) on identical work, and BPTT(n, n) for the memory plot.

- time: each mode's pass over the stream, interleaved with "activations" (test_bench_speed's
  method): the ratio of medians, mode / activations, against the targets (states <= 1.3x,
  checkpoints <= 1.6x on CPU);
- memory: the history bytes (exact, state.history_nbytes), the bytes held for backward and the
  peak RSS of a fresh process per mode (test_bench_memory's method), against the targets
  (states <= 0.45x the bytes of activations at I = H; checkpoints <= 0.12x at I = 16,
  H = 128, k2 = 256). BPTT(n, n) over n = k2 steps gives the plot's fourth line.
Cases: H in {128, 256} (+1024 with --bench-full), I in {16, H}, k2 in {64, 256} (+1024),
B = 16, k1 = 32, a stream of k2 + 4 chunks.
"""
from __future__ import annotations

import pytest

import baselines as bl
from test_bench_memory import measure_memory
from test_bench_speed import time_against_ours

MODES = ["ours_states", "ours_checkpoints"]


def test_mode_speed(benchmark, mode_case, mode, bench_full):
    time_against_ours(benchmark, mode_case, mode, bench_full, kind="mode_speed")


def test_mode_memory(benchmark, mode_case, mode):
    if mode == "nn_full":  # BPTT over a window's worth of steps: n = k2
        case = bl.Case(mode_case.device, mode_case.dtype, mode_case.H, mode_case.B,
                       mode_case.k2, mode_case.k2, mode_case.k2, mode_case.layers, mode_case.I)
        measure_memory(benchmark, case, "nn_full", kind="mode_memory")
        benchmark.extra_info.update(k2=mode_case.k2, n=mode_case.k2)
    else:
        measure_memory(benchmark, mode_case, mode, kind="mode_memory")
