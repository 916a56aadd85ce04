"""TruncatedGRU (issue 18): nn.GRU's drop-in, streaming like TruncatedLSTM.

Here, the GRU's own: nn.GRU's parameters, initialisation and state_dict both ways; hx
positional or keyword and bias=False against nn.GRU; multi-chunk streams against
tbptt_cuda/reference.py whose windows reach into earlier chunks (k2 > L) in every history
mode, with resets and dropout; the state, a tensor (GRUState) that carries the stream and
saves and resumes exactly; the history's layout and bytes; the ops; the errors.

Shared with the other cells (the `cell` fixture), against nn.GRU and the reference:
k2=None against nn.GRU chunked with detach (test_nn_lstm.py); unbatched input and
PackedSequence (test_drop_in.py); the reference comparisons and 16-bit within the bar
(test_reference.py, test_history_modes.py, test_resets.py, test_autograd.py); ARTBP
(test_artbp.py); resuming in a new process (test_checkpoint.py); the paths: the CPU fused
layers (test_cpu_fused.py, test_cpu_bf16.py) and the persistent kernels under the emulator
(test_persistent.py).
"""
import copy
import io
import math

import pytest
import torch
from torch import nn

from tbptt_cuda import GRUState, TruncatedGRU, TruncatedLSTM, _backend
from tbptt_cuda.history import History, RingBuffers
from tbptt_cuda.reference import GRU, cell_of

from helpers import (assert_records_close, continue_stream, make_stream, rel_err, run_both,
                     saved_stream_chunks)

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
MODES = ["activations", "states", "checkpoints"]


@pytest.fixture
def cell():
    """Every test here is the GRU's (conftest's `device` runs it on "emulated", the persistent
    kernels, and on "emulated_stepwise")."""
    return "gru"


pytestmark = pytest.mark.usefixtures("cell")


