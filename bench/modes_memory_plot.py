"""Memory against k2 for the three history modes and BPTT(n, n), n = k2: the README's plot.

    python bench/modes_memory_plot.py [--out docs/img/history_modes_memory.png]

History bytes are exact (state.history_nbytes after one chunk of k1 = 32 steps, B = 16, float32);
BPTT(n, n) is nn.LSTM over n = k2 steps, measured as bench/test_bench_memory.py does: the bytes
autograd keeps for backward (saved tensors by storage). H = 256, I in {16, 256}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402

import baselines as bl  # noqa: E402
from tbptt_cuda import TruncatedLSTM  # noqa: E402

MiB = 2**20
K2S = (32, 64, 128, 256, 512, 1024)
MODES = ("activations", "states", "checkpoints")


def history_bytes(I, H, B, k2, mode):
    lstm = TruncatedLSTM(I, H, k2=k2, history=mode)
    _, state = lstm(torch.zeros(32, B, I))
    return state.history_nbytes


def bptt_bytes(I, H, B, n):
    case = bl.Case("cpu", "f32", H, B, n, n, n, 1, 0 if I == H else I)
    return bl.bytes_held_for_backward(bl.make_runner("nn_full", bl.Workload(case)))["held_bytes"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE.parent / "results" / "history_modes_memory.png"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, B = 256, 16
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, I in zip(axes, (16, H)):
        for mode in MODES:
            ax.plot(K2S, [history_bytes(I, H, B, k2, mode) / MiB for k2 in K2S], "o-",
                    label=f'history "{mode}"')
        ax.plot(K2S, [bptt_bytes(I, H, B, n) / MiB for n in K2S], "s--", color="gray",
                label="nn.LSTM BPTT(n, n), n = k2")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("k2 (steps the gradient reaches back)")
        ax.set_title(f"H = {H}, I = {I}, B = {B}, float32", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("bytes kept for backward (MiB)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
