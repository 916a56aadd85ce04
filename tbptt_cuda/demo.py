"""Demos of TBPTT(k1, k2) with TruncatedLSTM: ``python -m tbptt_cuda.demo [lm|memory|compare]``.

``lm`` (the default)
    A character-level language model (embedding -> TruncatedLSTM -> linear) trained with
    TBPTT(k1, k2) on the source files of the running interpreter's standard library (or any
    text: ``--text PATH``). Files are laid end to end in B lanes by
    :class:`tbptt_cuda.data.SequenceStream` (state reset at each file's start); every 10th
    file is held out and scored in bits per character. Prints the loss falling, the history
    bytes and the throughput, and a generated sample at the end. CPU when no GPU exists.
``memory``
    A synthetic long-dependency task: the input is a stream of random bits and the target at
    step t is the input d steps earlier. Trained with BPTT(k, k) (k < d: the gradient never
    spans the delay) and BPTT(k, k2) for k2 around and above d, at equal k1 = k. Accuracy on a
    held-out stream and history bytes per setting: a table and a PNG.
``compare``
    The language model with BPTT(k, k), BPTT(k, 2k) and BPTT(n, n) with n as large as a
    history budget allows, each for the same wall time from the same initial weights:
    bits per character, time, memory. A table and a PNG.

Every result goes to ``--out`` (default ``results/``); plots need matplotlib (optional: skipped
with a message when it is missing). ``--steps``/``--minutes``/``--hidden`` etc. shrink a run.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import SequenceStream
from .train import evaluate, history_nbytes, train_tbptt

COMMANDS = ("lm", "memory", "compare")
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------
# shared


def _print(*args):
    print(*args, flush=True)


def _pick_device(name: Optional[str]) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def _machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        where = f"CPU {platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''}"
    return (f"device {device} ({where}); torch {torch.__version__}; python "
            f"{platform.python_version()}; {os.cpu_count()} cores")


def _try_plot(what: str, draw, path: Path) -> Optional[str]:
    """If matplotlib is installed, ``draw(plt)`` returns a figure, saved to ``path`` (PNG) and
    closed; returns the path. Else says the plot was skipped and returns None."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        _print(f"matplotlib is not installed: skipping the {what} plot (pip install matplotlib)")
        return None
    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


# ----------------------------------------------------------------------------------------
# corpus


SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings",
                       "pydoc_data"}


def stdlib_source_files() -> List[Path]:
    """The .py files of this interpreter's standard library, sorted; test suites, installed
    packages and generated files (codec tables in encodings/, pydoc_data/topics.py) left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_STDLIB_DIRS)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    if not files:
        raise SystemExit(f"no .py files found under the standard library folder {root}: use --text PATH")
    return files


def load_documents(text: Optional[str]) -> List[Tuple[str, str]]:
    """(name, text) documents: the stdlib sources, or ``text`` — a file (cut at line ends into
    at least 20 pieces of at most about 20,000 characters) or a folder (every file in it)."""
    if text is None:
        paths = stdlib_source_files()
    else:
        path = Path(text)
        if path.is_dir():
            paths = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            body = path.read_text(encoding="utf-8", errors="replace")
            docs, start = [], 0
            piece = max(200, min(20000, len(body) // 20))
            while start < len(body):
                stop = body.find("\n", start + piece)
                stop = len(body) if stop < 0 else stop + 1
                docs.append((f"{path.name}[{start}:{stop}]", body[start:stop]))
                start = stop
            return docs
        else:
            raise SystemExit(f"--text {text}: no such file or folder")
    docs = []
    for p in paths:
        try:
            docs.append((str(p), p.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return [d for d in docs if len(d[1]) >= 2]


class CharVocabulary:
    """Characters seen at least ``min_count`` times in the training text; id 0 = anything else."""

    UNKNOWN = "\N{REPLACEMENT CHARACTER}"

    def __init__(self, texts: Sequence[str], min_count: int = 5):
        counts = collections.Counter()
        for t in texts:
            counts.update(t)
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        self.chars = [self.UNKNOWN] + kept
        self._table = np.zeros(0x110000, dtype=np.int16)
        for i, c in enumerate(kept, start=1):
            self._table[ord(c)] = i
        freq = np.zeros(len(self.chars))
        for c, n in counts.items():
            freq[self._table[ord(c)]] += n
        self.frequencies = freq / freq.sum()

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """ids int16 [len(text)]"""
        points = np.frombuffer(text.encode("utf-32-le", errors="replace"), dtype=np.uint32)
        return torch.from_numpy(self._table[points].copy())

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def unigram_entropy_bits(self) -> float:
        """Entropy of the training characters' frequency distribution, bits per character."""
        p = self.frequencies[self.frequencies > 0]
        return float(-(p * np.log2(p)).sum())

    def unigram_cross_entropy_bits(self, ids: torch.Tensor) -> float:
        """Bits per character of the unigram (frequency) model on ``ids``: the no-context bar."""
        p = np.maximum(self.frequencies, 1e-12)
        return float(-np.log2(p[ids.long().numpy()]).mean())


