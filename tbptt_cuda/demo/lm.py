"""``lm`` (the default command): a character-level language model (embedding -> TruncatedLSTM ->
linear; ``--cell gru``: TruncatedGRU) trained with TBPTT(k1, k2) on the source files of the
running interpreter's standard library (or any text: ``--text PATH``). Files are laid end to end
in B lanes by :class:`tbptt_cuda.data.SequenceStream` (state reset at each file's start); every
10th file is held out and scored in bits per character (every --eval-seconds, or every
--eval-every N updates: the same points in two runs, e.g. float32 and --amp). Prints the loss
falling, the history bytes and the throughput, and a generated sample at the end. CPU when no GPU
exists.

The corpus, vocabulary, model and data here also serve ``compare``."""
from __future__ import annotations

import argparse
import collections
import os
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

from ..data import SequenceStream
from ..module import TruncatedGRU, TruncatedLSTM
from ..train import evaluate, train_tbptt
from .common import (LN2, add_common_args, amp_dtype_name, clip_norm, machine_line, progress_args, say, setup_run,
                     smooth, try_plot, use_history, write_json)


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


CELLS = {"lstm": TruncatedLSTM, "gru": TruncatedGRU}


class CharLM(nn.Module):
    """embedding -> TruncatedLSTM (``cell="gru"``: TruncatedGRU), as ``rnn`` -> linear.
    tokens [L, B] (int) -> logits [L, B, V]."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int = 1, embed_size: int = 64,
                 dropout: float = 0.0, k2: Optional[int] = None, cell: str = "lstm"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        self.cell = cell
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.rnn = CELLS[cell](embed_size, hidden_size, num_layers=num_layers, dropout=dropout, k2=k2)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, state=None, reset: Optional[torch.Tensor] = None):
        hidden, state = self.rnn(self.embed(tokens.long()), state, reset=reset)
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
    piece = model.rnn.k2 or ids.shape[0]  # a call may not be longer than k2
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


def add_char_lm_args(parser: argparse.ArgumentParser) -> None:
    """The corpus and model flags of the language model (``lm`` and ``compare``)."""
    parser.add_argument("--cell", default="lstm", choices=tuple(CELLS),
                        help="the recurrent layer: lstm = TruncatedLSTM (default), gru = TruncatedGRU "
                             "(nn.GRU's drop-in; on the CPU it runs the stepwise path, the fused CPU "
                             "layers being LSTM-only)")
    parser.add_argument("--text", default=None, help="corpus: a text file or a folder (default: the stdlib sources)")
    parser.add_argument("--max-chars", type=int, default=None, help="cap on training characters (default: all)")
    parser.add_argument("--val-chars", type=int, default=60_000, help="held-out characters scored (default 60000)")
    parser.add_argument("--embed", type=int, default=64, help="embedding size (default 64)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--k1", type=int, default=32, help="steps per chunk = update period (default 32)")
    parser.add_argument("--eval-seconds", type=float, default=30.0, help="score the held-out files every this many seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lm``."""
    add_common_args(parser, minutes=2.5, hidden=256, batch=32)
    add_char_lm_args(parser)
    parser.add_argument("--k2", type=int, default=None, help="gradient window (default 2*k1)")
    parser.add_argument("--eval-every", type=int, default=None, metavar="N",
                        help="score the held-out files every N updates instead of every --eval-seconds: the same "
                             "evaluation points in two runs (e.g. with and without --amp), recorded in "
                             "lm_summary.json's evals")


