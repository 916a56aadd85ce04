"""What the demo experiments share: printing, device and CPU-thread choice, the machine line,
the common command-line flags and their checks, writing results (table, JSON, plot), smoothing."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ..train import PROGRESS_MODES, _amp_dtype

LN2 = math.log(2.0)


def say(*args):
    """print, flushed at once (the demos' log lines interleave with tqdm's bar, or with the plain
    progress lines when the output is not a terminal)."""
    print(*args, flush=True)


def pick_device(name: Optional[str]) -> torch.device:
    """--device: None or "auto" -> cuda if available, else cpu."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def machine_line(device: torch.device) -> str:
    """One line naming the device, threads, torch, python and cores, for logs and result files."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        where = f"CPU {platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''}"
    return (f"device {device} ({where}); torch {torch.__version__}; python "
            f"{platform.python_version()}; {os.cpu_count()} cores")


def try_plot(what: str, draw, path: Path) -> Optional[str]:
    """If matplotlib is installed, ``draw(plt)`` returns a figure, saved to ``path`` (PNG) and
    closed; returns the path. Else says the plot was skipped and returns None."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"matplotlib is not installed: skipping the {what} plot (pip install matplotlib)")
        return None
    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_json(path: Path, payload: dict) -> None:
    """``payload`` as indented JSON (numpy and torch scalars written as floats)."""
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


def write_table_results(out: Path, stem: str, title: str, table: List[str], payload: dict, plot_name: str,
                        draw) -> Tuple[str, Optional[str]]:
    """An experiment's results: prints the markdown ``table`` (its lines), writes ``stem``.md
    (``title``, a blank line, the table) and ``stem``.json (``payload``), plots ``stem``.png with
    ``draw`` (see :func:`try_plot`) and says what it wrote. Returns (the table's text, the plot's
    path or None)."""
    table_text = "\n".join(table)
    say(table_text)
    markdown, json_path = out / f"{stem}.md", out / f"{stem}.json"
    markdown.write_text(title + "\n\n" + table_text + "\n")
    write_json(json_path, payload)
    plot = try_plot(plot_name, draw, out / f"{stem}.png")
    say(f"wrote {markdown}, {json_path}" + (f", {plot}" if plot else ""))
    return table_text, plot


