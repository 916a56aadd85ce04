"""Peak resident memory of one variant's pass over a stream, in this (fresh) process.

    python bench/peak_rss.py CASE_ID VARIANT      e.g. cpu-f32-H256-B16-k32-k2_64-n10000 ours

Builds the workload (weights, input stream), warms nothing up, resets the kernel's high-water
mark (/proc/self/clear_refs, 5) after setup, runs the stream once and prints one JSON line:
rss_setup_bytes (resident after setup), rss_peak_bytes (high-water mark during the run) and
rss_peak_increment_bytes (their difference: what the run itself needed at its peak).
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # baselines; tbptt_cuda built in place

import baselines as bl  # noqa: E402


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)


def _reset_hwm():
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    case, variant = bl.Case.from_id(argv[0]), argv[1]
    wl = bl.Workload(case)
    runner = bl.make_runner(variant, wl)
    gc.collect()
    setup = _status("VmRSS")
    reset = _reset_hwm()
    hwm0 = _status("VmHWM")
    runner.run()
    peak = _status("VmHWM")
    incr = peak - setup if (reset or peak > hwm0) else None  # unknown if HWM stayed set
    res = dict(case=case.id, variant=variant, rss_setup_bytes=setup, rss_peak_bytes=peak,
               rss_peak_increment_bytes=incr, hwm_reset=reset, hwm_after_reset_bytes=hwm0)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
