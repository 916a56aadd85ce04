"""Per-step time of the CUDA paths on a GPU: TruncatedLSTM with tbptt_cuda.set_cuda_path(
"persistent") and ("stepwise") next to nn.LSTM (cuDNN) on the same work, forward and forward +
backward of one chunk of L = 64 steps with k2 = 64 (one layer, I = H), for float32 and
bfloat16, H in {256, 768, 1024}, B in {1, 16, 64}. With --cell gru, TruncatedGRU next to
nn.GRU instead (the GRU's persistent kernels are the LSTM's over G = 3H).

Identical work for all three (the same weights, a random input, never all zero, and the same
upstream gradient dL/dout), the state carried from chunk to chunk (detached for nn.LSTM);
CUDA events around each chunk after a warm-up, the variants interleaved repetition by
repetition, medians. Where the persistent plan does not fit (tbptt_cuda.cuda_plan(H, B,
dtype, cell)["usable"] is False), or a path fails, the table says n/a and why.

    python bench/gpu_paths.py [--out results/gpu_paths.json] [--repeats 15] [--warmup 3]
                              [--cell lstm|gru]
                              [--dtypes float32,bfloat16] [--hidden 256,768,1024] [--batch 1,16,64]
    python bench/gpu_paths.py --smoke   # CPU tensors under tbptt_cuda.emulate_cuda(), H=16,
                                        # B=2, L=4: checks the script runs; timings meaningless
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import device_info, header_line  # noqa: E402

import tbptt_cuda  # noqa: E402
from tbptt_cuda import TruncatedGRU, TruncatedLSTM, emulation  # noqa: E402

VARIANTS = ("persistent", "stepwise", "cudnn")
# per cell: ours, and torch's (cuDNN on a GPU) with the same parameters
MODULES = {"lstm": (TruncatedLSTM, nn.LSTM), "gru": (TruncatedGRU, nn.GRU)}
CELL_NAMES = {"lstm": "LSTM", "gru": "GRU"}


class Timer:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter under emulation."""

    def __init__(self, cuda):
        self.cuda = cuda

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


class Case:
    """One (cell, dtype, H, B): the modules, the data and a runner per variant and mode."""

    def __init__(self, dtype, H, B, L, device, smoke, cell="lstm"):
        self.dtype, self.H, self.B, self.L, self.cell = dtype, H, B, L, cell
        self.smoke = smoke
        gen = torch.Generator().manual_seed(H * 1000 + B)
        ours, reference = MODULES[cell]
        self.reference = reference(H, H, 1).to(device=device, dtype=dtype)
        self.ours = ours(H, H, 1, k2=L, device=device, dtype=dtype)
        self.ours.load_state_dict(self.reference.state_dict())
        self.x = torch.randn(L, B, H, generator=gen).to(device=device, dtype=dtype)
        self.grad = torch.randn(L, B, H, generator=gen).to(device=device, dtype=dtype)
        self.state = {"persistent": None, "stepwise": None, "cudnn": None}
        self.launches = {v: {} for v in VARIANTS}  # --smoke: our kernels each variant launched

    def path_context(self, variant):
        if variant == "cudnn":
            return contextlib.nullcontext()
        if self.smoke:
            return tbptt_cuda.emulate_cuda(path=variant)
        tbptt_cuda.set_cuda_path(variant)
        return contextlib.nullcontext()

    def chunk(self, variant, backward):
        """Forward (and backward) of one chunk, the stream's state carried on."""
        module = self.reference if variant == "cudnn" else self.ours
        for p in module.parameters():
            p.grad = None
        with self.path_context(variant) as stats:
            if variant == "cudnn":  # the state: (h, c) for the LSTM, h for the GRU
                out, state = module(self.x, self.state["cudnn"])
                self.state["cudnn"] = (tuple(s.detach() for s in state) if isinstance(state, tuple)
                                       else state.detach())
            else:
                out, self.state[variant] = module(self.x, self.state[variant])
            if backward:
                out.backward(self.grad)
        if stats is not None:
            for name, count in stats.launches.items():
                self.launches[variant][name] = self.launches[variant].get(name, 0) + count


def unusable_reason(dtype, H, B, smoke, cell="lstm"):
    """Why the persistent path cannot run this shape of `cell`, or None."""
    plan = (emulation.plan(H, B, dtype, cell=cell) if smoke
            else tbptt_cuda.cuda_plan(H, B, dtype, cell=cell))
    return None if plan["usable"] else plan["reason"]


def measure(case, timer, repeats, warmup):
    """{variant: {"fwd": ms, "fwdbwd": ms} or {"error": reason}}: medians over repetitions in
    which the variants take turns."""
    results, runnable = {}, []
    reason = unusable_reason(case.dtype, case.H, case.B, case.smoke, case.cell)
    for variant in VARIANTS:
        if variant == "persistent" and reason:
            results[variant] = {"error": f"no persistent plan: {reason}"}
            continue
        try:  # warm-up: kernels loaded, plans made, cuBLAS/cuDNN picked
            for _ in range(warmup):
                case.chunk(variant, backward=True)
                case.chunk(variant, backward=False)
        except RuntimeError as error:
            results[variant] = {"error": str(error).splitlines()[0][:200]}
            continue
        runnable.append(variant)
        results[variant] = {"fwd": [], "fwdbwd": []}
    for i in range(repeats):
        order = runnable[i % len(runnable):] + runnable[:i % len(runnable)] if runnable else []
        for variant in order:
            results[variant]["fwd"].append(timer(lambda: case.chunk(variant, backward=False)))
            results[variant]["fwdbwd"].append(timer(lambda: case.chunk(variant, backward=True)))
    for variant in runnable:
        for mode in ("fwd", "fwdbwd"):
            results[variant][mode] = statistics.median(results[variant][mode])
    return results


