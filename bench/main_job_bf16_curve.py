"""Issue 19, item 2: the main job's learning curve in bfloat16 against float32 on the CPU.

The main job is ``python -m tbptt_cuda.demo`` (``make run``): the character LSTM language model
of tbptt_cuda/demo/lm.py, TBPTT(32, 64), hidden 256, batch 32, Adam 3e-3, clip 1.0, on this
Python's standard-library sources. This script runs it twice through ``tbptt_cuda.demo.main``
(the demo's own code, not a copy) on the CPU, with the same seed, data, threads and number of
updates: once in float32 and once with ``--amp`` (torch.autocast("cpu", dtype=torch.bfloat16):
float32 parameters, gradients and Adam; bf16 forward). Both runs score the held-out files
before training and every ``--eval-every`` updates (``lm --eval-every``), each in its own
precision, and the table compares the held-out bits per character at the same updates:

    python bench/main_job_bf16_curve.py [--updates 3000] [--eval-every 250] [--minutes M]
                                        [--threads N] [--bar 0.02] [--out DIR] [demo flags ...]

Any other flag goes to the demo as is (e.g. ``--hidden 64 --max-chars 200000`` for a smoke
run; not --amp, --device, --steps, --minutes, --eval-every, --threads, --seed or --out, which
this script sets). ``--minutes`` caps each run's wall time (default: none, the updates decide);
when the float32 run stops on it, the bf16 run is given the float32 run's number of updates (if
the bf16 run is cut too, only the updates both runs evaluated are compared).
Each run writes its lm_summary.json (and sample, plot) under DIR/float32 and DIR/bf16; the table
and the comparison go to DIR/main_job_bf16_curve.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402

from cpu_bf16_step import header  # noqa: E402 - CPU model, ISA, torch, commit, fused CPU paths
from tbptt_cuda import demo  # noqa: E402
from tbptt_cuda.demo.common import _auto_threads  # noqa: E402

SET_HERE = ("--amp", "--device", "--steps", "--minutes", "--eval-every", "--threads", "--seed", "--out",
            "--eval-seconds")
NO_LIMIT_MINUTES = 1e6  # the demo's --minutes must be > 0: "no limit" is a very long one


def parse(argv):
    parser = argparse.ArgumentParser(
        description="The main job (python -m tbptt_cuda.demo) in float32 and with --amp (bfloat16) on the CPU: "
                    "held-out bits/char at the same updates. Other flags go to the demo.")
    parser.add_argument("--updates", type=int, default=3000, help="updates per run (default 3000)")
    parser.add_argument("--eval-every", type=int, default=250,
                        help="score the held-out files every this many updates (default 250)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time cap per run (default: none); the bf16 run then gets float32's updates")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both runs (default: the cores the load average leaves free, "
                             "chosen once)")
    parser.add_argument("--seed", type=int, default=0, help="the demo's --seed, both runs (default 0)")
    parser.add_argument("--bar", type=float, default=0.02, help="the bits/char difference allowed (default 0.02)")
    parser.add_argument("--out", default="results/main_job_bf16_curve",
                        help="folder for both runs' outputs and the comparison JSON")
    args, demo_flags = parser.parse_known_args(argv)
    for flag in demo_flags:
        if flag.split("=")[0] in SET_HERE:
            parser.error(f"{flag}: set by this script (use its own --updates, --eval-every, --minutes, --threads, "
                         "--seed, --out)")
    if args.updates < 1 or args.eval_every < 1 or (args.minutes is not None and args.minutes <= 0):
        parser.error("--updates and --eval-every must be >= 1, --minutes > 0")
    return args, demo_flags


def curve(summary):
    """{update: held-out bits/char} of one run, update 0 = before training."""
    points = {0: summary["val_bits_per_char_before"]}
    points.update({int(u): float(v) for u, v in summary["evals"]})
    return points


def run(name, args, demo_flags, threads, updates, amp):
    argv = ["lm", "--device", "cpu", "--threads", str(threads), "--seed", str(args.seed),
            "--steps", str(updates), "--minutes", repr(args.minutes or NO_LIMIT_MINUTES),
            "--eval-every", str(args.eval_every), "--out", str(Path(args.out) / name),
            "--progress", "lines", "--log-every", str(max(1, updates // 10)), *demo_flags]
    if amp:
        argv.append("--amp")
    print(f"\n=== {name}: python -m tbptt_cuda.demo {shlex.join(argv[1:])}", flush=True)
    return argv, demo.main(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, demo_flags = parse(argv)
    threads = args.threads or _auto_threads(None)[0]
    command = "python bench/main_job_bf16_curve.py" + (" " + shlex.join(argv) if argv else "")
    machine = header() + f"\nthreads: {threads}"
    print(command)
    print(machine, flush=True)

    argv32, f32 = run("float32", args, demo_flags, threads, args.updates, amp=False)
    updates16 = args.updates
    if f32["stopped_by"] == "max_seconds":
        updates16 = f32["updates"]
        print(f"float32 stopped by --minutes after {updates16} updates: the bf16 run gets {updates16}")
    argv16, bf16 = run("bf16", args, demo_flags, threads, updates16, amp=True)
    if bf16["updates"] < updates16:
        print(f"bf16 stopped by --minutes after {bf16['updates']} of {updates16} updates: the table compares "
              "the updates both runs evaluated")
    if bf16["amp"] != "bfloat16":
        raise SystemExit(f"the --amp run reports amp={bf16['amp']!r}, not bfloat16")

    c32, c16 = curve(f32), curve(bf16)
    shared = sorted(set(c32) & set(c16))
    rows = [{"update": u, "float32": c32[u], "bf16": c16[u], "difference": c16[u] - c32[u]} for u in shared]
    worst = max(rows, key=lambda r: abs(r["difference"]))
    within = abs(worst["difference"]) <= args.bar

    print("\n" + command)
    print(machine)
    print(f"main job: char LSTM, TBPTT({f32['k1']},{f32['k2']}), hidden {f32['hidden']}, layers {f32['layers']}, "
          f"batch {f32['batch']}, lr {f32['lr']}, seed {args.seed}; {f32['train_chars']:,} training chars, "
          f"{f32['val_chars']:,} held-out chars")
    for name, s in (("float32", f32), ("bf16", bf16)):
        print(f"{name}: {s['updates']} updates ({s['stopped_by']}), {s['train_seconds']:.0f} s training, "
              f"{s['chars_per_second']:,.0f} chars/s, {s['seconds']:.0f} s with evaluations")
    print("\n| update | val bits/char float32 | val bits/char bf16 | bf16 - float32 |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['update']} | {r['float32']:.4f} | {r['bf16']:.4f} | {r['difference']:+.4f} |")
    missing = sorted(set(c32) ^ set(c16))
    if missing:
        print(f"(evaluated in one run only, left out: updates {missing})")
    print(f"\nmax |bf16 - float32| = {abs(worst['difference']):.4f} bits/char at update {worst['update']} "
          f"({len(rows)} points, update 0 = before training): within {args.bar}: {'yes' if within else 'NO'}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "main_job_bf16_curve.json"
    path.write_text(json.dumps({
        "command": command, "machine": machine, "torch": torch.__version__, "threads": threads,
        "demo_argv": {"float32": argv32, "bf16": argv16}, "bar": args.bar, "rows": rows,
        "max_abs_difference": abs(worst["difference"]), "at_update": worst["update"], "within_bar": within,
        "updates": {"float32": f32["updates"], "bf16": bf16["updates"]},
        "train_seconds": {"float32": f32["train_seconds"], "bf16": bf16["train_seconds"]},
        "chars_per_second": {"float32": f32["chars_per_second"], "bf16": bf16["chars_per_second"]},
    }, indent=2) + "\n")
    print(f"wrote {path}")
    return rows, within


if __name__ == "__main__":
    main()
