"""Where a CPU step's time goes, before (the stepwise path) and after (the fused layers).

    python bench/profile_cpu_step.py [--H 128 256 512 1024] [--threads 2] [--k2 64] [--json F]

One stream of 4 chunks of 64 steps, B = 32, I = H, float32, forward + backward per chunk (BPTT(k,k);
--k2 128 for TBPTT(k,2k)), on each CPU path (`tbptt_cuda._backend.set_cpu_path`), after one
warm-up pass, under torch.profiler with shapes. Per step (total over the stream / its steps):
  recurrent product  stepwise: the GEMMs of every step (mkldnn linear / mm calls with an operand
                     of B rows); fused: thread 0's brgemm time (cpu_fused_profile)
  element pass       stepwise: the self time of the chunk_forward / window_backward ops (their
                     loop: the per-step pointwise pass); fused: thread 0's element pass
  barrier            fused only: thread 0's wait at the team barrier (load imbalance + sync)
  window GEMMs       the GEMMs over the whole chunk or window (input projection, dW_ih, dW_hh,
                     dx): the other GEMM calls
  transposes         the operands those GEMMs need transposed (tbptt::transpose, copies)
  other              the rest (copies, allocation, autograd, Python, the pack of W_hh)
Times under the profiler run a little slower than without it; the split is what to compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import baselines as bl  # noqa: E402

GEMM_OPS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
OUR_LOOPS = ("tbptt::chunk_forward", "tbptt::window_backward")
COLUMNS = ("recurrent product", "element pass", "barrier", "window GEMMs", "transposes", "other")


PATHS = (("stepwise", "before (stepwise)"), ("auto", "after (auto)"))


def split(case, backend, repeats=5):
    """{path: us per step of each column, and the total}: the median of `repeats` profiled
    passes per path, column by column, the paths' passes alternating."""
    runners = {}
    for path, _ in PATHS:
        backend.set_cpu_path(path)
        runners[path] = bl.make_runner("ours", bl.Workload(case))
        runners[path].run()  # warm-up: packs, oneDNN primitives, allocator
    passes = {path: [] for path, _ in PATHS}
    for _ in range(repeats):
        for path, _ in PATHS:
            backend.set_cpu_path(path)
            passes[path].append(one_pass(case, path, backend, runners[path]))
    return {path: {k: statistics.median(p[k] for p in done) for k in done[0]}
            for path, done in passes.items()}


def one_pass(case, path, backend, runner):
    backend.cpu_fused_profile(path == "auto")  # clear; time the fused phases on the next run
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        runner.run()
        total = time.perf_counter() - t0
    fused = backend.cpu_fused_profile(False)
    parts = dict.fromkeys(COLUMNS, 0.0)
    for event in prof.events():
        shapes = event.input_shapes or []
        if event.name in GEMM_OPS:
            # a step's product has an operand of B rows ([B, H] @ W, or W @ [B, H]^T in
            # the transposed form gemm_cpu.cpp uses for tall weights); a window's has L*B
            per_step = any(len(shape) == 2 and shape[0] == case.B for shape in shapes)
            parts["recurrent product" if per_step else "window GEMMs"] += event.self_cpu_time_total
        elif event.name in OUR_LOOPS:
            parts["element pass"] += event.self_cpu_time_total
        elif event.name in ("tbptt::transpose", "aten::copy_"):
            parts["transposes"] += event.self_cpu_time_total
    parts = {k: v * 1e-6 for k, v in parts.items()}  # profiler us -> s
    if fused["forward_layers"] > 0:  # the fused layers ran inside our ops: their self time, split
        inside = parts["element pass"]
        parts["recurrent product"] += fused["recurrent_product"]
        parts["barrier"] = fused["barrier"]
        parts["element pass"] = fused["element_pass"]
        # what our ops did besides the team's phases (pack, copies, setup) goes to "other"
        parts["other"] = inside - fused["recurrent_product"] - fused["barrier"] - fused["element_pass"]
    parts["other"] += total - sum(parts.values())
    per_step = {k: v / case.n * 1e6 for k, v in parts.items()}
    per_step["total"] = total / case.n * 1e6
    per_step["fused_ran"] = float(fused["forward_layers"] > 0)
    return per_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--H", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--k2", type=int, default=64, help="64: BPTT(k,k); 128: TBPTT(k,2k)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from tbptt_cuda import _backend
    backend = _backend.load()
    if not backend.cpu_fused_compiled():
        print("profile_cpu_step: this build has no fused CPU layers", file=sys.stderr)
        return 1
    print(bl.header_line(bl.machine_info()))
    print(f"torch threads {torch.get_num_threads()}; us per step under torch.profiler, forward + "
          f"backward, float32, B=32, I=H, chunks of 64, k2={a.k2}\n")
    head = ["H", "path", "total"] + list(COLUMNS)
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    rows = []
    try:
        for H in a.H:
            case = bl.Case("cpu", "f32", H, 32, 64, a.k2, 256)
            by_path = split(case, backend)
            for path, name in PATHS:
                per_step = by_path[path]
                if path == "auto":
                    name += ": fused" if per_step["fused_ran"] > 0.5 else ": stepwise (H > 512)"
                rows.append(dict(H=H, path=name, **per_step))
                cells = [f"{per_step['total']:.1f}"] + [
                    f"{per_step[c]:.1f} ({per_step[c] / per_step['total']:.0%})" for c in COLUMNS]
                print(f"| {H} | {name} | " + " | ".join(cells) + " |", flush=True)
    finally:
        backend.set_cpu_path("auto")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"threads": torch.get_num_threads(), "k2": a.k2,
                                            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
