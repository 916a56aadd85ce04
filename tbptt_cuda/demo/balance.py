"""``balance``: the influence-balancing task of the UORO and ARTBP papers (shared/research/
artbp.md section 3), where truncation fails at any learning rate.

    s_t = A s_{t-1} + theta b,   A = (I + N) / 2 (N: the upper shift),   s_0 = 1 (all ones)
    b = (+1 for the first p units, -1 for the other n - p),   loss_t = (s_t[0] - 1)^2 / 2

theta's input reaches unit 0 after m steps through unit m, so its short-term effect on the
loss has the opposite sign of its long-term one: the gradient truncated at a horizon below
about 45 steps points away from the optimum theta* = -1/6, and TBPTT is repelled (it
diverges); a long enough window, or ARTBP's reweighted random windows, converge.

This is a linear system with one scalar parameter, not an LSTM, so it cannot be run through
TruncatedLSTM; it uses the library's ARTBP (tbptt_cuda.ARTBP: the draws of W and the factors
S(j-1)/S(j) on the carried adjoint) in a truncated backward of its own, written out below in
numpy. One stream, SGD on each chunk's summed loss.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import numpy as np
import torch

from ..artbp import ARTBP
from .common import machine_line, parse_int_list, say, setup_run, write_table_results

THETA_STAR = -1.0 / 6.0


class InfluenceBalancing:
    """The task with n units, the first p driven by +theta, the others by -theta."""

    def __init__(self, n: int = 23, p: int = 10):
        self.n, self.p = n, p
        self.b = np.concatenate([np.ones(p), -np.ones(n - p)])

    def step(self, s: np.ndarray, theta: float) -> np.ndarray:
        """A s + theta b, with A = (I + N) / 2: unit i averages itself and unit i + 1."""
        nxt = 0.5 * s
        nxt[:-1] += 0.5 * s[1:]
        return nxt + theta * self.b

    @staticmethod
    def adjoint_step(delta: np.ndarray) -> np.ndarray:
        """A^T delta: what the adjoint of s_t contributes to s_{t-1}'s."""
        prev = 0.5 * delta
        prev[1:] += 0.5 * delta[:-1]
        return prev

    def train(self, k1: int, k2: int, steps: int, lr: float, theta0: float = 0.5,
              artbp: Optional[ARTBP] = None, record_every: int = 100) -> Dict:
        """TBPTT(k1, k2), or ARTBP with minimum k2, on one stream of `steps` steps.

        Per chunk [a, b): the loss gradient enters at each chunk step, the adjoint runs back W
        steps (W = k2, or ARTBP's draw), multiplied by ARTBP's factor where it crosses from
        distance j-1 to j, and d loss / d theta = sum over the window of b . adjoint.
        Returns theta every `record_every` steps, and the step where |theta| passed 1e6 (None
        if it never did).
        """
        s, theta = np.ones(self.n), theta0
        trajectory, diverged_at, windows = [(0, theta)], None, []
        for a in range(0, steps - k1 + 1, k1):
            zeros = np.zeros(self.n)
            chunk_errors = []
            for _ in range(k1):  # forward over the chunk
                s = self.step(s, theta)
                chunk_errors.append(s[0] - 1.0)
            window = artbp.sample(k2) if artbp is not None else k2
            window = min(window, a + k1)  # not past the stream's start
            scales = artbp.carry_scales(window, k2) if artbp is not None else [1.0] * window
            delta, grad = zeros, 0.0
            for back in range(window):  # distance back + 1 from the chunk's end
                if back > 0:
                    # from distance `back` into distance back + 1: ARTBP's S(j-1)/S(j), j = back + 1
                    delta = self.adjoint_step(delta) * scales[window - 1 - back]
                if back < k1:
                    delta = delta.copy()
                    delta[0] += chunk_errors[k1 - 1 - back]
                grad += float(self.b @ delta)
            windows.append(window)
            theta -= lr * grad
            end = a + k1
            if end % record_every < k1:
                trajectory.append((end, theta))
            if not np.isfinite(theta) or abs(theta) > 1e6:
                diverged_at = end
                break
        return {"trajectory": trajectory, "theta": theta, "diverged_at": diverged_at,
                "mean_window": float(np.mean(windows))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``balance``."""
    parser.add_argument("--out", default="results", help="folder for tables, plots and JSON (default results/)")
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help="first seed of ARTBP's draws (default 0)")
    parser.add_argument("--seeds", type=int, default=5, help="ARTBP runs, one per seed (default 5)")
    parser.add_argument("--steps", type=int, default=40000, help="stream length (default 40000)")
    parser.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate (default 1e-4)")
    parser.add_argument("--k1", type=int, default=8, help="chunk length (default 8)")
    parser.add_argument("--k2s", default="32,40,48", help="TBPTT(k1, k2) schedules to run (default 32,40,48)")
    parser.add_argument("--cap", type=int, default=128, help="ARTBP's cap (default 128)")
    parser.add_argument("--c", type=float, default=1.0 / 24,
                        help="ARTBP's truncated-geometric hazard (default 1/24: a mean window near 32)")
    parser.add_argument("--n", type=int, default=23, help="units (default 23)")
    parser.add_argument("--p", type=int, default=10, help="units driven by +theta (default 10)")


def run_balance(args) -> Dict:
    """TBPTT(k1, k2) for each k2 and ARTBP(k1 .. cap) over seeds; writes balance.md, .json, .png."""
    device, out = setup_run(args, default_threads=1)
    if not 0 < args.p < args.n:
        raise SystemExit(f"--p must be in (0, --n = {args.n}), got {args.p}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    task = InfluenceBalancing(args.n, args.p)
    k1 = args.k1
    say(f"tbptt_cuda demo: influence balancing (n = {args.n}, p = {args.p}), theta* = -1/6, theta_0 = 0.5; "
        f"SGD lr {args.lr}, k1 = {k1}, {args.steps} steps")
    say(machine_line(device))
    runs: List[Dict] = []
    for k2 in parse_int_list(args.k2s, "--k2s"):
        result = task.train(k1, k2, args.steps, args.lr)
        runs.append({"setting": f"TBPTT({k1},{k2})", "seed": None, **result})
        say(f"TBPTT({k1},{k2}): " + _outcome(result))
    for seed in range(args.seed, args.seed + args.seeds):
        artbp = ARTBP(cap=args.cap, c=args.c, generator=torch.Generator().manual_seed(seed))
        result = task.train(k1, k1, args.steps, args.lr, artbp=artbp)
        runs.append({"setting": f"ARTBP({k1},{k1}..{args.cap})", "seed": seed, **result})
        say(f"ARTBP({k1},{k1}..{args.cap}) seed {seed}: " + _outcome(result))
    law = ARTBP(cap=args.cap, c=args.c)
    table = ["| setting | seed | backward steps per update | final theta | |theta - theta*| | outcome |",
             "|---|---:|---:|---:|---:|---|"]
    for r in runs:
        table.append(f"| {r['setting']} | {'-' if r['seed'] is None else r['seed']} | {r['mean_window']:.1f} | "
                     f"{r['theta']:.4g} | {abs(r['theta'] - THETA_STAR):.2g} | {_outcome(r)} |")

    def draw(plt):
        fig, (ax_theta, ax_gap) = plt.subplots(1, 2, figsize=(12, 4))
        palette = iter(["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown"])
        colors = {r["setting"]: ("tab:blue" if r["seed"] is not None else next(palette, "tab:gray")) for r in runs}
        for r in runs:
            steps, thetas = (np.array(v) for v in zip(*r["trajectory"]))
            artbp_run = r["seed"] is not None
            label = r["setting"] if not artbp_run or r["seed"] == args.seed else None
            style = dict(color=colors[r["setting"]], lw=0.8 if artbp_run else 1.6, label=label)
            ax_theta.plot(steps, thetas, **style)
            if r["diverged_at"] is None:
                ax_gap.plot(steps, np.maximum(np.abs(thetas - THETA_STAR), 1e-17), **style)
        ax_theta.axhline(THETA_STAR, color="black", ls="--", lw=1, label="theta* = -1/6")
        ax_theta.set_yscale("symlog", linthresh=1.0)
        ax_theta.set_xlim(0, min(args.steps, 12000))
        ax_theta.set_xlabel("step")
        ax_theta.set_ylabel("theta")
        ax_theta.set_title("theta: TBPTT(8, 32) and (8, 40) are repelled", fontsize=9)
        ax_theta.legend(fontsize=8)
        ax_gap.set_yscale("log")
        ax_gap.set_xlabel("step")
        ax_gap.set_ylabel("|theta - theta*|")
        ax_gap.set_title(f"the runs that converge (ARTBP: {args.seeds} seeds, E[W] = {law.mean_window(k1):.0f})",
                         fontsize=9)
        ax_gap.legend(fontsize=8)
        return fig

    title = (f"Influence balancing (n = {args.n}, p = {args.p}, theta* = -1/6), SGD lr {args.lr}, k1 = {k1}, "
             f"{args.steps} steps; ARTBP: c = {args.c:.4g}, cap {args.cap}, E[W] = {law.mean_window(k1):.1f}, "
             f"largest weight {law.largest_weight(k1):.0f}")
    payload = {"n": args.n, "p": args.p, "lr": args.lr, "k1": k1, "steps": args.steps, "cap": args.cap, "c": args.c,
               "expected_window": law.mean_window(k1), "runs": runs}
    table_text, plot = write_table_results(out, "balance", title, table, payload, "balance", draw)
    return {"command": "balance", "runs": runs, "table": table_text, "plot": plot}


def _outcome(result: Dict) -> str:
    if result["diverged_at"] is not None:
        return f"diverged (|theta| > 1e6 at step {result['diverged_at']})"
    distance = abs(result["theta"] - THETA_STAR)
    return f"{'converged' if distance < 1e-3 else 'not yet converged'}: theta = {result['theta']:.4f}"
