"""Memory of one pass over a stream of n steps, per variant, against n.

CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, above what was allocated
before the run (weights, input stream and targets are allocated before and shared).
CPU (and CUDA too): the bytes held for backward at their peak -- tensors autograd saved
(saved_tensors_hooks, by storage, weights/inputs excluded) plus the history ring
(state.history_nbytes). CPU: the peak resident memory of a fresh process per variant
(bench/peak_rss.py), above the process's resident size after setup.

pytest-benchmark times one pass (without hooks) so the rows show in its table; the figures are
in extra_info.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

import baselines as bl

PEAK_RSS = Path(__file__).resolve().parent / "peak_rss.py"


def fresh_process_rss(case, variant):
    r = subprocess.run([sys.executable, str(PEAK_RSS), case.id, variant], capture_output=True,
                       text=True, timeout=1800, cwd=str(PEAK_RSS.parent.parent))
    if r.returncode != 0:
        raise RuntimeError(f"peak_rss.py {case.id} {variant} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_memory(benchmark, mem_case, variant):
    measure_memory(benchmark, mem_case, variant, kind="memory")


def measure_memory(benchmark, case, variant, kind):
    """Bytes held for backward (and the CUDA peak, or a fresh process's peak RSS) of one pass
    of `variant` over the case's stream, into extra_info."""
    if variant.startswith("ours") and bl.ours_class() is None:
        pytest.skip(f"tbptt_cuda not importable: {bl.ours_error()}")
    wl = bl.Workload.get(case)
    runner = bl.make_runner(variant, wl)
    info = dict(kind=kind, case=case.id, variant=variant, I=case.input_size,
                schedule=bl.schedule_name(variant, case.k1, case.k2), device=case.device,
                dtype=case.dtype, H=case.H, B=case.B, k1=case.k1, k2=case.k2, n=case.n,
                layers=case.layers)

    if case.device == "cuda":
        runner.run()  # warm-up: cuDNN workspaces, allocator
        res = {}
        benchmark.pedantic(lambda: res.update(bl.cuda_peak_bytes(runner)), rounds=1,
                           iterations=1)
        info.update(res)
        info.update(bl.bytes_held_for_backward(runner))
    else:  # the timed pass is the one that counts saved tensors (hooks included)
        held = {}
        benchmark.pedantic(lambda: held.update(bl.bytes_held_for_backward(runner)), rounds=1,
                           iterations=1)
        info.update(held)
        gc.collect()
        info.update({k: v for k, v in fresh_process_rss(case, variant).items()
                     if k.startswith("rss_")})

    if variant.startswith("ours"):
        info["history_nbytes"] = getattr(runner, "history_nbytes", None)
    info["backend"] = runner.backend
    benchmark.group = f"memory-{case.device}-{case.dtype}"
    benchmark.extra_info.update(info)
