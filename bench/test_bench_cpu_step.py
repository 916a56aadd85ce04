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

The GRU (issue 18): the same rows with cell="gru", TruncatedGRU against nn.GRU (in training
on the CPU, torch's own cells step by step: grad_fn StackBackward0, the rows' "backend"; oneDNN's
fused RNN is nn.LSTM's), BPTT(k,k) and TBPTT(k,2k) only, H in {128, 256} (H <= 1024 with
--bench-full). TruncatedGRU runs the fused CPU layers as the LSTM does (float32, H <= 512): the
summary prints its own table, "CPU GRU per step", without targets (reported, not judged).

bfloat16 (issue 19; test_cpu_bf16_step): ours with a bf16 module against ours float32 and
against nn.LSTM under torch.autocast("cpu", dtype=torch.bfloat16), BPTT(k,k) as above, H in
{128, 256, 512, 1024}, 1 and 2 threads (bench/cpu_bf16_step.py's workload; the CPU's ISA is
in the row and the summary's header: bench/summary.py, cpu_bf16_table).
"""
from __future__ import annotations

import pytest
import torch

import baselines as bl
from test_bench_speed import time_against_ours

CHUNK, BATCH = 64, 32


def cpu_step_cases(full, cell="lstm"):
    """(case, peer, threads, schedule) rows of the table of `cell` ("lstm", "gru" or "lstmp")."""
    lstm = cell == "lstm"
    rows = []
    for threads in (1, 2):
        for H in (128, 256, 512, 1024) if lstm or full else (128, 256):
            rows.append((bl.Case("cpu", "f32", H, BATCH, CHUNK, CHUNK, 4 * CHUNK, cell=cell),
                         "nn_chunked", threads, "BPTT(k,k)"))
            rows.append((bl.Case("cpu", "f32", H, BATCH, CHUNK, 2 * CHUNK, 4 * CHUNK, cell=cell),
                         "nn_rerun", threads, "TBPTT(k,2k)"))
            if lstm and H <= (512 if full else 256):
                rows.append((bl.Case("cpu", "f32", H, BATCH, 1, CHUNK, 2 * CHUNK), "nn_rerun",
                             threads, "BPTT(1,64)"))
    return rows


def pytest_generate_tests(metafunc):
    if "cpu_step_row" in metafunc.fixturenames:
        from conftest import is_full
        full = is_full(metafunc.config)
        rows = [row for cell in bl.CELLS for row in cpu_step_cases(full, cell)]
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
                                case=f"{case.id}-t{threads}")  # cell: from time_against_ours


def cpu_bf16_cases():
    return [(H, threads, peer) for threads in (1, 2) for H in (128, 256, 512, 1024)
            for peer in ("ours_f32", "nn_autocast")]


@pytest.mark.parametrize("bf16_row", cpu_bf16_cases(),
                         ids=[f"cpu-bf16-H{H}-t{t}-{peer}" for H, t, peer in cpu_bf16_cases()])
def test_cpu_bf16_step(benchmark, bf16_row, bench_full, request):
    from conftest import _devices
    if "cpu" not in _devices(request.config):
        pytest.skip("cpu case: not selected by --bench-device/BENCH_DEVICE")
    if bl.ours_class() is None:
        pytest.skip(f"tbptt_cuda not importable: {bl.ours_error()}")
    import cpu_bf16_step as cb
    from test_bench_speed import _rounds
    H, threads, peer_name = bf16_row
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        work = cb.Work(H, B=BATCH, L=CHUNK, chunks=4)
        ours, peer = cb.runner("ours_bf16", work), cb.runner(peer_name, work)
        timer = bl.StreamTimer("cpu")
        t_pair = 0.0
        for r in (ours, peer):  # warm-up (packs, oneDNN primitives), and the cost of a pair
            r()
            t_pair += timer(r)
        rounds = _rounds(t_pair, bench_full, "cpu", 5)
        ours_t, peer_t = [], []
        benchmark.group = f"cpu-bf16-H{H}-t{threads}"
        benchmark.pedantic(lambda: peer_t.append(timer(peer)),
                           setup=lambda: ours_t.append(timer(ours)), rounds=rounds,
                           iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(before)
    steps = work.chunks * work.L
    om, oq1, oq3 = (v / steps * 1e6 for v in bl.quantiles(ours_t))
    pm, pq1, pq3 = (v / steps * 1e6 for v in bl.quantiles(peer_t))
    _, q1, q3 = bl.quantiles([a / b for a, b in zip(ours_t, peer_t)])
    model, isa = cb.cpu_isa()
    benchmark.extra_info.update(
        kind="cpu_bf16", case=f"cpu-bf16-H{H}-t{threads}", variant=peer_name, H=H, B=BATCH,
        threads=threads, rounds=rounds, device="cpu", dtype="bf16", k1=CHUNK, k2=CHUNK,
        n=steps, cpu=model, isa=" ".join(isa), ours_us_per_step=om, us_per_step=pm,
        ratio=om / pm, ratio_q25=q1, ratio_q75=q3,
        fused_reason=__import__("tbptt_cuda")._backend.cpu_fused_reason("bfloat16"))
