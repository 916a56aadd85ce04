"""Profile one bench case: where the time of each variant's pass over the stream goes.

    python bench/profile_case.py CASE_ID [VARIANT ...] [--rows 15] [--trace DIR]

e.g. `python bench/profile_case.py cpu-f32-H256-B16-k32-k2_64-n512 ours nn_rerun`. Runs each
variant once to warm up, then once under torch.profiler (CPU, and CUDA activity on a GPU), and
prints the operators by self time: the evidence behind a missed target in notes/README.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import baselines as bl  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("variants", nargs="*", default=["ours", "nn_chunked", "nn_rerun"])
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--trace", default=None, help="folder for chrome traces")
    a = ap.parse_args(argv)
    case = bl.Case.from_id(a.case)
    wl = bl.Workload(case)
    print(bl.header_line(bl.machine_info()))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device == "cuda" else [])
    timer = bl.StreamTimer(case.device)
    for v in a.variants:
        if v == "nn_rerun" and case.k2 == case.k1:
            continue
        r = bl.make_runner(v, wl)
        r.run()
        t = min(timer(r.run) for _ in range(3))
        with profile(activities=acts, record_shapes=False) as prof:
            t0 = time.perf_counter()
            r.run()
            if case.device == "cuda":
                torch.cuda.synchronize()
            tp = time.perf_counter() - t0
        key = "self_cuda_time_total" if case.device == "cuda" else "self_cpu_time_total"
        print(f"\n=== {v} ({bl.schedule_name(v, case.k1, case.k2)}) on {case.id}: "
              f"{t / case.n * 1e6:.1f} us/step (best of 3), {tp / case.n * 1e6:.1f} us/step "
              f"under the profiler; backend {r.backend}")
        print(prof.key_averages().table(sort_by=key, row_limit=a.rows))
        if a.trace:
            Path(a.trace).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(a.trace) / f"{case.id}-{v}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
