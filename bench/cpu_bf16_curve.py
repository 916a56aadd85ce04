"""bfloat16 against float32 learning curves on the CPU (issue 19, item 2): a byte-level
language model (embedding 64, one TruncatedLSTM layer, linear head) trained with BPTT(k,k) on
text, once in float32 and once under torch.autocast("cpu", dtype=torch.bfloat16) (float32
parameters and Adam), same seed, data and updates; held-out bits per character at the same
updates (the held-out pass in each run's own precision).

    python bench/cpu_bf16_curve.py [--updates 400] [--hidden 256] [--every 100] [--text FILE...]

Text: the given files, else this Python's standard-library sources (deterministic order).
"""
from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from tbptt_cuda import TruncatedLSTM


def corpus(paths, limit):
    if not paths:
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = sorted(p for p in root.glob("*.py"))
    data = bytearray()
    for p in paths:
        data += Path(p).read_bytes()
        if len(data) >= limit:
            break
    return torch.tensor(list(data[:limit]), dtype=torch.long)


class CharLM(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.embed = nn.Embedding(256, 64)
        self.lstm = TruncatedLSTM(64, hidden)
        self.head = nn.Linear(hidden, 256)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def streams(data, batch, length):
    """[n, B] columns: batch contiguous streams of the data."""
    per = data.numel() // batch
    return data[: per * batch].view(batch, per).t().contiguous()


def bits_per_char(model, cols, length, autocast):
    total, count, state = 0.0, 0, None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for a in range(0, cols.shape[0] - length - 1, length):
            x, y = cols[a:a + length], cols[a + 1:a + length + 1]
            logits, state = model(x, state)
            total += F.cross_entropy(logits.float().reshape(-1, 256), y.reshape(-1),
                                     reduction="sum").item()
            count += y.numel()
    return total / count / math.log(2)


def train(autocast, data_train, data_val, hidden, updates, every, batch=32, length=64, seed=0):
    torch.manual_seed(seed)
    model = CharLM(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cols, val = streams(data_train, batch, length), streams(data_val, batch, length)
    curve, state, a, t0 = [], None, 0, time.perf_counter()
    for u in range(1, updates + 1):
        if a + length + 1 > cols.shape[0]:
            a, state = 0, None
        x, y = cols[a:a + length], cols[a + 1:a + length + 1]
        a += length
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if u % every == 0:
            curve.append((u, bits_per_char(model, val, length, autocast)))
    return curve, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--updates", type=int, default=400)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--text", nargs="*", default=None)
    p.add_argument("--seed-noise", action="store_true",
                   help="also a float32 run from another seed: the run-to-run difference")
    a = p.parse_args(argv)
    data = corpus(a.text, 2_200_000)
    train_data, val_data = data[:-200_000], data[-200_000:]
    f32, t32 = train(False, train_data, val_data, a.hidden, a.updates, a.every)
    bf16, t16 = train(True, train_data, val_data, a.hidden, a.updates, a.every)
    other = train(False, train_data, val_data, a.hidden, a.updates, a.every, seed=1)[0] \
        if a.seed_noise else [(u, float("nan")) for u, _ in f32]
    print(f"byte LM, H={a.hidden}, B=32, BPTT(64,64), Adam 3e-3, {a.updates} updates, "
          f"{torch.get_num_threads()} threads; train {t32:.0f} s float32, {t16:.0f} s bf16 autocast "
          "(evaluations included)")
    print("| updates | float32 bits/char | bf16 autocast bits/char | bf16 - float32 | "
          "float32 seed 1 - seed 0 |")
    print("|---|---|---|---|---|")
    for (u, b32), (_, b16), (_, o32) in zip(f32, bf16, other):
        print(f"| {u} | {b32:.4f} | {b16:.4f} | {b16 - b32:+.4f} | {o32 - b32:+.4f} |")


if __name__ == "__main__":
    main()