def _pair(device, dtype, layers=2, batch_first=False, bias=True, I=3, H=5, k2=None):
    theirs = nn.GRU(I, H, layers, bias=bias, batch_first=batch_first).to(device, dtype)
    ours = TruncatedGRU(I, H, layers, bias=bias, batch_first=batch_first, k2=k2, device=device,
                        dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


# ---------------------------------------------------------------------------------------------
# nn.GRU's parameters and calling conventions

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameters_initialisation_and_state_dict_both_ways(bias):
    ours = TruncatedGRU(3, 5, 2, bias=bias)
    theirs = nn.GRU(3, 5, 2, bias=bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, p.shape) for n, p in theirs.named_parameters()]
    assert ours.weight_hh_l1.shape == (15, 5) and ours.cell == "gru" and cell_of(ours) is GRU
    bound = 1 / math.sqrt(5)
    for name, p in ours.named_parameters():  # nn.GRU's uniform(-1/sqrt(H), 1/sqrt(H))
        assert p.abs().max() <= bound and p.std() > bound / 4, name
    ours.load_state_dict(theirs.state_dict())
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), n
    fresh = nn.GRU(3, 5, 2, bias=bias)
    fresh.load_state_dict(ours.state_dict())
    for a, b in zip(fresh.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    assert repr(TruncatedGRU(3, 5, 2, k2=6)) == "TruncatedGRU(3, 5, num_layers=2, k2=6)"
    assert TruncatedGRU(3, 5).flatten_parameters() is None


def test_bias_false_hx_positional_and_keyword_equal_nn_gru(device):
    for bias in (False, True):
        ours, theirs = _pair(device, torch.float64, bias=bias)
        x = torch.randn(4, 2, 3, device=device, dtype=torch.float64)
        h0 = torch.randn(2, 2, 5, device=device, dtype=torch.float64)
        b, h_b = theirs(x, h0)
        for a, h_a in (ours(x, h0), ours(x, hx=h0)):
            assert rel_err(a, b) <= 1e-10 and rel_err(h_a, h_b) <= 1e-10
        a, h_a = ours(x)  # hx=None: zeros
        b, h_b = theirs(x)
        assert rel_err(a, b) <= 1e-10 and rel_err(h_a, h_b) <= 1e-10


# ---------------------------------------------------------------------------------------------
# streams against the reference: windows into earlier chunks, modes, resets, dropout (ARTBP's
# forced window: tests/test_artbp.py, over the cells)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("history", MODES)
def test_stream_with_resets_and_dropout_matches_the_reference(history, dtype, device):
    """2 layers with dropout (the reference replays the module's recorded masks), resets, an
    explicit h0 that gets gradient, a loss on out and h_n, k2 = 7 over chunks of 2 to 5 steps:
    every window but the first reaches into earlier chunks."""
    gru = TruncatedGRU(3, 6, 2, dropout=0.3, history=history, device=device, dtype=dtype)
    chunks, resets = make_stream([4, 2, 5, 4, 3], 2, 3, dtype, device, reset_prob=0.15, seed=3)
    h0 = torch.randn(2, 2, 6, dtype=dtype, device=device)
    ours, ref = run_both(gru, chunks, resets, [7] * 5, use_state=True, explicit=(h0,))
    assert_records_close(ours, ref, dtype)
    assert gru.last_dropout_masks.shape == (1, 3, 2, 6)


# ---------------------------------------------------------------------------------------------
# the state: a tensor that carries the stream

def test_the_state_is_a_tensor_that_carries_the_stream(device):
    gru = TruncatedGRU(2, 3, 2, k2=8, device=device)
    out, h = gru(torch.randn(4, 5, 2, device=device))
    assert isinstance(h, GRUState) and isinstance(h, torch.Tensor)
    assert h.shape == (2, 5, 3) and out.shape == (4, 5, 3)
    assert torch.equal(out[-1], h[-1])
    for derived in (h[-1], h * 2, h.detach(), h.clone(), torch.tanh(h), h.to(torch.float64)):
        assert type(derived) is torch.Tensor  # operations give plain tensors
    assert h.history.end == 4 and h.step == 4 and h.window == 4 and h.history_nbytes > 0
    out, h2 = gru(torch.randn(3, 5, 2, device=device), h)  # nn.GRU's `out, h = gru(x, h)`
    assert h2.history is h.history and h2.step == 7 and h2.window == 7
    (out.sum() + h2.sum()).backward()
    _, fresh = gru(torch.randn(3, 5, 2, device=device), h2.detach())  # a new stream
    assert fresh.history is not h.history and fresh.step == 3
    with pytest.raises(ValueError, match="this state is stale"):
        gru(torch.randn(3, 5, 2, device=device), h)
    with torch.no_grad():
        _, quiet = gru(torch.randn(3, 5, 2, device=device), h2)
    assert isinstance(quiet, GRUState) and quiet.history is None and quiet.history_nbytes == 0
    assert h2.history.end == 7  # no_grad wrote nothing
    gru.eval()
    _, evaluated = gru(torch.randn(3, 5, 2, device=device), h2)
    assert evaluated.history is None


def test_history_layout_and_bytes_per_mode():
    """Per layer and step, activations: r, z, n, hn (4H) and h (H); states: h; checkpoints: h
    every s steps; a zero-width cell record (notes/cells.md section 4's formulas)."""
    I, H, B, layers, k2, t = 24, 32, 3, 2, 64, 4
    init = layers * B * H * t  # h_init; c_init is [layers, B, 0]
    expected = {
        "activations": (k2 + 1) * B * (layers * (4 * H + H) * t + I * t + 1),
        "states": (k2 + 1) * B * (layers * H * t + I * t + 1),
        # s = ceil(sqrt(64)) = 8: k2 + s slots of input and flags, ceil(slots / s) + 1 checkpoints
        "checkpoints": (k2 + 8) * B * (I * t + 1) + ((k2 + 8) // 8 + 1) * layers * B * H * t,
    }
    for mode, nbytes in expected.items():
        gru = TruncatedGRU(I, H, layers, k2=k2, history=mode)
        _, h = gru(torch.randn(4, B, I))
        ring = h.history.ring
        assert ring.cell_kind == "gru" and ring.cell.shape[-1] == 0 and ring.hidden.shape[-1] == H
        assert h.history.c_init.shape == (layers, B, 0)
        assert ring.gates.shape == ((layers, k2 + 1, B, 4 * H) if mode == "activations" else (0,))
        assert h.history_nbytes == nbytes + init, mode
    # notes/cells.md section 4's worked example: 82,960 bytes a step in "activations"
    ring = RingBuffers(1, 1, 16, 16, 256, torch.float32, "cpu", False, cell="gru")
    assert ring.nbytes == 82_960


@pytest.mark.parametrize("history", MODES)
def test_resumed_stream_continues_exactly(history, device):
    torch.manual_seed(0)
    gru = TruncatedGRU(2, 5, 2, dropout=0.25, k2=7, history=history, device=device,
                       dtype=torch.float64)
    chunks = [x.to(device) for x in saved_stream_chunks(1)]
    _, h = continue_stream(gru, None, chunks[:3], seed=7)
    buffer = io.BytesIO()
    torch.save({"state": h, "model": gru.state_dict()}, buffer)
    uninterrupted, _ = continue_stream(gru, h, chunks[3:])
    buffer.seek(0)
    restored = torch.load(buffer)["state"]  # weights_only=True, torch's default
    assert isinstance(restored, GRUState) and restored.requires_grad is False
    assert restored.step == h.step and restored.window == h.window
    assert restored.history_nbytes == h.history_nbytes and restored.history.cell_kind == "gru"
    assert torch.equal(restored, h.detach())
    copied = copy.deepcopy(restored)  # a deep copy is a state too, with its own history
    assert isinstance(copied, GRUState) and copied.history is not restored.history
    resumed, _ = continue_stream(gru, restored, chunks[3:])
    for a, b in zip(uninterrupted, resumed):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    again, _ = continue_stream(gru, copied, chunks[3:])
    for a, b in zip(uninterrupted, again):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def test_saved_records_name_their_cell_and_are_checked(tmp_path):
    """The saved history names its cell ("cell_kind"; "cell" is the ring's c record); a record
    without it is an LSTM's (saved before the GRU); a record of the other cell, or with the
    LSTM's c width, is refused; a state without history saves its values."""
    from tbptt_cuda.module import _restore_gru_state, _restore_state

    _, h = TruncatedGRU(2, 3, k2=4)(torch.randn(2, 1, 2))
    plain, record, step, window = h.__reduce_ex__(2)[1]
    assert record["cell_kind"] == "gru" and record["ring"]["cell_kind"] == "gru"
    assert type(plain) is torch.Tensor
    assert isinstance(_restore_gru_state(plain, copy.deepcopy(record), step, window), GRUState)
    with pytest.raises(ValueError, match=r"TruncatedLSTM state: the saved history is a "
                                         r"TruncatedGRU's stream \(cell 'gru'\), not a "
                                         r"TruncatedLSTM's \(cell 'lstm'\)"):
        _restore_state(plain, plain, copy.deepcopy(record), step)
    bad = copy.deepcopy(record)
    bad["ring"]["cell"] = torch.zeros(1, 5, 1, 3)  # the LSTM's width
    with pytest.raises(ValueError, match=r"TruncatedGRU state: the saved ring's `cell` should be "
                                         r"a tensor of shape \(1, 5, 1, 0\)"):
        _restore_gru_state(plain, bad, step)
    bad = copy.deepcopy(record)
    bad["ring"]["cell_kind"] = "lstm"
    with pytest.raises(ValueError, match="the saved ring is of cell 'lstm', its stream of cell 'gru'"):
        _restore_gru_state(plain, bad, step)
    bad = copy.deepcopy(record)
    bad["cell_kind"] = "rnn"
    with pytest.raises(ValueError, match="unknown cell kind 'rnn'"):
        _restore_gru_state(plain, bad, step)
    with pytest.raises(ValueError, match="step must be an integer"):
        _restore_gru_state(plain, record, -1)
    # an LSTM record from before the GRU: no "cell_kind" anywhere
    _, state = TruncatedLSTM(2, 3, k2=4)(torch.randn(2, 1, 2))
    h_l, c_l, lstm_record, lstm_step, _ = state.__reduce__()[1]
    del lstm_record["cell_kind"], lstm_record["ring"]["cell_kind"]
    assert History.from_dict(lstm_record).cell_kind == "lstm"
    assert _restore_state(h_l, c_l, lstm_record, lstm_step).history.ring.cell_kind == "lstm"
    with pytest.raises(ValueError, match=r"is a TruncatedLSTM's stream \(cell 'lstm'\), not a "
                                         r"TruncatedGRU's"):
        _restore_gru_state(h_l, lstm_record, lstm_step)
    with torch.no_grad():
        _, quiet = TruncatedGRU(2, 3)(torch.randn(4, 2, 2))
    torch.save(quiet, tmp_path / "s.pt")
    restored = torch.load(tmp_path / "s.pt")
    assert isinstance(restored, GRUState) and restored.history is None
    assert torch.equal(restored, quiet)


# ---------------------------------------------------------------------------------------------
# errors

def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="TruncatedGRU: bidirectional=True is not supported: a "
                                         "stream is consumed forward in time"):
        TruncatedGRU(2, 3, bidirectional=True)
    with pytest.raises(ValueError, match=r"TruncatedGRU: dropout must be in \[0, 1\)"):
        TruncatedGRU(2, 3, 2, dropout=1.0)
    with pytest.raises(ValueError, match="TruncatedGRU: hidden_size must be a positive integer"):
        TruncatedGRU(2, 0)
    with pytest.raises(TypeError, match="proj_size"):  # nn.GRU has none either
        TruncatedGRU(2, 3, proj_size=2)
    gru = TruncatedGRU(3, 4, 2, k2=5)
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"TruncatedGRU: state hx must be \[num_layers, B, "
                                         r"hidden_size\] = \[2, 2, 4\], got \[1, 2, 4\]"):
        gru(x, torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"state hx must be .* got \[2, 3, 4\]"):
        gru(x, hx=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"for an unbatched 2-D input the state hx must be 2-D"):
        gru(x[:, 0], torch.zeros(2, 1, 4))
    with pytest.raises(TypeError, match=r"TruncatedGRU: state hx dtype torch.float64"):
        gru(x, torch.zeros(2, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"TruncatedGRU: hx must be None, the h_n returned by the "
                                        r"previous call, or a tensor .* got tuple"):
        gru(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"TruncatedGRU: the chunk has L=6 steps but k2=5"):
        gru(torch.randn(6, 2, 3))
    with pytest.raises(ValueError, match=r"TruncatedGRU: input has 2 features"):
        gru(torch.randn(4, 2, 2))
    _, lstm_state = TruncatedLSTM(3, 4, 2, k2=5)(x)
    with pytest.raises(TypeError, match="TruncatedGRU: hx must be None"):
        gru(x, lstm_state)  # an LSTM's (h, c)
    _, h = gru(x)
    with pytest.raises(TypeError, match="TruncatedLSTM: state must be None"):
        TruncatedLSTM(3, 4, 2, k2=5)(x, h)
    with pytest.raises(ValueError, match=r"TruncatedGRU: state: its history was recorded by a "
                                         r"TruncatedGRU with num_layers=2, hidden_size=4, "
                                         r"input_size=3; this module has num_layers=2, "
                                         r"hidden_size=4, input_size=2"):
        TruncatedGRU(2, 4, 2, k2=5)(torch.randn(4, 2, 2), h)
    with pytest.raises(ValueError, match=r"TruncatedGRU: reset of shape \[B\] must have B=2"):
        gru(x, reset=torch.zeros(3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# the ops (which backend runs the GRU: tests/test_persistent.py and test_cpu_fused.py, over the
# cells)

def test_opcheck_registered_ops_for_the_gru(device):
    """The ops and their fake (shape-only) implementations agree for cell = 2: c0, c_n and the
    cell records zero-width."""
    ops = _backend.ops()
    gru = TruncatedGRU(3, 4, 2, k2=5, device=device)
    x = torch.randn(3, 2, 3, device=device)
    _, h = gru(x)
    ring = h.history.ring
    weights = [p.detach() for p in gru.parameters()]
    h0 = torch.randn(2, 2, 4, device=device)
    c0 = torch.zeros(2, 2, 0, device=device)
    flags = torch.zeros(3, 2, dtype=torch.uint8, device=device)
    forward_args = (x, h0, c0, flags, weights, True, None, *[t.clone() for t in ring.tensors()],
                    1, True, 0, 1, 2)
    y, h_n, c_n = ops.chunk_forward(*forward_args)
    assert y.shape == (3, 2, 4) and h_n.shape == (2, 2, 4) and c_n.shape == (2, 2, 0)
    torch.library.opcheck(ops.chunk_forward.default, forward_args)
    backward_args = (torch.randn(3, 2, 4, device=device), torch.randn(2, 2, 4, device=device),
                     torch.zeros(2, 2, 0, device=device), weights, True, *ring.tensors(), h0, c0,
                     3, 2, None, 0, 1, True, 2)
    grad_x, grad_h, grad_c, grad_w = ops.window_backward(*backward_args)
    assert grad_x.shape == x.shape and grad_h.shape == (2, 2, 4) and grad_c.shape == (2, 2, 0)
    assert [g.shape for g in grad_w] == [w.shape for w in weights]
    torch.library.opcheck(ops.window_backward.default, backward_args)


def test_set_k2_reaches_a_gru():
    from tbptt_cuda.train import set_k2

    model = nn.ModuleDict({"gru": TruncatedGRU(2, 3), "lstm": TruncatedLSTM(2, 3)})
    assert set_k2(model, 12) == 2 and model["gru"].k2 == 12
