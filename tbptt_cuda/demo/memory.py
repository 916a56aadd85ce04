"""``memory``: a synthetic long-dependency task. The input is a stream of random bits and the
target at step t is the input d steps earlier. Trained with BPTT(k, k) (k < d: the gradient
never spans the delay) and BPTT(k, k2) for k2 around and above d, at equal k1 = k. Accuracy on
a held-out stream and history bytes per setting: a table and a PNG.

``memory --artbp``: TBPTT(k, k2) with k2 < d, which cannot see the delay, against ARTBP with
the same k2 and a cap above d (unbiased up to cap in expectation), and TBPTT(k, cap), over
several seeds, with the backward steps each spends per update: a table and a PNG."""
from __future__ import annotations

import argparse
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..artbp import ARTBP
from ..data import SequenceStream
from ..module import TruncatedLSTM
from ..train import train_tbptt
from .common import (LN2, add_common_args, clip_norm, machine_line, parse_int_list, progress_args, say, setup_run,
                     smooth, use_history, write_table_results)


class DelayedCopyModel(nn.Module):
    """bits [L, B] -> one-hot -> TruncatedLSTM -> linear -> logits [L, B, 2]."""

    def __init__(self, hidden_size: int, k2: Optional[int], artbp: Optional[ARTBP] = None):
        super().__init__()
        self.lstm = TruncatedLSTM(2, hidden_size, k2=k2, artbp=artbp)
        self.head = nn.Linear(hidden_size, 2)
        self.backward_steps = []  # per training update: steps its backward reaches

    def forward(self, bits, state=None, reset=None):
        hidden, state = self.lstm(F.one_hot(bits.long(), 2).float(), state, reset=reset)
        if self.training and torch.is_grad_enabled():
            self.backward_steps.append(state.window)
        return self.head(hidden), state


class DelayedCopyStream:
    """Random bits x [steps] per lane; target y_t = x_{t-delay}. Re-iterable chunks of k1 steps
    whose ``valid`` mask leaves out the first ``delay`` steps (no source yet: not scored)."""

    def __init__(self, delay: int, steps: int, batch: int, k1: int, seed: int, device):
        generator = torch.Generator().manual_seed(seed)
        bits = torch.randint(0, 2, (batch, steps), generator=generator, dtype=torch.int64)
        targets = torch.full_like(bits, -1)
        targets[:, delay:] = bits[:, :-delay]
        self.stream = SequenceStream(bits, k1, batch, targets=targets, device=device)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        for chunk in self.stream:
            yield chunk._replace(valid=chunk.valid & (chunk.targets >= 0))