class CharLM(nn.Module):
    """embedding -> TruncatedLSTM -> linear. tokens [L, B] (int) -> logits [L, B, V]."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int = 1, embed_size: int = 64,
                 dropout: float = 0.0, k2: Optional[int] = None):
        super().__init__()
        from .module import TruncatedLSTM

        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = TruncatedLSTM(embed_size, hidden_size, num_layers=num_layers, dropout=dropout, k2=k2)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, state=None, reset: Optional[torch.Tensor] = None):
        hidden, state = self.lstm(self.embed(tokens.long()), state, reset=reset)
        return self.head(hidden), state


def bits_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in bits: logits [n, V], targets [n] -> scalar (bits per character)."""
    return F.cross_entropy(logits, targets.long()) / LN2


@torch.no_grad()
def generate(model: CharLM, vocab: CharVocabulary, prompt: str, length: int, temperature: float = 0.8,
             seed: int = 0) -> str:
    """Sample ``length`` characters after ``prompt`` (one step per call, state carried)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if not prompt:
        raise ValueError("prompt must hold at least one character")
    ids = vocab.encode(prompt).long().to(device)[:, None]  # [P, 1]
    piece = model.lstm.k2 or ids.shape[0]  # a call may not be longer than k2
    state = None
    for start in range(0, ids.shape[0], piece):
        logits, state = model(ids[start:start + piece], state)
    produced = []
    for _ in range(length):
        probs = torch.softmax(logits[-1, 0].float().cpu() / max(temperature, 1e-4), dim=-1)
        probs[0] = 0.0  # never emit the unknown-character id
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        produced.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    model.train(was_training)
    return prompt + vocab.decode(produced)


class LMData:
    """Training and held-out streams of a character corpus (inputs = text[:-1], targets = text[1:])."""

    def __init__(self, text: Optional[str], max_train_chars: Optional[int], max_val_chars: int,
                 seed: int, holdout_every: int = 10):
        t0 = time.perf_counter()
        docs = load_documents(text)
        if len(docs) < 2:
            raise SystemExit("the corpus needs at least 2 documents (one to train on, one held out)")
        held_out = {i for i in range(len(docs)) if i % holdout_every == holdout_every - 1} or {len(docs) - 1}
        held = [d for i, d in enumerate(docs) if i in held_out]
        train = [d for i, d in enumerate(docs) if i not in held_out]
        rng = random.Random(seed)
        rng.shuffle(train)
        rng.shuffle(held)
        self.train_docs = _cap(train, max_train_chars)
        # at most a tenth of the held-out budget per file, so that ten files or more are scored
        per_file = max(2, max_val_chars // 10)
        self.val_docs = _cap([(name, text[:per_file]) for name, text in held], max_val_chars)
        self.vocab = CharVocabulary([t for _, t in self.train_docs])
        self.train_ids = [self.vocab.encode(t) for _, t in self.train_docs]
        self.val_ids = [self.vocab.encode(t) for _, t in self.val_docs]
        self.train_chars = sum(len(t) for _, t in self.train_docs)
        self.val_chars = sum(len(t) for _, t in self.val_docs)
        self.corpus_name = "the Python standard library sources of " + sys.executable if text is None else text
        self.load_seconds = time.perf_counter() - t0

    def stream(self, split: str, k1: int, batch_size: int, device) -> SequenceStream:
        """Files end to end in ``batch_size`` lanes. Held-out files are first cut into at most
        about ``batch_size`` pieces (by length) so that scoring runs the lanes in parallel."""
        ids = self.train_ids if split == "train" else self.val_ids
        if split != "train":
            total = sum(s.shape[0] for s in ids)
            pieces = []
            for s in ids:
                count = max(1, min(batch_size * s.shape[0] // total, s.shape[0] // (2 * k1)))
                pieces.extend(s.tensor_split(count))
            ids = pieces
        ids = [s for s in ids if s.shape[0] >= 2]
        batch_size = min(batch_size, len(ids))
        return SequenceStream([s[:-1] for s in ids], k1, batch_size, targets=[s[1:] for s in ids], device=device,
                              balance=True)

    def describe(self) -> str:
        return (f"corpus: {self.corpus_name}\n"
                f"  train {len(self.train_docs)} files, {self.train_chars:,} chars; held out "
                f"{len(self.val_docs)} files, {self.val_chars:,} chars; vocabulary {len(self.vocab)} "
                f"characters; loaded in {self.load_seconds:.1f}s")


def _cap(docs, max_chars):
    if max_chars is None:
        return docs
    kept, total = [], 0
    for name, text in docs:
        if total >= max_chars:
            break
        text = text[: max_chars - total]
        if len(text) >= 2:
            kept.append((name, text))
            total += len(text)
    if not kept:
        raise SystemExit("the character cap left no document: raise --max-chars / --val-chars")
    return kept


# ----------------------------------------------------------------------------------------
# lm


def _add_common(parser: argparse.ArgumentParser, minutes: Optional[float], hidden: int, batch: int,
                per_setting: bool = False, steps: Optional[int] = None, threads: str = "") -> None:
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
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (plain log lines only)")


def _add_lm_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", default=None, help="corpus: a text file or a folder (default: the stdlib sources)")
    parser.add_argument("--max-chars", type=int, default=None, help="cap on training characters (default: all)")
    parser.add_argument("--val-chars", type=int, default=60_000, help="held-out characters scored (default 60000)")
    parser.add_argument("--embed", type=int, default=64, help="embedding size (default 64)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--k1", type=int, default=32, help="steps per chunk = update period (default 32)")
    parser.add_argument("--eval-seconds", type=float, default=30.0, help="score the held-out files every this many seconds")


def _check_args(args) -> None:
    for name in ("hidden", "batch", "k1", "embed", "layers", "val_chars", "delay", "k"):
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


def _setup(args, default_threads: Optional[int] = None) -> Tuple[torch.device, Path]:
    _check_args(args)
    device = _pick_device(args.device)
    if device.type == "cpu":
        if args.threads:
            threads, why = args.threads, "--threads"
        else:
            threads, why = _auto_threads(default_threads)
        torch.set_num_threads(threads)
        _print(f"CPU threads: {threads} — {why}; set with --threads")
    if args.amp and device.type != "cuda":
        raise SystemExit("--amp needs CUDA; this run is on " + str(device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def run_lm(args) -> Dict:
    device, out = _setup(args)
    k2 = args.k2 if args.k2 is not None else 2 * args.k1
    _print(f"tbptt_cuda demo: character-level LSTM language model, TBPTT(k1={args.k1}, k2={k2})")
    _print(_machine_line(device))
    data = LMData(args.text, args.max_chars, args.val_chars, args.seed)
    _print(data.describe())
    unigram = data.vocab.unigram_entropy_bits()
    unigram_val = data.vocab.unigram_cross_entropy_bits(torch.cat(data.val_ids))
    _print(f"unigram entropy of the training characters: {unigram:.3f} bits/char "
           f"(unigram model on the held-out files: {unigram_val:.3f})")
    train_stream = data.stream("train", args.k1, args.batch, device)
    val_stream = data.stream("val", args.k1, args.batch, device)
    _print(f"train stream: {train_stream}")
    torch.manual_seed(args.seed)
    model = CharLM(len(data.vocab), args.hidden, num_layers=args.layers, embed_size=args.embed, k2=k2).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    _print(f"model: embedding {args.embed} -> TruncatedLSTM(hidden {args.hidden}, layers {args.layers}) -> "
           f"linear {len(data.vocab)}; {parameters:,} parameters; batch {train_stream.batch_size} lanes")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    initial = evaluate(model, val_stream, bits_cross_entropy).loss
    _print(f"held-out bits/char before training: {initial:.3f}")
    _print(f"training for {args.minutes} min" + (f" or {args.steps} updates" if args.steps else "") +
           " (loss = training bits/char, smoothed)")
    run = train_tbptt(model, optimizer, bits_cross_entropy, train_stream, max_updates=args.steps,
                      max_seconds=60.0 * args.minutes, clip_grad_norm=args.clip or None, amp=args.amp,
                      eval_chunks=val_stream, eval_every_seconds=args.eval_seconds, cycle=True,
                      progress=not args.no_progress, log_every_seconds=max(5.0, 60.0 * args.minutes / 12),
                      log=_print, desc="lm")
    final = run.evals[-1][1]
    per_step = run.history_nbytes / k2 if k2 else float("nan")
    _print(f"held-out bits/char: {initial:.3f} before -> {final:.3f} after {run.updates} updates "
           f"({run.scored_steps:,} characters, {run.train_seconds:.0f}s); unigram entropy {unigram:.3f}")
    _print(f"throughput {run.scored_steps_per_second:,.0f} chars/s, {run.updates_per_second:.1f} updates/s; "
           f"history ring {run.history_nbytes:,} bytes ({per_step:,.0f} B per step of the window, k2={k2})")
    sample = generate(model, data.vocab, "def ", 400, temperature=0.7, seed=args.seed)
    _print("sample (temperature 0.7):\n" + "-" * 60 + "\n" + sample + "\n" + "-" * 60)
    (out / "lm_sample.txt").write_text(sample + "\n")
    summary = {
        "command": "lm", "k1": args.k1, "k2": k2, "hidden": args.hidden, "layers": args.layers,
        "batch": train_stream.batch_size, "device": str(device), "machine": _machine_line(device),
        "corpus": data.corpus_name, "train_chars": data.train_chars, "val_chars": data.val_chars,
        "vocabulary": len(data.vocab), "unigram_entropy_bits": unigram, "unigram_val_bits": unigram_val,
        "val_bits_per_char_before": initial, "val_bits_per_char": final, "evals": run.evals,
        "updates": run.updates, "train_seconds": run.train_seconds, "seconds": run.seconds,
        "chars_per_second": run.scored_steps_per_second, "history_nbytes": run.history_nbytes,
        "train_losses_first": run.losses[:10], "train_losses_last": run.losses[-10:],
    }
    _write_json(out / "lm_summary.json", summary)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        cumulative = np.cumsum(run.update_seconds)
        ax.plot(cumulative, _smooth(run.losses), label="training (smoothed)", color="tab:blue", lw=1)
        times = [0.0] + [cumulative[u - 1] if u > 0 else 0.0 for u, _ in run.evals]
        ax.plot(times, [initial] + [v for _, v in run.evals], "o-", color="tab:red", label="held-out files")
        ax.axhline(unigram, color="tab:gray", ls="--", label=f"unigram entropy {unigram:.2f}")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("bits per character")
        ax.set_title(f"char LSTM, TBPTT({args.k1},{k2}), H={args.hidden}, {device}", fontsize=10)
        ax.legend()
        return fig

    summary["plot"] = _try_plot("lm", draw, out / "lm_curve.png")
    _print(f"wrote {out / 'lm_summary.json'}, {out / 'lm_sample.txt'}" +
           (f", {summary['plot']}" if summary["plot"] else ""))
    summary["losses"] = run.losses
    return summary


def _smooth(values: Sequence[float], weight: float = 0.98) -> List[float]:
    """Exponential moving average (for plotting noisy per-update losses)."""
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


# ----------------------------------------------------------------------------------------
# memory


class DelayedCopyModel(nn.Module):
    """bits [L, B] -> one-hot -> TruncatedLSTM -> linear -> logits [L, B, 2]."""

    def __init__(self, hidden_size: int, k2: Optional[int]):
        super().__init__()
        from .module import TruncatedLSTM

        self.lstm = TruncatedLSTM(2, hidden_size, k2=k2)
        self.head = nn.Linear(hidden_size, 2)

    def forward(self, bits, state=None, reset=None):
        hidden, state = self.lstm(F.one_hot(bits.long(), 2).float(), state, reset=reset)
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


def _parse_int_list(text: str, name: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{name} must list integers >= 1, got {text!r}")
    return values


def run_memory(args) -> Dict:
    device, out = _setup(args, default_threads=1)
    d, k = args.delay, args.k
    if k >= d:
        raise SystemExit(f"--k ({k}) must be < --delay ({d}): the task is a dependency longer than the chunk")
    k2_values = _parse_int_list(args.k2s, "--k2s") if args.k2s else sorted({k, d, d + k // 2, d + k, 2 * d})
    for k2 in k2_values:
        if k2 < k:
            raise SystemExit(f"--k2s: every k2 must be >= k1 = {k}, got {k2}")
    _print(f"tbptt_cuda demo: delayed copy, target(t) = input(t - {d}); k1 = {k} for every setting; "
           f"hidden {args.hidden}, batch {args.batch}, lr {args.lr}")
    _print(_machine_line(device))
    _print("a step t is learnable from its own chunk's loss only if t - d lies in the window, i.e. "
           "k2 >= d + (steps from t to the chunk's end); BPTT(k,k) with k < d never spans the delay")
    held_out = DelayedCopyStream(d, args.eval_steps, args.batch, k, args.seed + 12345, device)
    rows = []
    seconds_each = None if args.minutes is None else 60.0 * args.minutes / len(k2_values)
    for k2 in k2_values:
        torch.manual_seed(args.seed)
        model = DelayedCopyModel(args.hidden, k2).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        updates = args.steps
        train = DelayedCopyStream(d, k * updates + d, args.batch, k, args.seed, device)
        before = delayed_copy_accuracy(model, held_out)
        run = train_tbptt(model, optimizer, F.cross_entropy, train, max_updates=updates,
                          max_seconds=seconds_each, clip_grad_norm=args.clip or None, amp=args.amp,
                          progress=not args.no_progress, desc=f"BPTT({k},{k2})")
        accuracy = delayed_copy_accuracy(model, held_out)
        covered = max(0, min(k, k2 - d))  # chunk steps whose source lies inside the window
        rows.append({
            "k1": k, "k2": k2, "delay": d, "accuracy": accuracy, "accuracy_before": before,
            "final_loss": float(np.mean(run.losses[-20:])), "updates": run.updates,
            "seconds": run.train_seconds, "history_nbytes": run.history_nbytes,
            "steps_with_source_in_window": covered, "losses": run.losses,
        })
        _print(f"BPTT({k},{k2}): held-out accuracy {100 * accuracy:.1f}% (chance 50%), final loss "
               f"{rows[-1]['final_loss']:.3f}, {run.updates} updates in {run.train_seconds:.1f}s, "
               f"history {run.history_nbytes:,} B")
    table = ["| schedule | k1 | k2 | delay d | chunk steps with source in window | held-out accuracy | "
             "final train loss | updates | seconds | history bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| BPTT({r['k1']},{r['k2']}) | {r['k1']} | {r['k2']} | {r['delay']} | "
                     f"{r['steps_with_source_in_window']}/{r['k1']} | {100 * r['accuracy']:.1f}% | "
                     f"{r['final_loss']:.3f} | {r['updates']} | {r['seconds']:.1f} | {r['history_nbytes']:,} |")
    table_text = "\n".join(table)
    _print(table_text)
    (out / "memory_task.md").write_text(
        f"Delayed copy (target(t) = input(t-{d}), random bits, chance 50%), hidden {args.hidden}, "
        f"batch {args.batch}, {args.steps} updates max per setting; {_machine_line(device)}\n\n"
        + table_text + "\n")
    _write_json(out / "memory_task.json", {"delay": d, "k1": k, "hidden": args.hidden, "batch": args.batch,
                                           "machine": _machine_line(device), "rows": rows})

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
            ax_curve.plot(_smooth(r["losses"], 0.95), label=label, lw=1)
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

    plot = _try_plot("memory-task", draw, out / "memory_task.png")
    _print(f"wrote {out / 'memory_task.md'}, {out / 'memory_task.json'}" + (f", {plot}" if plot else ""))
    return {"command": "memory", "rows": rows, "table": table_text, "plot": plot}


# ----------------------------------------------------------------------------------------
# compare


def run_compare(args) -> Dict:
    device, out = _setup(args)
    k = args.k1
    _print(f"tbptt_cuda demo: language model, BPTT({k},{k}) vs BPTT({k},{2 * k}) vs BPTT(n,n); "
           f"{args.minutes} min each")
    _print(_machine_line(device))
    data = LMData(args.text, args.max_chars, args.val_chars, args.seed)
    _print(data.describe())
    unigram = data.vocab.unigram_entropy_bits()

    # bytes of history per step of the window, measured on one chunk of k steps
    torch.manual_seed(args.seed)
    probe = CharLM(len(data.vocab), args.hidden, args.layers, args.embed, k2=k).to(device)
    probe_chunk = next(iter(data.stream("train", k, args.batch, device)))
    _, probe_state = probe(probe_chunk.inputs, None, reset=probe_chunk.reset)
    per_step = max(1, history_nbytes(probe_state)) / k
    del probe, probe_state
    n = args.n if args.n else max(k, int(args.max_history_mb * 2**20 // per_step) // k * k)
    _print(f"history per step of the window: {per_step:,.0f} B; BPTT(n,n) with n = {n} "
           f"(budget {args.max_history_mb} MiB" + (", from --n" if args.n else "") + ")")
    settings = [(k, k), (k, 2 * k), (n, n)]
    torch.manual_seed(args.seed)
    untrained = CharLM(len(data.vocab), args.hidden, args.layers, args.embed, k2=k).to(device)
    initial = evaluate(untrained, data.stream("val", k, args.batch, device), bits_cross_entropy).loss
    _print(f"held-out bits/char before training (same initial weights for every schedule): {initial:.3f}")
    rows = []
    for k1, k2 in settings:
        torch.manual_seed(args.seed)
        model = CharLM(len(data.vocab), args.hidden, args.layers, args.embed, k2=k2).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        train_stream = data.stream("train", k1, args.batch, device)
        val_stream = data.stream("val", k, args.batch, device)
        run = train_tbptt(model, optimizer, bits_cross_entropy, train_stream, max_updates=args.steps,
                          max_seconds=60.0 * args.minutes, clip_grad_norm=args.clip or None, amp=args.amp,
                          eval_chunks=val_stream, eval_every_seconds=args.eval_seconds, cycle=True,
                          progress=not args.no_progress, desc=f"BPTT({k1},{k2})")
        rows.append({"k1": k1, "k2": k2, "val_bits_per_char": run.evals[-1][1], "evals": [(0, initial)] + run.evals,
                     "updates": run.updates, "chars": run.scored_steps, "seconds": run.train_seconds,
                     "chars_per_second": run.scored_steps_per_second, "history_nbytes": run.history_nbytes,
                     "update_seconds": run.update_seconds, "losses": run.losses})
        _print(f"BPTT({k1},{k2}): held-out {run.evals[-1][1]:.3f} bits/char, {run.updates} updates, "
               f"{run.scored_steps:,} chars in {run.train_seconds:.0f}s "
               f"({run.scored_steps_per_second:,.0f} chars/s), history {run.history_nbytes:,} B")
    table = ["| schedule | held-out bits/char | updates | characters | seconds | chars/s | history bytes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| BPTT({r['k1']},{r['k2']}) | {r['val_bits_per_char']:.3f} | {r['updates']} | "
                     f"{r['chars']:,} | {r['seconds']:.0f} | {r['chars_per_second']:,.0f} | {r['history_nbytes']:,} |")
    table_text = "\n".join(table)
    _print(table_text)
    (out / "compare.md").write_text(
        f"Character LSTM (hidden {args.hidden}, batch {args.batch}), {args.minutes} min per schedule, same "
        f"initial weights and data order; unigram entropy {unigram:.3f} bits/char; {_machine_line(device)}\n\n"
        + table_text + "\n")
    _write_json(out / "compare.json", {"machine": _machine_line(device), "unigram_entropy_bits": unigram,
                                       "val_bits_per_char_before": initial, "minutes_each": args.minutes,
                                       "rows": [{k_: v for k_, v in r.items() if k_ != "update_seconds"}
                                                for r in rows]})

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

    plot = _try_plot("compare", draw, out / "compare.png")
    _print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}" + (f", {plot}" if plot else ""))
    return {"command": "compare", "rows": rows, "table": table_text, "plot": plot, "n": n}


# ----------------------------------------------------------------------------------------
# entry point


def build_parser(command: str) -> argparse.ArgumentParser:
    prog = "python -m tbptt_cuda.demo" + ("" if command == "lm" else f" {command}")
    if command == "lm":
        parser = argparse.ArgumentParser(prog=prog, description="Character-level LSTM language model with TBPTT(k1, k2).")
        _add_common(parser, minutes=2.5, hidden=256, batch=32)
        _add_lm_args(parser)
        parser.add_argument("--k2", type=int, default=None, help="gradient window (default 2*k1)")
    elif command == "memory":
        parser = argparse.ArgumentParser(prog=prog, description="Delayed-copy task: BPTT(k,k) vs BPTT(k,k2>d).")
        _add_common(parser, minutes=None, hidden=64, batch=32, steps=6000, threads="1: a small model")
        parser.add_argument("--delay", type=int, default=12, help="d: target(t) = input(t - d) (default 12)")
        parser.add_argument("--k", type=int, default=6, help="k1 for every setting, < d (default 6)")
        parser.add_argument("--k2s", default=None, help="comma-separated k2 values (default k, d, d+k/2, d+k, 2d)")
        parser.add_argument("--eval-steps", type=int, default=2000, help="held-out steps per lane (default 2000)")
    elif command == "compare":
        parser = argparse.ArgumentParser(prog=prog, description="BPTT(k,k) vs BPTT(k,2k) vs BPTT(n,n) on the language model.")
        _add_common(parser, minutes=1.0, hidden=256, batch=32, per_setting=True)
        _add_lm_args(parser)
        parser.add_argument("--max-history-mb", type=float, default=64.0,
                            help="history budget that sets n of BPTT(n,n) (default 64 MiB)")
        parser.add_argument("--n", type=int, default=None, help="n of BPTT(n,n) (default: from --max-history-mb)")
        parser.set_defaults(eval_seconds=15.0)
    else:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Parse ``[lm|memory|compare] [flags]`` (lm when no command is given) and run; returns a summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "lm"
    if argv and argv[0] in COMMANDS:
        command = argv.pop(0)
    elif argv and not argv[0].startswith("-"):
        raise SystemExit(f"unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)} (default lm)")
    args = build_parser(command).parse_args(argv)
    if command == "lm":
        return run_lm(args)
    if command == "memory":
        return run_memory(args)
    return run_compare(args)


if __name__ == "__main__":
    main()
