"""The CPU path per step against nn.LSTM (oneDNN's fused RNN primitive), with 1 and 2 threads.

float32, B = 32, I = H, H in {128, 256, 512, 1024}, forward + backward of 64-step chunks:
- BPTT(k,k), k = 64: ours against nn.LSTM on the same chunks, state detached between them;
- TBPTT(k,2k): ours (64 forward, 128 backward steps per update) against nn.LSTM re-running
  the last 128 steps at every update;
- BPTT(1,64): ours (1 forward, 64 backward steps per update) against nn.LSTM re-running the
  last 64 steps at every step (H <= 256 in the quick run, H <= 512 with --bench-full: the
  re-run costs 64 steps of forward + backward per step).
Each ratio is ours / peer, a ratio of medians of interleaved runs (test_bench_speed's method),
torch's threads set to 1 or 2 for the case (torch.set_num_threads, restored after). The
summary prints them as one table against the targets (bench/summary.py, cpu_step_table).
"""
from __future__ import annotations

import pytest
import torch

import baselines as bl
from test_bench_speed import time_against_ours

CHUNK, BATCH = 64, 32


def cpu_step_cases(full):
    """(case, peer, threads, schedule) rows of the table."""
    rows = []
    for threads in (1, 2):
        for H in (128, 256, 512, 1024):
            rows.append((bl.Case("cpu", "f32", H, BATCH, CHUNK, CHUNK, 4 * CHUNK), "nn_chunked",
                         threads, "BPTT(k,k)"))
            rows.append((bl.Case("cpu", "f32", H, BATCH, CHUNK, 2 * CHUNK, 4 * CHUNK), "nn_rerun",
                         threads, "TBPTT(k,2k)"))
            if H <= (512 if full else 256):
                rows.append((bl.Case("cpu", "f32", H, BATCH, 1, CHUNK, 2 * CHUNK), "nn_rerun",
                             threads, "BPTT(1,64)"))
    return rows


def pytest_generate_tests(metafunc):
    if "cpu_step_row" in metafunc.fixturenames:
        from conftest import is_full
        rows = cpu_step_cases(is_full(metafunc.config))
        metafunc.parametrize("cpu_step_row", rows, ids=[
            f"{case.id}-{peer}-t{threads}" for case, peer, threads, _ in rows])


def test_cpu_step(benchmark, cpu_step_row, bench_full, request):
    from conftest import _devices
    if "cpu" not in _devices(request.config):
        pytest.skip("cpu case: not selected by --bench-device/BENCH_DEVICE")
    case, peer, threads, schedule = cpu_step_row
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # 5 rounds at least: the table's ratios sit near their targets
        time_against_ours(benchmark, case, peer, bench_full, kind="cpu_step", min_rounds=5)
    finally:
        torch.set_num_threads(before)
    benchmark.extra_info.update(threads=threads, table_schedule=schedule,
                                case=f"{case.id}-t{threads}")
