"""Stream checkpoints: torch.save of a returned state keeps everything needed to continue the
stream exactly (the ring, its steps, the floor, dropout masks in the window, the stream's
start); torch.load with its default weights_only=True reads it; a resumed run, in this process
or a new one (every cell), gives the outputs and gradients of an uninterrupted one, bit for bit.
The GRU's and the LSTM with projections' own checks of their saved states: tests/test_gru.py,
tests/test_lstmp.py."""
import copy
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tbptt_cuda
from tbptt_cuda import TruncatedLSTM

from helpers import continue_stream, make_rnn, saved_stream_chunks


def _module(device="cpu", dropout=0.25, cell="lstm"):
    torch.manual_seed(0)
    return make_rnn(cell, 2, 5, 2, dropout=dropout, k2=7, device=device, dtype=torch.float64)


def test_resumed_stream_continues_exactly(device):
    lstm = _module(device)
    chunks = [x.to(device) for x in saved_stream_chunks(1)]
    _, state = continue_stream(lstm, None, chunks[:3], seed=7)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    uninterrupted, _ = continue_stream(lstm, state, chunks[3:])
    buffer.seek(0)
    restored = torch.load(buffer)  # weights_only=True, torch's default
    assert isinstance(restored, tbptt_cuda.LSTMState)
    assert restored.step == state.step and restored.history_nbytes == state.history_nbytes
    resumed, _ = continue_stream(lstm, restored, chunks[3:])
    for a, b in zip(uninterrupted, resumed):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def test_saved_size_is_the_history(tmp_path):
    lstm = TruncatedLSTM(16, 64, 2, k2=100)
    _, state = lstm(torch.randn(50, 8, 16))
    path = tmp_path / "state.pt"
    torch.save(state, path)
    size = os.path.getsize(path)
    assert state.history_nbytes <= size <= state.history_nbytes + 64 * 1024, (size, state.history_nbytes)


def test_state_without_history_saves_its_values(tmp_path):
    lstm = TruncatedLSTM(2, 3)
    with torch.no_grad():
        _, state = lstm(torch.randn(4, 2, 2))
    torch.save(state, tmp_path / "s.pt")
    restored = torch.load(tmp_path / "s.pt")
    assert restored.history is None and torch.equal(restored[0], state[0])


def test_checkpoint_of_another_module_shape_is_refused(tmp_path):
    _, state = TruncatedLSTM(2, 5, 2, k2=6)(torch.randn(3, 2, 2))
    torch.save(state, tmp_path / "s.pt")
    restored = torch.load(tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"state: its history was recorded by a TruncatedLSTM with "
                                         r"num_layers=2, hidden_size=5, input_size=2; this module "
                                         r"has num_layers=2, hidden_size=5, input_size=3"):
        TruncatedLSTM(3, 5, 2, k2=6)(torch.randn(3, 2, 3), restored)
    with pytest.raises(ValueError, match=r"its history is torch.float32 on cpu, the parameters "
                                         r"torch.float64"):
        TruncatedLSTM(2, 5, 2, k2=6, dtype=torch.float64)(
            torch.randn(3, 2, 2, dtype=torch.float64),
            tbptt_cuda.LSTMState(restored[0].double(), restored[1].double(), restored.history,
                                 restored.step))


def test_a_malformed_checkpoint_is_refused():
    from tbptt_cuda.module import _restore_state

    _, state = TruncatedLSTM(2, 3, k2=4)(torch.randn(2, 1, 2))
    h, c, record, step, _ = state.__reduce__()[1]
    record["ring"]["gates"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"the saved ring's `gates` should be a tensor of shape"):
        _restore_state(h, c, record, step)
    with pytest.raises(ValueError, match="not a saved stream history"):
        _restore_state(h, c, {"format": 99}, step)
    with pytest.raises(ValueError, match="step must be an integer"):
        _restore_state(h, c, None, -1)


def test_a_saved_ring_of_another_dtype_is_refused():
    from tbptt_cuda.module import _restore_state

    _, state = TruncatedLSTM(2, 3, k2=4, dtype=torch.bfloat16)(torch.randn(2, 1, 2, dtype=torch.bfloat16))
    h, c, record, step, _ = state.__reduce__()[1]
    record["ring"]["hidden"] = record["ring"]["hidden"].double()
    with pytest.raises(ValueError, match=r"the saved ring's `hidden` should be torch.bfloat16, "
                                         r"got torch.float64"):
        _restore_state(h, c, record, step)


