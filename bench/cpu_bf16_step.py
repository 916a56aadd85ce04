"""bfloat16 on the CPU per step (issue 19): ours bf16 / ours float32 and ours bf16 / nn.LSTM
under torch.autocast("cpu", dtype=torch.bfloat16), B = 32, I = H, 64-step chunks, BPTT(k,k)
(forward + backward of each chunk, state carried; nn.LSTM detached between chunks), 1 and 2
threads. Variants run interleaved in one process on identical work (same weights, inputs and
upstream gradients); times are medians over rounds, ratios are ratios of medians.

    python bench/cpu_bf16_step.py [--hidden 256 512] [--threads 1 2] [--rounds 7] [--chunks 4]

Variants: ours_f32 (float32 module), ours_bf16 (the module cast to bfloat16), ours_autocast
(the float32 module under bf16 autocast), nn_f32, nn_autocast (nn.LSTM under bf16 autocast).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")


def cpu_isa():
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model, [f for f in ISA_FLAGS if f in flags]


def header():
    model, isa = cpu_isa()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    import tbptt_cuda
    lines = [f"cpu: {model}; ISA: {' '.join(isa)}; oneDNN ISA: {torch.backends.cpu.get_cpu_capability()}",
             f"torch {torch.__version__}; tbptt_cuda {tbptt_cuda.__file__}; commit {commit}"]
    try:
        from tbptt_cuda import _backend
        lines.append(f"fused CPU: float32 '{_backend.cpu_fused_reason('float32') or 'yes'}', "
                     f"bfloat16 '{_backend.cpu_fused_reason('bfloat16') or 'yes'}'")
    except Exception:  # noqa: BLE001 - older builds
        pass
    return "\n".join(lines)


class Work:
    def __init__(self, H, B=32, L=64, chunks=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.H, self.B, self.L, self.chunks = H, B, L, chunks
        self.x = torch.randn(chunks, L, B, H, generator=g)
        self.dy = torch.randn(chunks, L, B, H, generator=g)
        ref = nn.LSTM(H, H)
        self.state = {k: v.detach().clone() for k, v in ref.state_dict().items()}


def runner(variant, work):
    from tbptt_cuda import TruncatedLSTM
    H = work.H
    if variant.startswith("nn"):
        m = nn.LSTM(H, H)
    else:
        m = TruncatedLSTM(H, H, k2=work.L)
    m.load_state_dict(work.state)
    dtype = torch.bfloat16 if variant == "ours_bf16" else torch.float32
    m = m.to(dtype)
    x, dy = work.x.to(dtype), work.dy.to(dtype)
    autocast = variant.endswith("autocast")

    def run():
        state = None
        for c in range(work.chunks):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                if variant.startswith("nn") and state is not None:
                    state = tuple(s.detach() for s in state)
                out, state = m(x[c], state)
            (out.float() * dy[c].float()).sum().backward()
        return out
    return run


def measure(hidden, threads, rounds, chunks, variants):
    rows = []
    for H in hidden:
        work = Work(H, chunks=chunks)
        runs = {v: runner(v, work) for v in variants}
        for t in threads:
            torch.set_num_threads(t)
            for r in runs.values():  # warm-up
                r()
            times = {v: [] for v in variants}
            for _ in range(rounds):
                for v, r in runs.items():  # interleaved
                    t0 = time.perf_counter()
                    r()
                    times[v].append(time.perf_counter() - t0)
            steps = chunks * work.L
            med = {v: statistics.median(ts) / steps * 1e6 for v, ts in times.items()}
            rows.append((H, t, med))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--variants", nargs="+",
                   default=["ours_f32", "ours_bf16", "ours_autocast", "nn_f32", "nn_autocast"])
    a = p.parse_args(argv)
    print(header())
    print(f"B=32, I=H, 64-step chunks x {a.chunks}, BPTT(k,k), fwd+bwd, {a.rounds} interleaved "
          "rounds, median µs per step")
    rows = measure(a.hidden, a.threads, a.rounds, a.chunks, a.variants)
    cols = a.variants
    print("| H | threads | " + " | ".join(f"{v} µs" for v in cols) +
          " | bf16/f32 | bf16/nn_autocast | autocast/nn_autocast |")
    print("|" + "---|" * (len(cols) + 5))
    for H, t, med in rows:
        def ratio(a_, b_):
            return f"{med[a_] / med[b_]:.2f}" if a_ in med and b_ in med else "-"
        print(f"| {H} | {t} | " + " | ".join(f"{med[v]:.1f}" for v in cols) +
              f" | {ratio('ours_bf16', 'ours_f32')} | {ratio('ours_bf16', 'nn_autocast')} | "
              f"{ratio('ours_autocast', 'nn_autocast')} |")


if __name__ == "__main__":
    main()
