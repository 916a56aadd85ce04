"""One rank of the DistributedDataParallel test (tests/test_distributed.py), and the same run in
one process. A stream of B lanes; rank r of W trains lanes [r*B/W, (r+1)*B/W) with
TBPTT(4, 8), gloo on the CPU; the per-chunk gradients (after DDP's all-reduce) go to a file.

    python tests/ddp_worker.py RANK WORLD PORT OUT [cpu|emulated] [lstm|lstmp|gru]
("emulated": the recurrent layer runs on csrc/cuda's kernels under the SIMT emulator; the cell:
TruncatedLSTM, TruncatedLSTM with proj_size=3, or TruncatedGRU.)
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from tbptt_cuda import TruncatedGRU, TruncatedLSTM, emulate_cuda

LANES, CHUNKS, CHUNK, K2 = 4, 5, 4, 8


class Model(nn.Module):
    def __init__(self, cell="lstm"):
        super().__init__()
        if cell == "gru":
            self.rnn = TruncatedGRU(3, 6, 2, k2=K2, dtype=torch.float64)
        else:
            self.rnn = TruncatedLSTM(3, 6, 2, k2=K2, dtype=torch.float64,
                                     proj_size=3 if cell == "lstmp" else 0)
        self.head = nn.Linear(self.rnn.proj_size or 6, 1, dtype=torch.float64)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def stream():
    gen = torch.Generator().manual_seed(11)
    xs = torch.randn(CHUNKS * CHUNK, LANES, 3, generator=gen, dtype=torch.float64)
    ys = torch.randn(CHUNKS * CHUNK, LANES, 1, generator=gen, dtype=torch.float64)
    return xs, ys


def train(model, parameters, lanes):
    """TBPTT over the stream's `lanes`, SGD after every chunk; per chunk, the gradients."""
    torch.manual_seed(0)
    xs, ys = stream()
    optimizer = torch.optim.SGD(parameters, lr=0.05)
    state, grads = None, []
    for start in range(0, CHUNKS * CHUNK, CHUNK):
        out, state = model(xs[start:start + CHUNK, lanes], state)
        loss = nn.functional.mse_loss(out, ys[start:start + CHUNK, lanes])
        optimizer.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in parameters])
        optimizer.step()
    return grads


def single_process(cell="lstm"):
    torch.manual_seed(1)
    model = Model(cell)
    return train(model, list(model.parameters()), slice(None))


def main(rank, world, port, out, emulated=False, cell="lstm"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(1)
    model = nn.parallel.DistributedDataParallel(Model(cell))
    per_rank = LANES // world
    with emulate_cuda() if emulated else contextlib.nullcontext():
        grads = train(model, list(model.parameters()), slice(rank * per_rank, (rank + 1) * per_rank))
    torch.save(grads, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
         len(sys.argv) > 5 and sys.argv[5] == "emulated", sys.argv[6] if len(sys.argv) > 6 else "lstm")