def fmt(value, width=8, digits=1):
    return f"{value:{width}.{digits}f}" if value is not None else f"{'n/a':>{width}}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU tensors under the emulator, tiny shapes: timings meaningless")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--hidden", default=None, help="comma-separated H (default 256,768,1024)")
    parser.add_argument("--batch", default=None, help="comma-separated B (default 1,16,64)")
    parser.add_argument("--steps", type=int, default=None, help="L = k2 (default 64)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--cell", choices=tuple(MODULES), default="lstm",
                        help="TruncatedLSTM next to nn.LSTM (default), or TruncatedGRU next to nn.GRU")
    args = parser.parse_args(argv)

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_paths: no CUDA GPU here (--smoke runs the script under the emulator)")
        return 1
    device = "cpu" if smoke else "cuda"
    hidden = [int(v) for v in (args.hidden or ("16" if smoke else "256,768,1024")).split(",")]
    batch = [int(v) for v in (args.batch or ("2" if smoke else "1,16,64")).split(",")]
    L = args.steps or (4 if smoke else 64)
    repeats = args.repeats or (2 if smoke else 15)
    warmup = args.warmup or (1 if smoke else 3)
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    timer = Timer(cuda=not smoke)

    info = device_info(device)
    rows = []
    try:
        for dtype in dtypes:
            for H in hidden:
                for B in batch:
                    case = Case(dtype, H, B, L, device, smoke, args.cell)
                    results = measure(case, timer, repeats, warmup)
                    row = {"cell": args.cell, "dtype": str(dtype).replace("torch.", ""), "H": H,
                           "B": B, "L": L}
                    for variant, result in results.items():
                        for mode in ("fwd", "fwdbwd"):
                            ms = result.get(mode)
                            row[f"{variant}_{mode}_us"] = ms * 1e3 / L if ms is not None else None
                        row[f"{variant}_error"] = result.get("error")
                        if smoke:
                            row[f"{variant}_launches"] = case.launches[variant]
                    if smoke:  # what ran: ours, and torch's
                        row["modules"] = [type(m).__name__ for m in (case.ours, case.reference)]
                    rows.append(row)
    finally:
        if not smoke:
            tbptt_cuda.set_cuda_path("auto")
    if not smoke:
        info["sm_clock_mhz_after"] = device_info("cuda")["sm_clock_mhz"]  # warm now

    torch_module = MODULES[args.cell][1].__name__
    label = ("MEANINGLESS timings (--smoke: CPU tensors through the SIMT emulator; 'cudnn' is "
             f"nn.{torch_module} on the CPU)" if smoke else "MEASURED")
    of_cell = "" if args.cell == "lstm" else f" of the {CELL_NAMES[args.cell]} (C: nn.{torch_module})"
    print(f"CUDA paths{of_cell}, us/step ({label}) on {header_line(info)}")
    if not smoke:
        print(f"(SM clock after the runs: {info['sm_clock_mhz_after']} MHz)")
    print(f"One layer, I = H, chunks of L = {L} with k2 = {L}; "
          f"{'perf_counter' if smoke else 'CUDA events'}, medians of {repeats} "
          f"interleaved repetitions after {warmup} warm-up; P = persistent, S = stepwise, C = cuDNN")
    print(f"{'dtype':9s} {'H':>5s} {'B':>4s} | {'fwd P':>8s} {'S':>8s} {'C':>8s} {'P/C':>6s} {'S/C':>6s}"
          f" | {'f+b P':>8s} {'S':>8s} {'C':>8s} {'P/C':>6s} {'S/C':>6s}")
    notes = []
    for r in rows:
        cells = []
        for mode in ("fwd", "fwdbwd"):
            p, s, c = (r[f"{v}_{mode}_us"] for v in VARIANTS)
            ratio = lambda a: a / c if a is not None and c else None  # noqa: E731
            r[f"persistent_over_cudnn_{mode}"], r[f"stepwise_over_cudnn_{mode}"] = ratio(p), ratio(s)
            cells.append(f"{fmt(p)} {fmt(s)} {fmt(c)} {fmt(ratio(p), 6, 2)} {fmt(ratio(s), 6, 2)}")
        print(f"{r['dtype']:9s} {r['H']:5d} {r['B']:4d} | {cells[0]} | {cells[1]}")
        for v in VARIANTS:
            if r[f"{v}_error"]:
                notes.append(f"  n/a {v} at {r['dtype']} H={r['H']} B={r['B']}: {r[f'{v}_error']}")
    for note in notes:
        print(note)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"header": info, "cell": args.cell,
                                              "meaningless": smoke, "steps": L,
                                              "repeats": repeats, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
