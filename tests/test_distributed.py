"""Multi-process training: DistributedDataParallel over 2 processes (gloo, CPU), each rank its
own lanes of one stream, gives the gradients of one process on the whole batch."""
import os
import socket
import subprocess
import sys

import pytest
import torch

import tbptt_cuda
import ddp_worker
from helpers import rel_err

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", ["cpu", pytest.param("emulated", marks=pytest.mark.skipif(
    not tbptt_cuda.build_info()["cuda_emulation"], reason="built without the emulated kernels"))])
@pytest.mark.parametrize("cell", ["lstm", "lstmp", "gru"])
def test_ddp_two_processes_match_one_process(cell, backend, tmp_path):
    port, world = _free_port(), 2
    outputs = [tmp_path / f"rank{rank}.pt" for rank in range(world)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, os.path.join(HERE, "ddp_worker.py"), str(rank),
                               str(world), str(port), str(outputs[rank]), backend, cell],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in range(world)]
    for process in ranks:
        log, _ = process.communicate(timeout=300)
        assert process.returncode == 0, log
    expected = ddp_worker.single_process(cell)
    per_rank = [torch.load(path) for path in outputs]
    assert len(expected) == ddp_worker.CHUNKS
    for chunk, grads in enumerate(expected):
        for rank_grads in per_rank:
            for a, b in zip(rank_grads[chunk], grads):
                assert rel_err(a, b) <= 1e-12, (chunk, rel_err(a, b))
