"""Grid-barrier latency on a GPU: the cost of the one barrier per step the persistent kernels
pay (csrc/cuda/barrier_bench.cuh; research/gpu_persistent.md section 3 assumes 0.5-1.0 us on
an H100, measured nowhere yet).

One cooperative launch runs R grid barriers; the time per barrier is (that launch - the same
launch with no barrier) / R, medians over interleaved CUDA-event timings. "exchange" adds what
the persistent kernels do between barriers: every thread writes a word and after the barrier
reads the word of the same thread of the next block; the words read are checked, so a barrier
that does not order memory fails the run.

    python bench/barrier_latency.py [--blocks 96 128 0] [--threads 256] [--rounds 2000]
                                    [--repeats 20] [--out results/barrier_latency.json]
    python bench/barrier_latency.py --emulated   # the same kernel on the SIMT emulator: the
                                                 # barrier count and the words, no timing
--blocks 0 means the GPU's SM count.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import device_info, header_line  # noqa: E402

MASK32 = (1 << 32) - 1


def expected_sink(blocks, threads, rounds, exchange=True):
    """[blocks, threads] int64: what each thread of barrier_bench_kernel must end with, the sum
    (mod 2^32) over the rounds of the word the same thread of the next block wrote,
    barrier_bench_word(next, t, threads, r) = next * threads + t + r + 1."""
    if not exchange:
        return torch.zeros(blocks, threads, dtype=torch.int64)
    nxt = (torch.arange(blocks, dtype=torch.int64) + 1) % blocks
    words = nxt[:, None] * threads + torch.arange(threads, dtype=torch.int64)[None, :] + 1
    return (rounds * words + rounds * (rounds - 1) // 2) & MASK32


def run_emulated(blocks, threads, rounds, exchange=True):
    """One emulated launch; returns the sink (raises where the launch fails)."""
    from tbptt_cuda import emulation

    return emulation.barrier_bench(blocks, threads, rounds, exchange)


def measure(blocks, threads, rounds, exchange, repeats):
    """One GPU measurement: a dict with us_per_barrier, launch_us, total_us, capacity and
    whether the words read were the expected ones."""
    from tbptt_cuda import _backend

    result = dict(_backend.load().cuda_barrier_latency(blocks, threads, rounds, exchange, repeats))
    sink = result.pop("sink")
    result["words_ok"] = bool(torch.equal(sink, expected_sink(blocks, threads, rounds, exchange)))
    result.update(blocks=blocks, threads=threads, rounds=rounds, exchange=exchange, repeats=repeats)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[96, 128, 0])
    parser.add_argument("--threads", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--emulated", action="store_true",
                        help="run the kernel on the SIMT emulator (checks only, no timing)")
    args = parser.parse_args(argv)

    if args.emulated:
        import tbptt_cuda

        blocks, threads, rounds = 4, 64, 5
        with tbptt_cuda.emulate_cuda(sms=4) as stats:
            sink = run_emulated(blocks, threads, rounds)
        counted = stats.per_kernel.get("barrier_bench", {})
        ok = (torch.equal(sink, expected_sink(blocks, threads, rounds))
              and counted.get("grid_barriers") == rounds and counted.get("launches") == 1)
        print(f"emulated barrier_bench: {blocks} blocks x {threads} threads, {rounds} rounds: "
              f"{counted.get('grid_barriers')} grid barriers counted, words "
              f"{'as expected' if ok else 'WRONG'} (no timing: this is the emulator)")
        return 0 if ok else 1

    if not torch.cuda.is_available():
        print("barrier_latency: no CUDA GPU here (--emulated runs the kernel on the emulator)")
        return 1
    info = device_info("cuda")
    rows = []
    for blocks in args.blocks:
        blocks = blocks or info["sms"]
        for exchange in (False, True):
            rows.append(measure(blocks, args.threads, args.rounds, exchange, args.repeats))
    info["sm_clock_mhz_after"] = device_info("cuda")["sm_clock_mhz"]  # warm now
    print(f"Grid-barrier latency, MEASURED on {header_line(info)}")
    print(f"(SM clock after the runs: {info['sm_clock_mhz_after']} MHz; {args.rounds} barriers "
          f"per launch, medians of {args.repeats} interleaved pairs)")
    print(f"{'blocks':>6} {'threads':>7} {'exchange':>8} {'us/barrier':>10} {'launch us':>9} "
          f"{'capacity':>8}  words")
    for r in rows:
        print(f"{r['blocks']:6d} {r['threads']:7d} {str(r['exchange']):>8} "
              f"{r['us_per_barrier']:10.3f} {r['launch_us']:9.2f} {r['capacity']:8d}  "
              f"{'ok' if r['words_ok'] else 'WRONG'}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"header": info, "rows": rows}, indent=1))
    return 0 if all(r["words_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