@torch.no_grad()
def delayed_copy_accuracy(model: nn.Module, stream: DelayedCopyStream) -> float:
    """Share of scored steps whose bit is recalled, over a held-out stream (state carried)."""
    was_training = model.training
    model.eval()
    right, scored_total, state = 0, 0, None
    for chunk in stream:
        logits, state = model(chunk.inputs, state, reset=chunk.reset)
        scored = chunk.valid
        right += int((logits.argmax(-1)[scored] == chunk.targets[scored]).sum())
        scored_total += int(scored.sum())
    model.train(was_training)
    return right / max(scored_total, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``memory``."""
    add_common_args(parser, minutes=None, hidden=64, batch=32, steps=6000, threads="1: a small model")
    parser.add_argument("--delay", type=int, default=12, help="d: target(t) = input(t - d) (default 12)")
    parser.add_argument("--k", type=int, default=6, help="k1 for every setting, < d (default 6)")
    parser.add_argument("--k2s", default=None, help="comma-separated k2 values (default k, d, d+k/2, d+k, 2d)")
    parser.add_argument("--eval-steps", type=int, default=2000, help="held-out steps per lane (default 2000)")
    parser.add_argument("--artbp", action="store_true",
                        help="compare TBPTT(k, k2 < d) with ARTBP of the same k2 and a cap above d, over "
                             "several seeds (gradient clipping off unless --clip: it would bias ARTBP)")
    parser.add_argument("--artbp-k2", type=int, default=None, help="with --artbp: k2, < d (default d - k/2)")
    parser.add_argument("--cap", type=int, default=None, help="with --artbp: ARTBP's cap (default 2d)")
    parser.add_argument("--c", type=float, default=None,
                        help="with --artbp: truncated-geometric hazard (default: the power law, alpha 4, "
                             "mean extra length k2)")
    parser.add_argument("--seeds", type=int, default=3, help="with --artbp: seeds per setting (default 3)")
    parser.add_argument("--memory-budget", action="store_true",
                        help="one history budget for every history mode: each trains with the longest k2 "
                             "whose history fits it")
    parser.add_argument("--budget-kb", type=float, default=None,
                        help="with --memory-budget: history bytes per stream, KiB (default: what "
                             "\"activations\" needs for k2 = d - k/2, short of the delay)")


def run_memory(args) -> Dict:
    """Train one model per k2 on the delayed copy; writes memory_task.md, .json, .png."""
    if args.artbp:
        return run_memory_artbp(args)
    if args.memory_budget:
        return run_memory_budget(args)
    device, out = setup_run(args, default_threads=1)
    d, k = args.delay, args.k
    if k >= d:
        raise SystemExit(f"--k ({k}) must be < --delay ({d}): the task is a dependency longer than the chunk")
    k2_values = parse_int_list(args.k2s, "--k2s") if args.k2s else sorted({k, d, d + k // 2, d + k, 2 * d})
    for k2 in k2_values:
        if k2 < k:
            raise SystemExit(f"--k2s: every k2 must be >= k1 = {k}, got {k2}")
    say(f"tbptt_cuda demo: delayed copy, target(t) = input(t - {d}); k1 = {k} for every setting; "
        f"hidden {args.hidden}, batch {args.batch}, lr {args.lr}")
    say(machine_line(device))
    say("a step t is learnable from its own chunk's loss only if t - d lies in the window, i.e. "
        "k2 >= d + (steps from t to the chunk's end); BPTT(k,k) with k < d never spans the delay")
    held_out = DelayedCopyStream(d, args.eval_steps, args.batch, k, args.seed + 12345, device)
    rows = []
    seconds_each = None if args.minutes is None else 60.0 * args.minutes / len(k2_values)
    for k2 in k2_values:
        torch.manual_seed(args.seed)
        model = DelayedCopyModel(args.hidden, k2).to(device)
        use_history(model.lstm, args)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        updates = args.steps
        train = DelayedCopyStream(d, k * updates + d, args.batch, k, args.seed, device)
        before = delayed_copy_accuracy(model, held_out)
        run = train_tbptt(model, optimizer, F.cross_entropy, train, max_updates=updates,
                          max_seconds=seconds_each, clip_grad_norm=clip_norm(args), amp=args.amp,
                          **progress_args(args), desc=f"BPTT({k},{k2})")
        accuracy = delayed_copy_accuracy(model, held_out)
        covered = max(0, min(k, k2 - d))  # chunk steps whose source lies inside the window
        rows.append({
            "k1": k, "k2": k2, "delay": d, "accuracy": accuracy, "accuracy_before": before,
            "final_loss": float(np.mean(run.losses[-20:])), "updates": run.updates,
            "seconds": run.train_seconds, "history_nbytes": run.history_nbytes,
            "steps_with_source_in_window": covered, "losses": run.losses,
        })
        say(f"BPTT({k},{k2}): held-out accuracy {100 * accuracy:.1f}% (chance 50%), final loss "
            f"{rows[-1]['final_loss']:.3f}, {run.updates} updates in {run.train_seconds:.1f}s, "
            f"history {run.history_nbytes:,} B")
    table = ["| schedule | k1 | k2 | delay d | chunk steps with source in window | held-out accuracy | "
             "final train loss | updates | seconds | history bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| BPTT({r['k1']},{r['k2']}) | {r['k1']} | {r['k2']} | {r['delay']} | "
                     f"{r['steps_with_source_in_window']}/{r['k1']} | {100 * r['accuracy']:.1f}% | "
                     f"{r['final_loss']:.3f} | {r['updates']} | {r['seconds']:.1f} | {r['history_nbytes']:,} |")

    def draw(plt):
        fig, (ax_acc, ax_curve, ax_mem) = plt.subplots(1, 3, figsize=(13, 3.8))
        labels = [f"BPTT({r['k1']},{r['k2']})" for r in rows]
        xs = np.arange(len(rows))
        colors = ["tab:red" if r["steps_with_source_in_window"] == 0 else "tab:blue" for r in rows]
        bars = ax_acc.bar(xs, [100 * r["accuracy"] for r in rows], color=colors)
        for bar, r in zip(bars, rows):
            ax_acc.text(bar.get_x() + bar.get_width() / 2, 100 * r["accuracy"] + 1, f"{100 * r['accuracy']:.1f}%",
                        ha="center", fontsize=8)
        ax_acc.axhline(50, color="black", ls="--", lw=1, label="chance")
        ax_acc.set_ylim(0, 108)
        ax_acc.set_xticks(xs)
        ax_acc.set_xticklabels(labels, fontsize=8)
        ax_acc.set_ylabel("held-out accuracy (%)")
        ax_acc.set_title(f"delay d = {d}, k1 = {k} (red: k2 <= d, the window never spans the delay)", fontsize=9)
        ax_acc.legend(fontsize=8)
        for r, label in zip(rows, labels):
            ax_curve.plot(smooth(r["losses"], 0.95), label=label, lw=1)
        ax_curve.axhline(LN2, color="black", ls="--", lw=1, label="chance (ln 2)")
        ax_curve.set_xlabel("update")
        ax_curve.set_ylabel("training loss (nats, smoothed)")
        ax_curve.set_title("training curves", fontsize=9)
        ax_curve.legend(fontsize=7)
        ax_mem.bar(xs, [r["history_nbytes"] / 1024 for r in rows], color=colors)
        ax_mem.set_xticks(xs)
        ax_mem.set_xticklabels(labels, fontsize=8)
        ax_mem.set_ylabel("history ring (KiB)")
        ax_mem.set_title("memory held for backward", fontsize=9)
        return fig

    title = (f"Delayed copy (target(t) = input(t-{d}), random bits, chance 50%), hidden {args.hidden}, "
             f"batch {args.batch}, {args.steps} updates max per setting; {machine_line(device)}")
    payload = {"delay": d, "k1": k, "hidden": args.hidden, "batch": args.batch, "machine": machine_line(device),
               "rows": rows}
    table_text, plot = write_table_results(out, "memory_task", title, table, payload, "memory-task", draw)
    return {"command": "memory", "rows": rows, "table": table_text, "plot": plot}


def run_memory_artbp(args) -> Dict:
    """TBPTT(k, k2 < d), ARTBP(k2, cap > d) and TBPTT(k, cap) on the delayed copy, over seeds;
    writes memory_artbp.md, .json, .png."""
    device, out = setup_run(args, default_threads=1)
    d, k = args.delay, args.k
    k2 = args.artbp_k2 if args.artbp_k2 is not None else d - k // 2
    cap = args.cap if args.cap is not None else 2 * d
    if not k <= k2 < d:
        raise SystemExit(f"--artbp-k2 must be in [k, d) = [{k}, {d}): short of the delay, got {k2}")
    if cap <= d:
        raise SystemExit(f"--cap must be > --delay ({d}) for ARTBP to reach the delay, got {cap}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    clip = clip_norm(args, default=None)
    law = ARTBP(cap=cap, c=args.c)
    say(f"tbptt_cuda demo: delayed copy d = {d}, k1 = {k}; TBPTT({k},{k2}) against ARTBP(k2={k2}, "
        f"cap={cap}, {'c=' + str(args.c) if args.c else 'power law alpha 4, mean extra length k2'}) "
        f"and TBPTT({k},{cap}); {args.seeds} seeds, hidden {args.hidden}, batch {args.batch}")
    say(f"ARTBP: E[W] = {law.mean_window(k2):.1f} backward steps per update, largest compensation "
        f"{law.largest_weight(k2):.1f}; gradient clipping {'off' if clip is None else clip}")
    say(machine_line(device))
    held_out = DelayedCopyStream(d, args.eval_steps, args.batch, k, args.seed + 12345, device)
    settings = [(f"TBPTT({k},{k2})", k2, False), (f"ARTBP({k},{k2}..{cap})", k2, True),
                (f"TBPTT({k},{cap})", cap, False)]
    rows = []
    for name, setting_k2, use_artbp in settings:
        for seed in range(args.seed, args.seed + args.seeds):
            torch.manual_seed(seed)
            artbp = ARTBP(cap=cap, c=args.c, generator=torch.Generator().manual_seed(seed)) if use_artbp else None
            model = DelayedCopyModel(args.hidden, setting_k2, artbp).to(device)
            use_history(model.lstm, args)
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
            train = DelayedCopyStream(d, k * args.steps + d, args.batch, k, seed, device)
            run = train_tbptt(model, optimizer, F.cross_entropy, train, max_updates=args.steps,
                              max_seconds=None if args.minutes is None else 60.0 * args.minutes / (3 * args.seeds),
                              clip_grad_norm=clip, **progress_args(args), desc=f"{name} seed {seed}")
            accuracy = delayed_copy_accuracy(model, held_out)
            rows.append({"setting": name, "k2": setting_k2, "artbp": use_artbp, "seed": seed,
                         "accuracy": accuracy, "final_loss": float(np.mean(run.losses[-20:])),
                         "mean_backward_steps": float(np.mean(model.backward_steps)),
                         "updates": run.updates, "seconds": run.train_seconds,
                         "history_nbytes": run.history_nbytes, "losses": run.losses})
            say(f"{name} seed {seed}: held-out accuracy {100 * accuracy:.1f}%, mean backward steps per "
                f"update {rows[-1]['mean_backward_steps']:.1f}, {run.updates} updates in {run.train_seconds:.1f}s")
    table = ["| setting | seeds | held-out accuracy per seed | mean accuracy | backward steps per update | "
             "history bytes | seconds per run |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, _, _ in settings:
        group = [r for r in rows if r["setting"] == name]
        table.append(f"| {name} | {len(group)} | " + ", ".join(f"{100 * r['accuracy']:.1f}%" for r in group) +
                     f" | {100 * np.mean([r['accuracy'] for r in group]):.1f}% | "
                     f"{np.mean([r['mean_backward_steps'] for r in group]):.1f} | {group[0]['history_nbytes']:,} | "
                     f"{np.mean([r['seconds'] for r in group]):.1f} |")

    def draw(plt):
        fig, (ax_acc, ax_curve) = plt.subplots(1, 2, figsize=(11, 3.8))
        colors = {"TBPTT(%d,%d)" % (k, k2): "tab:red", "TBPTT(%d,%d)" % (k, cap): "tab:green"}
        for i, (name, _, _) in enumerate(settings):
            group = [r for r in rows if r["setting"] == name]
            color = colors.get(name, "tab:blue")
            ax_acc.scatter([i] * len(group), [100 * r["accuracy"] for r in group], color=color, zorder=3)
            ax_acc.bar(i, 100 * np.mean([r["accuracy"] for r in group]), color=color, alpha=0.35)
            ax_acc.text(i, 103, f"{np.mean([r['mean_backward_steps'] for r in group]):.1f} steps", ha="center",
                        fontsize=8)
            for r in group:
                ax_curve.plot(smooth(r["losses"], 0.97), color=color, lw=0.8,
                              label=name if r is group[0] else None)
        ax_acc.axhline(50, color="black", ls="--", lw=1)
        ax_acc.set_xticks(range(len(settings)))
        ax_acc.set_xticklabels([s[0] for s in settings], fontsize=8)
        ax_acc.set_ylim(0, 110)
        ax_acc.set_ylabel("held-out accuracy (%) per seed")
        ax_acc.set_title(f"delay {d}: k2 = {k2} < d; ARTBP draws W in [{k2}, {cap}]", fontsize=9)
        ax_curve.axhline(LN2, color="black", ls="--", lw=1, label="chance")
        ax_curve.set_xlabel("update")
        ax_curve.set_ylabel("training loss (nats, smoothed)")
        ax_curve.legend(fontsize=7)
        return fig

    title = (f"Delayed copy d = {d}, k1 = {k}: TBPTT with k2 < d against ARTBP of the same k2, {args.seeds} seeds, "
             f"{args.steps} updates each; {machine_line(device)}")
    payload = {"delay": d, "k1": k, "k2": k2, "cap": cap, "c": args.c, "expected_window": law.mean_window(k2),
               "largest_weight": law.largest_weight(k2), "machine": machine_line(device), "rows": rows}
    table_text, plot = write_table_results(out, "memory_artbp", title, table, payload, "memory-artbp", draw)
    return {"command": "memory", "rows": rows, "table": table_text, "plot": plot}


def history_bytes(hidden: int, batch: int, k1: int, k2: int, history: str, device) -> int:
    """The history bytes of a delayed-copy stream with this k2 and history mode."""
    lstm = TruncatedLSTM(2, hidden, k2=k2, history=history, device=device)
    _, state = lstm(torch.zeros(k1, batch, 2, device=device))
    return state.history_nbytes


def longest_k2(budget: int, hidden: int, batch: int, k1: int, history: str, device, most: int) -> Optional[int]:
    """The longest k2 in [k1, most] whose history fits `budget` bytes (None if even k1 does not)."""
    if history_bytes(hidden, batch, k1, k1, history, device) > budget:
        return None
    lo, hi = k1, most
    while lo < hi:  # bytes grow with k2
        mid = (lo + hi + 1) // 2
        if history_bytes(hidden, batch, k1, mid, history, device) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def run_memory_budget(args) -> Dict:
    """The delayed copy under one history budget: each mode trains with the longest k2 it can
    afford; writes memory_budget.md, .json, .png."""
    device, out = setup_run(args, default_threads=1)
    d, k = args.delay, args.k
    most = 4 * d  # enough to span the delay from every step of a chunk, and then some
    budget = (int(args.budget_kb * 1024) if args.budget_kb is not None else
              history_bytes(args.hidden, args.batch, k, d - k // 2, "activations", device))
    say(f"tbptt_cuda demo: delayed copy d = {d}, k1 = {k}, one history budget of {budget / 1024:.0f} KiB per "
        f"stream for every history mode; hidden {args.hidden}, batch {args.batch}, {args.steps} updates each")
    say(machine_line(device))
    rows = []
    for history in ("activations", "states", "checkpoints"):
        k2 = longest_k2(budget, args.hidden, args.batch, k, history, device, most)
        if k2 is None:
            say(f"history {history}: no k2 >= k1 = {k} fits {budget / 1024:.0f} KiB; skipped")
            continue
        torch.manual_seed(args.seed)
        model = DelayedCopyModel(args.hidden, k2).to(device)
        model.lstm.history = history
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        train = DelayedCopyStream(d, k * args.steps + d, args.batch, k, args.seed, device)
        held_out = DelayedCopyStream(d, args.eval_steps, args.batch, k, args.seed + 12345, device)
        run = train_tbptt(model, optimizer, F.cross_entropy, train, max_updates=args.steps,
                          max_seconds=None if args.minutes is None else 20.0 * args.minutes,
                          clip_grad_norm=clip_norm(args), **progress_args(args),
                          desc=f"{history} k2={k2}")
        accuracy = delayed_copy_accuracy(model, held_out)
        rows.append({"history": history, "k2": k2, "history_nbytes": run.history_nbytes, "budget": budget,
                     "accuracy": accuracy, "final_loss": float(np.mean(run.losses[-20:])),
                     "updates": run.updates, "seconds": run.train_seconds, "losses": run.losses,
                     "spans_delay": k2 >= d + k})
        say(f"history {history}: k2 = {k2} fits ({run.history_nbytes / 1024:.0f} KiB), held-out accuracy "
            f"{100 * accuracy:.1f}%, {run.train_seconds:.1f}s")
    table = ["| history | longest k2 in the budget | history KiB | window spans the delay from every step | "
             "held-out accuracy | final train loss | seconds |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['history']} | {r['k2']} | {r['history_nbytes'] / 1024:.0f} | "
                     f"{'yes' if r['spans_delay'] else 'no' if r['k2'] < d else 'partly'} | "
                     f"{100 * r['accuracy']:.1f}% | {r['final_loss']:.3f} | {r['seconds']:.1f} |")

    def draw(plt):
        fig, (ax_acc, ax_curve) = plt.subplots(1, 2, figsize=(11, 3.8))
        xs = np.arange(len(rows))
        colors = ["tab:red" if r["k2"] < d else "tab:blue" for r in rows]
        ax_acc.bar(xs, [100 * r["accuracy"] for r in rows], color=colors)
        for x, r in zip(xs, rows):
            ax_acc.text(x, 100 * r["accuracy"] + 1.5, f"k2 = {r['k2']}", ha="center", fontsize=8)
        ax_acc.axhline(50, color="black", ls="--", lw=1)
        ax_acc.set_xticks(xs)
        ax_acc.set_xticklabels([r["history"] for r in rows], fontsize=8)
        ax_acc.set_ylim(0, 110)
        ax_acc.set_ylabel("held-out accuracy (%)")
        ax_acc.set_title(f"delay {d}, history budget {budget / 1024:.0f} KiB per stream", fontsize=9)
        for r, color in zip(rows, colors):
            ax_curve.plot(smooth(r["losses"], 0.97), color=color, lw=1, label=f"{r['history']} (k2 = {r['k2']})")
        ax_curve.axhline(LN2, color="black", ls="--", lw=1, label="chance")
        ax_curve.set_xlabel("update")
        ax_curve.set_ylabel("training loss (nats, smoothed)")
        ax_curve.legend(fontsize=7)
        return fig

    title = (f"Delayed copy d = {d}, k1 = {k}, history budget {budget / 1024:.0f} KiB per stream; hidden {args.hidden}, "
             f"batch {args.batch}; {machine_line(device)}")
    payload = {"delay": d, "k1": k, "budget": budget, "machine": machine_line(device), "rows": rows}
    table_text, plot = write_table_results(out, "memory_budget", title, table, payload, "memory-budget", draw)
    return {"command": "memory", "rows": rows, "table": table_text, "plot": plot}
