"""Time per timestep of forward + backward over a stream, ours against each peer.

One test per (case, variant). pytest-benchmark times the variant's pass over the whole stream
of n steps (one round = one stream). For a peer, each round is preceded (in pedantic's setup,
which pytest-benchmark does not time) by one stream of ours, timed the same way: A, B, A, B...
on identical work in one process, so the ratio ours / peer is a ratio of medians of
interleaved samples (DESIGN.md section 9). On CUDA both are timed with CUDA events.

extra_info (in the JSON): us/step median, q25, q75 of the variant and of ours, the ratio
ours/peer (ratio of medians) with the spread of per-round ratios, the kernel nn.LSTM ran.
"""
from __future__ import annotations

import gc

import pytest
import torch

import baselines as bl


def _rounds(t_pair, full, device, min_rounds=None):
    budget = (8.0 if full else 2.5) if device == "cpu" else (3.0 if full else 2.0)
    lo, hi = (3, 15) if device == "cpu" else (5, 25)
    lo = max(lo, min_rounds or 0)
    r = int(budget / max(t_pair, 1e-9))
    r = max(lo, min(hi, r))
    return r | 1  # odd: a true median


def test_speed(benchmark, speed_case, variant, bench_full):
    time_against_ours(benchmark, speed_case, variant, bench_full, kind="speed")


def time_against_ours(benchmark, case, variant, bench_full, kind, min_rounds=None):
    """Times `variant` over the case's stream, interleaved with ours (history "activations")
    on identical work; records us/step and the ratio ours / variant in extra_info."""
    if variant == "ours" and bl.ours_class(case.cell) is None:
        pytest.skip(f"tbptt_cuda not importable: {bl.ours_error()}")
    wl = bl.Workload.get(case)
    peer = bl.make_runner(variant, wl)
    ours = None
    if variant != "ours" and bl.ours_class(case.cell) is not None:
        ours = bl.make_runner("ours", wl)
    timer = bl.StreamTimer(case.device)

    # warm-up (allocator, oneDNN/cuDNN plans, lazy init), and the cost of one pair
    t_pair = 0.0
    for r in ([ours] if ours else []) + [peer]:
        r.run()
        t_pair += timer(r.run)
    rounds = _rounds(t_pair, bench_full, case.device, min_rounds)

    ours_t, peer_t = [], []

    def setup():
        gc.collect()
        if ours is not None:
            ours_t.append(timer(ours.run))

    def target():
        peer_t.append(timer(peer.run))

    benchmark.group = case.id
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)

    n = case.n
    med, q1, q3 = (v / n * 1e6 for v in bl.quantiles(peer_t))
    info = dict(
        kind=kind, case=case.id, variant=variant, I=case.input_size, cell=case.cell,
        schedule=bl.schedule_name(variant, case.k1, case.k2),
        device=case.device, dtype=case.dtype, H=case.H, B=case.B, k1=case.k1, k2=case.k2, n=n,
        layers=case.layers, rounds=rounds,
        us_per_step=med, us_per_step_q25=q1, us_per_step_q75=q3,
        backend=peer.backend,
    )
    if ours is not None:
        om, oq1, oq3 = (v / n * 1e6 for v in bl.quantiles(ours_t))
        per_round = [a / b for a, b in zip(ours_t, peer_t)]
        rm, rq1, rq3 = bl.quantiles(per_round)
        info.update(ours_us_per_step=om, ours_us_per_step_q25=oq1, ours_us_per_step_q75=oq3,
                    ratio=om / med, ratio_q25=rq1, ratio_q75=rq3)
    if case.device == "cuda":
        info.update(cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_precision=torch.get_float32_matmul_precision())
    benchmark.extra_info.update(info)