def run_lm(args) -> Dict:
    """Train and score the language model; writes lm_summary.json, lm_sample.txt, lm_curve.png."""
    device, out = setup_run(args)
    k2 = args.k2 if args.k2 is not None else 2 * args.k1
    say(f"tbptt_cuda demo: character-level {args.cell.upper()} language model, TBPTT(k1={args.k1}, k2={k2})")
    say(machine_line(device))
    data = LMData(args.text, args.max_chars, args.val_chars, args.seed)
    say(data.describe())
    unigram = data.vocab.unigram_entropy_bits()
    unigram_val = data.vocab.unigram_cross_entropy_bits(torch.cat(data.val_ids))
    say(f"unigram entropy of the training characters: {unigram:.3f} bits/char "
        f"(unigram model on the held-out files: {unigram_val:.3f})")
    train_stream = data.stream("train", args.k1, args.batch, device)
    val_stream = data.stream("val", args.k1, args.batch, device)
    say(f"train stream: {train_stream}")
    torch.manual_seed(args.seed)
    model = CharLM(len(data.vocab), args.hidden, num_layers=args.layers, embed_size=args.embed, k2=k2,
                   cell=args.cell).to(device)
    use_history(model.rnn, args)
    parameters = sum(p.numel() for p in model.parameters())
    say(f"model: embedding {args.embed} -> {type(model.rnn).__name__}(hidden {args.hidden}, layers {args.layers}, "
        f"history {model.rnn.history}) -> "
        f"linear {len(data.vocab)}; {parameters:,} parameters; batch {train_stream.batch_size} lanes")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    initial = evaluate(model, val_stream, bits_cross_entropy, amp=args.amp).loss
    say(f"held-out bits/char before training: {initial:.3f}")
    say(f"training for {args.minutes} min" + (f" or {args.steps} updates" if args.steps else "") +
        " (loss = training bits/char, smoothed)")
    run = train_tbptt(model, optimizer, bits_cross_entropy, train_stream, max_updates=args.steps,
                      max_seconds=60.0 * args.minutes, clip_grad_norm=clip_norm(args), amp=args.amp,
                      eval_chunks=val_stream, eval_every=args.eval_every,
                      eval_every_seconds=None if args.eval_every else args.eval_seconds, cycle=True,
                      **progress_args(args),
                      log_every_seconds=None if args.log_every else max(5.0, 60.0 * args.minutes / 12),
                      log=say, desc="lm")
    final = run.evals[-1][1]
    per_step = run.history_nbytes / k2 if k2 else float("nan")
    say(f"held-out bits/char: {initial:.3f} before -> {final:.3f} after {run.updates} updates "
        f"({run.scored_steps:,} characters, {run.train_seconds:.0f}s); unigram entropy {unigram:.3f}")
    say(f"throughput {run.scored_steps_per_second:,.0f} chars/s, {run.updates_per_second:.1f} updates/s; "
        f"history ring {run.history_nbytes:,} bytes ({per_step:,.0f} B per step of the window, k2={k2})")
    sample = generate(model, data.vocab, "def ", 400, temperature=0.7, seed=args.seed)
    say("sample (temperature 0.7):\n" + "-" * 60 + "\n" + sample + "\n" + "-" * 60)
    (out / "lm_sample.txt").write_text(sample + "\n")
    summary = {
        "command": "lm", "cell": args.cell, "k1": args.k1, "k2": k2, "hidden": args.hidden, "layers": args.layers,
        "batch": train_stream.batch_size, "device": str(device), "machine": machine_line(device),
        "corpus": data.corpus_name, "train_chars": data.train_chars, "val_chars": data.val_chars,
        "vocabulary": len(data.vocab), "unigram_entropy_bits": unigram, "unigram_val_bits": unigram_val,
        "seed": args.seed, "lr": args.lr, "amp": amp_dtype_name(args, device),
        "eval_every": args.eval_every, "eval_seconds": None if args.eval_every else args.eval_seconds,
        "val_bits_per_char_before": initial, "val_bits_per_char": final, "evals": run.evals,
        "updates": run.updates, "stopped_by": run.stopped_by, "train_seconds": run.train_seconds,
        "seconds": run.seconds,
        "chars_per_second": run.scored_steps_per_second, "history_nbytes": run.history_nbytes,
        "train_losses_first": run.losses[:10], "train_losses_last": run.losses[-10:],
    }
    write_json(out / "lm_summary.json", summary)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        cumulative = np.cumsum(run.update_seconds)
        ax.plot(cumulative, smooth(run.losses), label="training (smoothed)", color="tab:blue", lw=1)
        times = [0.0] + [cumulative[u - 1] if u > 0 else 0.0 for u, _ in run.evals]
        ax.plot(times, [initial] + [v for _, v in run.evals], "o-", color="tab:red", label="held-out files")
        ax.axhline(unigram, color="tab:gray", ls="--", label=f"unigram entropy {unigram:.2f}")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("bits per character")
        precision = f", {summary['amp']} autocast" if summary["amp"] else ""
        ax.set_title(f"char {args.cell.upper()}, TBPTT({args.k1},{k2}), H={args.hidden}, {device}{precision}", fontsize=10)
        ax.legend()
        return fig

    summary["plot"] = try_plot("lm", draw, out / "lm_curve.png")
    say(f"wrote {out / 'lm_summary.json'}, {out / 'lm_sample.txt'}" +
        (f", {summary['plot']}" if summary["plot"] else ""))
    summary["losses"] = run.losses
    return summary
