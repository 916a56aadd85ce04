"""``compare``: the language model of :mod:`.lm` (``--cell``: its LSTM or GRU) with
BPTT(k, k), BPTT(k, 2k) and BPTT(n, n) with n as large as a history budget allows, each for the
same wall time from the same initial weights: bits per character, time, memory. A table and a
PNG."""
from __future__ import annotations

import argparse
from typing import Dict

import numpy as np
import torch

from ..train import evaluate, history_nbytes, train_tbptt
from .common import (add_common_args, clip_norm, machine_line, progress_args, say, setup_run, use_history,
                     write_table_results)
from .lm import CharLM, LMData, add_char_lm_args, bits_cross_entropy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``compare``."""
    add_common_args(parser, minutes=1.0, hidden=256, batch=32, per_setting=True)
    add_char_lm_args(parser)
    parser.add_argument("--max-history-mb", type=float, default=64.0,
                        help="history budget that sets n of BPTT(n,n) (default 64 MiB)")
    parser.add_argument("--n", type=int, default=None, help="n of BPTT(n,n) (default: from --max-history-mb)")
    parser.set_defaults(eval_seconds=15.0)


def run_compare(args) -> Dict:
    """Train the language model per schedule for equal time; writes compare.md, .json, .png."""
    device, out = setup_run(args)
    k = args.k1
    say(f"tbptt_cuda demo: {args.cell.upper()} language model, BPTT({k},{k}) vs BPTT({k},{2 * k}) vs "
        f"BPTT(n,n); {args.minutes} min each")
    say(machine_line(device))
    data = LMData(args.text, args.max_chars, args.val_chars, args.seed)
    say(data.describe())
    unigram = data.vocab.unigram_entropy_bits()

    # bytes of history per step of the window, measured on one chunk of k steps
    torch.manual_seed(args.seed)
    probe = CharLM(len(data.vocab), args.hidden, args.layers, args.embed, k2=k, cell=args.cell).to(device)
    probe_chunk = next(iter(data.stream("train", k, args.batch, device)))
    _, probe_state = probe(probe_chunk.inputs, None, reset=probe_chunk.reset)
    per_step = max(1, history_nbytes(probe_state)) / k
    del probe, probe_state
    n = args.n if args.n else max(k, int(args.max_history_mb * 2**20 // per_step) // k * k)
    say(f"history per step of the window: {per_step:,.0f} B; BPTT(n,n) with n = {n} "
        f"(budget {args.max_history_mb} MiB" + (", from --n" if args.n else "") + ")")
    settings = [(k, k), (k, 2 * k), (n, n)]
    torch.manual_seed(args.seed)
    untrained = CharLM(len(data.vocab), args.hidden, args.layers, args.embed, k2=k, cell=args.cell).to(device)
    initial = evaluate(untrained, data.stream("val", k, args.batch, device), bits_cross_entropy, amp=args.amp).loss
    say(f"held-out bits/char before training (same initial weights for every schedule): {initial:.3f}")
    rows = []
    for k1, k2 in settings:
        torch.manual_seed(args.seed)
        model = CharLM(len(data.vocab), args.hidden, args.layers, args.embed, k2=k2, cell=args.cell).to(device)
        use_history(model.rnn, args)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        train_stream = data.stream("train", k1, args.batch, device)
        val_stream = data.stream("val", k, args.batch, device)
        run = train_tbptt(model, optimizer, bits_cross_entropy, train_stream, max_updates=args.steps,
                          max_seconds=60.0 * args.minutes, clip_grad_norm=clip_norm(args), amp=args.amp,
                          eval_chunks=val_stream, eval_every_seconds=args.eval_seconds, cycle=True,
                          **progress_args(args), desc=f"BPTT({k1},{k2})")
        rows.append({"k1": k1, "k2": k2, "val_bits_per_char": run.evals[-1][1], "evals": [(0, initial)] + run.evals,
                     "updates": run.updates, "chars": run.scored_steps, "seconds": run.train_seconds,
                     "chars_per_second": run.scored_steps_per_second, "history_nbytes": run.history_nbytes,
                     "update_seconds": run.update_seconds, "losses": run.losses})
        say(f"BPTT({k1},{k2}): held-out {run.evals[-1][1]:.3f} bits/char, {run.updates} updates, "
            f"{run.scored_steps:,} chars in {run.train_seconds:.0f}s "
            f"({run.scored_steps_per_second:,.0f} chars/s), history {run.history_nbytes:,} B")
    table = ["| schedule | held-out bits/char | updates | characters | seconds | chars/s | history bytes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| BPTT({r['k1']},{r['k2']}) | {r['val_bits_per_char']:.3f} | {r['updates']} | "
                     f"{r['chars']:,} | {r['seconds']:.0f} | {r['chars_per_second']:,.0f} | {r['history_nbytes']:,} |")

    def draw(plt):
        fig, (ax_curve, ax_chars, ax_mem) = plt.subplots(1, 3, figsize=(14, 4))
        for r in rows:
            cumulative = np.cumsum(r["update_seconds"])
            times = [cumulative[u - 1] if u > 0 else 0.0 for u, _ in r["evals"]]
            ax_curve.plot(times, [v for _, v in r["evals"]], "o-", label=f"BPTT({r['k1']},{r['k2']})")
        ax_curve.axhline(unigram, color="tab:gray", ls="--", label="unigram entropy")
        ax_curve.set_xlabel("training seconds")
        ax_curve.set_ylabel("held-out bits per character")
        ax_curve.set_ylim(top=max(unigram + 0.5, 1.05 * min(initial, 2 * unigram)))
        ax_curve.legend(fontsize=8)
        labels = [f"BPTT({r['k1']},{r['k2']})" for r in rows]
        ax_chars.bar(np.arange(len(rows)), [r["chars"] / 1e6 for r in rows], color="tab:orange")
        ax_chars.set_xticks(np.arange(len(rows)))
        ax_chars.set_xticklabels(labels)
        ax_chars.set_ylabel(f"characters trained on in {args.minutes:g} min (millions)")
        ax_mem.bar(np.arange(len(rows)), [r["history_nbytes"] / 2**20 for r in rows], color="tab:green")
        ax_mem.set_xticks(np.arange(len(rows)))
        ax_mem.set_xticklabels(labels)
        ax_mem.set_ylabel("history ring (MiB)")
        return fig

    title = (f"Character {args.cell.upper()} (hidden {args.hidden}, batch {args.batch}), {args.minutes} min per "
             f"schedule, same initial weights and data order; unigram entropy {unigram:.3f} bits/char; "
             f"{machine_line(device)}")
    payload = {"machine": machine_line(device), "cell": args.cell, "unigram_entropy_bits": unigram,
               "val_bits_per_char_before": initial, "minutes_each": args.minutes,
               "rows": [{k_: v for k_, v in r.items() if k_ != "update_seconds"} for r in rows]}
    table_text, plot = write_table_results(out, "compare", title, table, payload, "compare", draw)
    return {"command": "compare", "cell": args.cell, "rows": rows, "table": table_text, "plot": plot, "n": n}