def add_common_args(parser: argparse.ArgumentParser, minutes: Optional[float], hidden: int, batch: int,
                    per_setting: bool = False, steps: Optional[int] = None, threads: str = "") -> None:
    """The flags every experiment has, with this experiment's defaults (``threads``: how the
    --threads default is described)."""
    parser.add_argument("--out", default="results", help="folder for tables, plots and JSON (default results/)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: " +
                        (threads or "the cores the load average leaves free") + ")")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=minutes,
                        help="training time budget in minutes (default: " +
                        ("no limit" if minutes is None else f"{minutes:g}" + (" per schedule" if per_setting else "")) + ")")
    parser.add_argument("--steps", type=int, default=steps, help="max updates (chunks) per training (default: " +
                        ("no cap" if steps is None else str(steps)) + ")")
    parser.add_argument("--hidden", type=int, default=hidden, help=f"LSTM hidden size (default {hidden})")
    parser.add_argument("--batch", type=int, default=batch, help=f"lanes B (default {batch})")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--clip", type=float, default=None,
                        help="gradient-norm clip (0: off; default 1, off for ARTBP, which clipping would bias)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: the forward under torch.autocast, parameters, gradients and "
                             "Adam in float32; bfloat16 on the CPU, bfloat16 (float16 with a GradScaler where "
                             "the GPU lacks bfloat16) on CUDA")
    parser.add_argument("--history", default="activations", choices=("activations", "states", "checkpoints"),
                        help="what the TruncatedLSTM's (TruncatedGRU's) history stores (default activations; "
                             "states and checkpoints store less and recompute in backward)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="with --history checkpoints: steps between stored states (default sqrt(k2))")
    parser.add_argument("--progress", default="auto", choices=PROGRESS_MODES,
                        help="training progress: a tqdm bar, plain lines (every --log-every updates) or none; "
                             "auto (default): the bar on a terminal, plain lines when the output goes to a "
                             "file or a pipe (make run > log)")
    parser.add_argument("--log-every", type=int, default=None, metavar="N",
                        help="a plain progress line every N updates (default: about 20 lines per training run, "
                             "or one every 10 s when the run is limited by time; lm: 12 over --minutes)")
    parser.add_argument("--no-progress", action="store_true", help="the same as --progress none")


def _check_args(args) -> None:
    """Exit with a message on a flag out of range; flags this command lacks are skipped."""
    for name in ("hidden", "batch", "k1", "embed", "layers", "val_chars", "delay", "k", "log_every", "eval_every"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.minutes is not None and args.minutes <= 0:
        raise SystemExit(f"--minutes must be > 0, got {args.minutes}")
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    if getattr(args, "k2", None) is not None and getattr(args, "k1", None) is not None and args.k2 < args.k1:
        raise SystemExit(f"--k2 ({args.k2}) must be >= --k1 ({args.k1}): a chunk must fit in the gradient window")


def _auto_threads(default_threads: Optional[int]) -> Tuple[int, str]:
    """CPU threads for this run and why: the cores left free by the load average.

    OpenMP threads that find their cores busy spin and wait on each other: on a 2-core machine
    with another process running, 2 threads ran the LSTM 10-100x slower than 1 thread.
    """
    if default_threads is not None:
        return default_threads, "this demo's default: a small model gains nothing from more threads"
    cores = os.cpu_count() or 1
    busy = _busy_cores(cores)
    if busy is None:
        return torch.get_num_threads(), "torch default"
    free = max(1, min(torch.get_num_threads(), int(round(cores - busy))))
    return free, f"{cores} cores, {busy:.1f} busy with other work"


def _busy_cores(cores: int, seconds: float = 0.3) -> Optional[float]:
    """Cores in use by other processes now: from /proc/stat over ``seconds`` (Linux), else the
    1-minute load average; None if neither is available."""
    def sample():
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
        if total1 > total0:
            return cores * (1.0 - (idle1 - idle0) / (total1 - total0))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def setup_run(args, default_threads: Optional[int] = None) -> Tuple[torch.device, Path]:
    """Check the flags, pick the device and CPU threads (and say which), make --out: (device, out)."""
    _check_args(args)
    device = pick_device(args.device)
    if device.type == "cpu":
        if args.threads:
            threads, why = args.threads, "--threads"
        else:
            threads, why = _auto_threads(default_threads)
        torch.set_num_threads(threads)
        say(f"CPU threads: {threads} — {why}; set with --threads")
    if args.amp:
        if device.type not in ("cuda", "cpu"):
            raise SystemExit(f"--amp needs CUDA or the CPU (bfloat16 there); this run is on {device}")
        say(amp_line(args, device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def amp_dtype_name(args, device: torch.device) -> Optional[str]:
    """The dtype --amp runs the forward in on ``device`` ("bfloat16", "float16"), None without --amp."""
    if not getattr(args, "amp", False):
        return None
    return str(_amp_dtype(True, device)).replace("torch.", "")


def amp_line(args, device: torch.device) -> str:
    """What --amp does on ``device``: the autocast dtype, and on the CPU whether the fused
    bfloat16 layers are there."""
    dtype = amp_dtype_name(args, device)
    line = f"mixed precision (--amp): torch.autocast({device.type!r}, dtype=torch.{dtype})"
    if device.type == "cuda":
        return line + (" with a GradScaler" if dtype == "float16" else "")
    from .. import _backend
    reason = _backend.cpu_fused_reason("bfloat16")
    return line + ("; fused bfloat16 CPU layers: yes (even hidden sizes up to 1024)" if not reason else
                   f"; fused bfloat16 CPU layers: no, the stepwise path ({reason})")


def progress_args(args) -> dict:
    """train_tbptt's ``progress`` and ``log_every`` from --progress, --log-every and --no-progress."""
    progress = "none" if getattr(args, "no_progress", False) else getattr(args, "progress", "auto")
    return {"progress": progress, "log_every": getattr(args, "log_every", None)}


def use_history(rnn, args):
    """Sets --history and --checkpoint-every on a TruncatedLSTM or TruncatedGRU; returns it."""
    rnn.history = getattr(args, "history", "activations")
    rnn.checkpoint_every = getattr(args, "checkpoint_every", None)
    return rnn


def clip_norm(args, default: Optional[float] = 1.0) -> Optional[float]:
    """--clip as train_tbptt's clip_grad_norm: None (off) for 0, `default` when not given."""
    clip = default if args.clip is None else args.clip
    return clip or None


def smooth(values: Sequence[float], weight: float = 0.98) -> List[float]:
    """Exponential moving average (for plotting noisy per-update losses)."""
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def parse_int_list(text: str, name: str) -> List[int]:
    """Comma-separated integers, "6,12,18" -> [6, 12, 18]; exits naming the flag ``name`` unless
    every value is an integer >= 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{name} must list integers >= 1, got {text!r}")
    return values