@pytest.mark.parametrize("history", ["activations", "checkpoints"])
def test_a_16_bit_stream_saved_with_a_float32_cell_record_resumes(history):
    """Before the ring's c record took the storage dtype, a bfloat16 stream saved it in float32.
    Such a state loads (its c rounded to bfloat16, as the ring records c now) and continues as
    the stream it was saved from."""
    from tbptt_cuda.module import _restore_state

    torch.manual_seed(0)
    lstm = TruncatedLSTM(2, 6, 2, k2=7, history=history, dtype=torch.bfloat16)
    chunks = [x.bfloat16() for x in saved_stream_chunks(1)]
    _, state = continue_stream(lstm, None, chunks[:3])
    h, c, record, step, _ = copy.deepcopy(state.__reduce__()[1])
    expected, _ = continue_stream(lstm, state, chunks[3:])
    assert record["ring"]["cell"].dtype == torch.bfloat16
    record["ring"]["cell"] = record["ring"]["cell"].float()  # the older layout
    resumed, _ = continue_stream(lstm, _restore_state(h, c, record, step), chunks[3:])
    for a, b in zip(expected, resumed):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import tbptt_cuda  # allowlists the state's rebuild function for weights_only loading
    from tbptt_cuda import TruncatedGRU, TruncatedLSTM
    saved = torch.load(sys.argv[1])  # weights_only=True
    if saved["cell"] == "gru":
        lstm = TruncatedGRU(2, 5, 2, dropout=0.25, k2=7, dtype=torch.float64)
    else:
        lstm = TruncatedLSTM(2, 5, 2, dropout=0.25, k2=7, proj_size=saved["proj_size"],
                             dtype=torch.float64)
    lstm.load_state_dict(saved["model"])
    state = saved["state"]
    torch.manual_seed(123)
    records = []
    for x in saved["chunks"]:  # helpers.continue_stream's records
        lstm.zero_grad(set_to_none=True)
        out, state = lstm(x, state)
        h, c = (state, None) if saved["cell"] == "gru" else state
        (out.pow(2).sum() + h.sum() + (c.pow(2).sum() if c is not None else 0)).backward()
        records.append([out.detach(), h.detach()] + ([] if c is None else [c.detach()])
                       + [p.grad.clone() for p in lstm.parameters()])
    torch.save(records, sys.argv[2])
""")


def test_resume_in_a_new_process_continues_exactly(tmp_path, cell):
    lstm = _module(cell=cell)
    chunks = saved_stream_chunks(2)
    _, state = continue_stream(lstm, None, chunks[:3], seed=9)
    torch.save({"model": lstm.state_dict(), "state": state, "chunks": chunks[3:], "cell": cell,
                "proj_size": getattr(lstm, "proj_size", 0)}, tmp_path / "checkpoint.pt")
    uninterrupted, _ = continue_stream(lstm, state, chunks[3:])
    result = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "checkpoint.pt"),
                             str(tmp_path / "resumed.pt")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    resumed = torch.load(tmp_path / "resumed.pt")
    for a, b in zip(uninterrupted, resumed):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_map_location_moves_a_stream_from_cuda_to_cpu(tmp_path):
    gpu = _module("cuda", dropout=0.0)  # (dropout masks come from each device's own generator)
    cpu = _module("cpu", dropout=0.0)
    cpu.load_state_dict(gpu.state_dict())
    chunks = saved_stream_chunks(3)
    _, state = continue_stream(gpu, None, [x.cuda() for x in chunks[:3]])
    torch.save(state, tmp_path / "s.pt")
    on_gpu, _ = continue_stream(gpu, state, [x.cuda() for x in chunks[3:]])
    moved = torch.load(tmp_path / "s.pt", map_location="cpu")
    on_cpu, _ = continue_stream(cpu, moved, chunks[3:])
    for a, b in zip(on_gpu, on_cpu):
        for ta, tb in zip(a, b):
            assert torch.allclose(ta.cpu(), tb, rtol=1e-9, atol=1e-12)
