"""TruncatedLSTM(proj_size=P) (issue 18 item 3): nn.LSTM's LSTM with projections, streaming.

Here, its own: state positional or hx= and bias=False against nn.LSTM(proj_size=P);
multi-chunk streams against tbptt_cuda/reference.py (Cell LSTMP) whose windows reach into
earlier chunks (k2 > L) in every history mode, with resets and dropout (masks of size P);
gradcheck; saving and resuming exactly; the history's layout and bytes (h and the masks P
wide, c H wide); the parameters (weight_hr_l{k} [P, H] after the biases: nn.LSTM's names,
order and initialisation) and state_dict both ways; the ops; the errors; proj_size=0 is the
plain LSTM, bit for bit.

Shared with the other cells (the `cell` fixture, "lstmp"): k2=None against
nn.LSTM(proj_size) chunked with detach (test_nn_lstm.py); unbatched input and PackedSequence
(test_drop_in.py); the reference comparisons and 16-bit within the bar (test_reference.py,
test_history_modes.py, test_resets.py, test_autograd.py); ARTBP (test_artbp.py); resuming in a
new process (test_checkpoint.py); the paths: the fused CPU layers, two team barriers a step
each way (test_cpu_fused.py, test_cpu_bf16.py), and the persistent kernels under the
emulator, two grid barriers a step each way (test_persistent.py).
"""
import copy
import io
import math

import pytest
import torch
from torch import nn

from tbptt_cuda import LSTMState, TruncatedGRU, TruncatedLSTM, _backend
from tbptt_cuda.function import CELL_CODES
from tbptt_cuda.history import History, RingBuffers
from tbptt_cuda.reference import LSTM, LSTMP, cell_of

from helpers import (assert_records_close, continue_stream, make_stream, rel_err, run_both,
                     saved_stream_chunks, stream_records)

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
MODES = ["activations", "states", "checkpoints"]

# The shapes of most tests: I, H, P all different (a mix-up of any two shows in a shape or a
# value), P < I so that the upper layers' input (P) differs from the first's (I).
I, H, P = 4, 6, 3


@pytest.fixture
def cell():
    """Every test here is the LSTM with projections' (conftest's `device` runs it on "emulated",
    the persistent kernels, and on "emulated_stepwise")."""
    return "lstmp"


pytestmark = pytest.mark.usefixtures("cell")


def _pair(device, dtype, layers=2, batch_first=False, bias=True, k2=None, seed=0):
    torch.manual_seed(seed)
    theirs = nn.LSTM(I, H, layers, bias=bias, batch_first=batch_first, proj_size=P).to(device, dtype)
    ours = TruncatedLSTM(I, H, layers, bias=bias, batch_first=batch_first, proj_size=P, k2=k2,
                         device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def _state(layers, B, device, dtype):
    """A random (h0 [layers, B, P], c0 [layers, B, H])."""
    return (torch.randn(layers, B, P, device=device, dtype=dtype),
            torch.randn(layers, B, H, device=device, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# nn.LSTM(proj_size)'s parameters, initialisation and state_dict (pure Python: no op runs)

@pytest.mark.parametrize("layers", [1, 2], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameters_initialisation_and_state_dict_both_ways(bias, layers):
    torch.manual_seed(3)
    ours = TruncatedLSTM(I, H, layers, bias=bias, proj_size=P)
    torch.manual_seed(3)
    theirs = nn.LSTM(I, H, layers, bias=bias, proj_size=P)
    # nn.LSTM's names, shapes and order: per layer w_ih, w_hh, (b_ih, b_hh,) w_hr
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, p.shape) for n, p in theirs.named_parameters()]
    assert ours.weight_hr_l0.shape == (P, H) and ours.weight_hh_l0.shape == (4 * H, P)
    if layers == 2:
        assert ours.weight_ih_l1.shape == (4 * H, P)
    # and its initialisation: the same draws in the same order, weight_hr's included
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), n
    bound = 1 / math.sqrt(H)
    for name, p in ours.named_parameters():
        assert p.abs().max() <= bound and p.std() > bound / 4, name
    # the ops' flat weight list: 5 per layer with bias, 3 without, in nn.LSTM's order
    per_layer = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else []) + ["weight_hr"]
    assert [w.data_ptr() for w in ours._flat_weights] == \
           [getattr(ours, f"{n}_l{k}").data_ptr() for k in range(layers) for n in per_layer]
    assert ours.proj_size == P and ours.cell == "lstmp" and cell_of(ours) is LSTMP
    # state_dict both ways
    other = nn.LSTM(I, H, layers, bias=bias, proj_size=P)
    ours.load_state_dict(other.state_dict())
    for (n, a), b in zip(ours.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n
    fresh = nn.LSTM(I, H, layers, bias=bias, proj_size=P)
    fresh.load_state_dict(ours.state_dict())
    for a, b in zip(fresh.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    # an nn.LSTM without projection does not load (missing weight_hr, other shapes)
    with pytest.raises(RuntimeError, match="weight_hr_l0"):
        ours.load_state_dict(nn.LSTM(I, H, layers, bias=bias).state_dict())


def test_repr_and_attributes():
    lstm = TruncatedLSTM(I, H, 2, proj_size=P, k2=6)
    assert repr(lstm) == f"TruncatedLSTM({I}, {H}, proj_size={P}, num_layers=2, k2=6)"
    assert repr(nn.LSTM(I, H, 2, proj_size=P)).startswith(f"LSTM({I}, {H}, proj_size={P}, ")
    assert lstm.flatten_parameters() is None
    plain = TruncatedLSTM(I, H, 2, k2=6)
    assert repr(plain) == f"TruncatedLSTM({I}, {H}, num_layers=2, k2=6)"
    assert plain.proj_size == 0 and plain.cell == "lstm" and cell_of(plain) is LSTM
    assert TruncatedGRU(I, H).proj_size == 0  # as nn.GRU's


def test_proj_size_zero_is_the_plain_lstm():
    """proj_size=0 (nn.LSTM's default) builds what TruncatedLSTM() builds: the same parameters
    from the same draws, no weight_hr, cell "lstm" (its outputs and gradients bit for bit:
    test_proj_size_zero_streams_bit_for_bit)."""
    torch.manual_seed(5)
    a = TruncatedLSTM(I, H, 2, proj_size=0)
    torch.manual_seed(5)
    b = TruncatedLSTM(I, H, 2)
    torch.manual_seed(5)
    c = nn.LSTM(I, H, 2, proj_size=0)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in c.named_parameters()]
    for x, y, z in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert a.cell == "lstm" and len(a._flat_weights) == 8


# ---------------------------------------------------------------------------------------------
# against nn.LSTM(proj_size) on the same weights

def test_state_positional_and_hx_keyword_equal_nn_lstm(device):
    for bias in (False, True):
        ours, theirs = _pair(device, torch.float64, bias=bias)
        x = torch.randn(4, 2, I, device=device, dtype=torch.float64)
        hx = _state(2, 2, device, torch.float64)
        b, (h_b, c_b) = theirs(x, hx)
        for a, (h_a, c_a) in (ours(x, hx), ours(x, hx=hx)):
            assert rel_err(a, b) <= 1e-10 and rel_err(h_a, h_b) <= 1e-10
            assert rel_err(c_a, c_b) <= 1e-10
        a, (h_a, c_a) = ours(x)  # no state: zeros, h [2, B, P] and c [2, B, H]
        b, (h_b, c_b) = theirs(x)
        assert rel_err(a, b) <= 1e-10 and rel_err(h_a, h_b) <= 1e-10
        assert rel_err(c_a, c_b) <= 1e-10


# ---------------------------------------------------------------------------------------------
# streams against the reference: windows into earlier chunks, modes, resets, dropout (ARTBP's
# forced window: tests/test_artbp.py, over the cells)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("history", MODES)
def test_stream_with_resets_and_dropout_matches_the_reference(history, dtype, device):
    """2 layers with dropout (the reference replays the module's recorded masks, P wide),
    resets, an explicit (h0, c0) that gets gradient, a loss on out, h_n and c_n, k2 = 7 over
    chunks of 2 to 5 steps: every window but the first reaches into earlier chunks."""
    torch.manual_seed(0)
    lstm = TruncatedLSTM(I, H, 2, dropout=0.3, proj_size=P, history=history, device=device,
                         dtype=dtype)
    chunks, resets = make_stream([4, 2, 5, 4, 3], 2, I, dtype, device, reset_prob=0.15, seed=3)
    h0, c0 = _state(2, 2, device, dtype)
    ours, ref = run_both(lstm, chunks, resets, [7] * 5, use_state=True, explicit=(h0, c0))
    assert_records_close(ours, ref, dtype)
    assert lstm.last_dropout_masks.shape == (1, 3, 2, P)
    assert ours[0]["h0_grad"].shape == (2, 2, P) and ours[0]["c0_grad"].shape == (2, 2, H)


@pytest.mark.parametrize("history", MODES)
def test_three_layers_bias_false_batch_first_match_the_reference(history, device):
    dtype = torch.float64
    torch.manual_seed(1)
    lstm = TruncatedLSTM(I, H, 3, bias=False, batch_first=True, dropout=0.2, proj_size=P,
                         history=history, checkpoint_every=2 if history == "checkpoints" else None,
                         device=device, dtype=dtype)
    chunks, resets = make_stream([3, 5, 1, 4], 3, I, dtype, device, reset_prob=0.2, seed=8)
    ours, ref = run_both(lstm, chunks, resets, [9] * 4, use_state=True, batch_first=True)
    assert_records_close(ours, ref, dtype)
    assert lstm.last_dropout_masks.shape == (2, 4, 3, P)


def _params(module):
    return {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}


def test_gradcheck_two_layers_without_bias(device):
    """gradcheck, 2 layers without bias: (a) a fresh chunk from an explicit (h0, c0) with a
    reset (x, h0, c0 and every weight, weight_hr's included); (b) a chunk whose window (k2 = 8)
    covers the chunk before it too: its gradient is the full derivative of its loss (x and the
    weights; an explicit state gets gradient from its own chunk only, as any input)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    lstm = TruncatedLSTM(3, 4, 2, bias=False, proj_size=2, k2=8, device=device,
                         dtype=torch.float64)
    params = _params(lstm)
    names = list(params)
    x1 = torch.randn(3, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    x2 = torch.randn(4, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    reset = torch.tensor([[False, False], [False, True], [False, False]], device=device)

    def fresh(x1, h0, c0, *weights):
        out, (h, c) = functional_call(lstm, dict(zip(names, weights)), (x1, (h0, c0)),
                                      {"reset": reset})
        return out, h, c

    assert torch.autograd.gradcheck(fresh, (x1, h0, c0, *params.values()))

    def second(x2, *weights):
        weights = dict(zip(names, weights))
        _, state = functional_call(lstm, {n: w.detach() for n, w in weights.items()},
                                   (x1.detach(), (h0.detach(), c0.detach())))
        out, (h, c) = functional_call(lstm, weights, (x2, state))
        return out, h, c

    assert torch.autograd.gradcheck(second, (x2, *params.values()))


# ---------------------------------------------------------------------------------------------
# the state and the history: h P wide, c H wide

def test_the_state_carries_the_stream(device):
    lstm = TruncatedLSTM(2, 5, 2, proj_size=3, k2=8, device=device)
    out, state = lstm(torch.randn(4, 6, 2, device=device))
    h, c = state
    assert isinstance(state, LSTMState)
    assert out.shape == (4, 6, 3) and h.shape == (2, 6, 3) and c.shape == (2, 6, 5)
    assert torch.equal(out[-1], h[-1])
    assert state.history.end == 4 and state.step == 4 and state.window == 4
    assert state.history.h_init.shape == (2, 6, 3) and state.history.c_init.shape == (2, 6, 5)
    out, state2 = lstm(torch.randn(3, 6, 2, device=device), state)
    assert state2.history is state.history and state2.step == 7 and state2.window == 7
    (out.sum() + state2[0].sum() + state2[1].sum()).backward()
    _, fresh = lstm(torch.randn(3, 6, 2, device=device), tuple(s.detach() for s in state2))
    assert fresh.history is not state.history and fresh.step == 3
    with pytest.raises(ValueError, match="this state is stale"):
        lstm(torch.randn(3, 6, 2, device=device), state)
    with torch.no_grad():
        _, quiet = lstm(torch.randn(3, 6, 2, device=device), state2)
    assert quiet.history is None and quiet.history_nbytes == 0
    assert quiet[0].shape == (2, 6, 3) and quiet[1].shape == (2, 6, 5)
    lstm.eval()
    out, evaluated = lstm(torch.randn(3, 6, 2, device=device), state2)
    assert evaluated.history is None and out.shape == (3, 6, 3)


def test_history_layout_and_bytes_per_mode():
    """Per layer and step, activations: i, f, g, o (4H), c (H), h (P); states: c and h;
    checkpoints: c and h every s steps; dropout masks P wide (notes/cells.md section 4)."""
    I_, H_, P_, B, layers, k2, t = 24, 32, 12, 3, 2, 64, 4
    init = layers * B * (P_ + H_) * t  # h_init [layers, B, P], c_init [layers, B, H] float32
    masks = (layers - 1) * B * P_ * t  # per step, with dropout
    expected = {
        "activations": (k2 + 1) * B * (layers * (4 * H_ + H_ + P_) * t + I_ * t + 1),
        "states": (k2 + 1) * B * (layers * (H_ + P_) * t + I_ * t + 1),
        # s = ceil(sqrt(64)) = 8: k2 + s slots of input and flags, ceil(slots / s) + 1 checkpoints
        "checkpoints": (k2 + 8) * B * (I_ * t + 1) + ((k2 + 8) // 8 + 1) * layers * B * (H_ + P_) * t,
    }
    for mode, nbytes in expected.items():
        for dropout in (0.0, 0.5):
            lstm = TruncatedLSTM(I_, H_, layers, proj_size=P_, dropout=dropout, k2=k2, history=mode)
            _, state = lstm(torch.randn(4, B, I_))
            ring = state.history.ring
            assert ring.cell_kind == "lstmp" and state.history.cell_kind == "lstmp"
            assert ring.cell.shape[-1] == H_ and ring.hidden.shape[-1] == P_
            assert ring.gates.shape == ((layers, k2 + 1, B, 4 * H_) if mode == "activations" else (0,))
            slots = k2 + (8 if mode == "checkpoints" else 1)
            assert ring.mask.shape == ((layers - 1, slots, B, P_) if dropout else (0,))
            assert state.history_nbytes == nbytes + init + (slots * masks if dropout else 0), mode


def test_ring_of_notes_worked_example():
    """notes/cells.md section 4: one layer, B = 16, float32, I = 16, H = 256, P = 128: 91,152
    bytes a step in "activations", 25,616 in "states" (pure Python: no op runs)."""
    ring = RingBuffers(1, 1, 16, 16, 256, torch.float32, "cpu", False, cell="lstmp", proj_size=128)
    assert ring.nbytes == 91_152
    assert ring.hidden.shape == (1, 1, 16, 128) and ring.cell.shape == (1, 1, 16, 256)
    ring = RingBuffers(1, 1, 16, 16, 256, torch.float32, "cpu", False, "states", cell="lstmp",
                       proj_size=128)
    assert ring.nbytes == 25_616
    ring = RingBuffers(3, 2, 4, 5, 8, torch.float32, "cpu", True, cell="lstmp", proj_size=3)
    assert ring.mask.shape == (1, 3, 4, 3)
    with pytest.raises(ValueError, match="a projection is the \"lstmp\" cell's and only its"):
        RingBuffers(1, 1, 2, 2, 4, torch.float32, "cpu", False, cell="lstm", proj_size=2)
    with pytest.raises(ValueError, match="a projection is the \"lstmp\" cell's and only its"):
        RingBuffers(1, 1, 2, 2, 4, torch.float32, "cpu", False, cell="lstmp")


@pytest.mark.parametrize("history", MODES)
def test_resumed_stream_continues_exactly(history, device):
    torch.manual_seed(0)
    lstm = TruncatedLSTM(2, 5, 2, dropout=0.25, proj_size=3, k2=7, history=history,
                         device=device, dtype=torch.float64)
    chunks = [x.to(device) for x in saved_stream_chunks(1)]
    _, state = continue_stream(lstm, None, chunks[:3], seed=7)
    buffer = io.BytesIO()
    torch.save({"state": state, "model": lstm.state_dict()}, buffer)
    uninterrupted, _ = continue_stream(lstm, state, chunks[3:])
    buffer.seek(0)
    restored = torch.load(buffer)["state"]  # weights_only=True, torch's default
    assert isinstance(restored, LSTMState) and restored.history.cell_kind == "lstmp"
    assert restored.history.ring.cell_kind == "lstmp"
    assert restored.step == state.step and restored.window == state.window
    assert restored.history_nbytes == state.history_nbytes
    assert torch.equal(restored[0], state[0].detach()) and torch.equal(restored[1], state[1].detach())
    resumed, _ = continue_stream(lstm, restored, chunks[3:])
    for a, b in zip(uninterrupted, resumed):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    # a module without the projection, or of another P, refuses the stream (h0's width); one
    # of another input size, naming its shape with proj_size
    for other in (TruncatedLSTM(2, 5, 2, k2=7, device=device, dtype=torch.float64),
                  TruncatedLSTM(2, 5, 2, proj_size=2, k2=7, device=device, dtype=torch.float64)):
        buffer.seek(0)
        with pytest.raises(ValueError, match=r"state h0 must be \[num_layers, B, "
                                             r"(hidden|proj)_size\] = \[2, 3, [52]\], got \[2, 3, 3\]"):
            other(chunks[3], torch.load(buffer)["state"])
    buffer.seek(0)
    other = TruncatedLSTM(4, 5, 2, proj_size=3, k2=7, device=device, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"its history was recorded by a TruncatedLSTM with "
                                         r"num_layers=2, hidden_size=5, proj_size=3, "
                                         r"input_size=2; this module has num_layers=2, "
                                         r"hidden_size=5, proj_size=3, input_size=4"):
        other(torch.randn(2, 3, 4, device=device, dtype=torch.float64),
              torch.load(buffer)["state"])


def _lstmp_record(layers=2, batch=3, input_size=2, hidden=5, proj=3, mode="activations"):
    """A saved "lstmp" history (to_dict), built without running an op: the ring is allocated
    as a stream's first chunk of 2 steps allocates it (k2 = 4)."""
    h0 = torch.randn(layers, batch, proj)
    c0 = torch.randn(layers, batch, hidden)
    history = History(h0, c0, input_size, "lstmp")
    ring = history.ring_for(2, 4, with_mask=True, mode=mode, every=2)
    assert ring.hidden.shape[-1] == proj and ring.cell.shape[-1] == hidden
    assert ring.mask.shape[-1] == proj
    ring.end = history.end = 2
    return history.to_dict()


@pytest.mark.parametrize("mode", MODES)
def test_saved_records_name_their_cell_and_are_checked(mode):
    """The saved history names its cell ("lstmp"); LSTMState's rebuild takes it (and the plain
    LSTM's), refuses a GRU's; a ring or initial state of the wrong widths is refused."""
    from tbptt_cuda.module import _restore_gru_state, _restore_state

    record = _lstmp_record(mode=mode)
    assert record["cell_kind"] == "lstmp" and record["ring"]["cell_kind"] == "lstmp"
    h, c = torch.zeros(2, 3, 3), torch.zeros(2, 3, 5)
    state = _restore_state(h, c, copy.deepcopy(record), 2)
    assert isinstance(state, LSTMState) and state.history.cell_kind == "lstmp"
    assert state.history.ring.hidden.shape[-1] == 3 and state.history.ring.cell.shape[-1] == 5
    history = History.from_dict(copy.deepcopy(record), "lstmp")
    assert history.nbytes == state.history_nbytes
    with pytest.raises(ValueError, match=r"TruncatedGRU state: the saved history is a "
                                         r"TruncatedLSTM's stream \(cell 'lstmp'\), not a "
                                         r"TruncatedGRU's \(cell 'gru'\)"):
        _restore_gru_state(h, copy.deepcopy(record), 2)
    with pytest.raises(ValueError, match=r"the saved history is a TruncatedLSTM's stream "
                                         r"\(cell 'lstmp'\), not a TruncatedLSTM's \(cell 'lstm'\)"):
        History.from_dict(copy.deepcopy(record), "lstm")
    bad = copy.deepcopy(record)
    bad["ring"]["hidden"] = torch.zeros(*bad["ring"]["hidden"].shape[:3], 5)  # h of width H
    with pytest.raises(ValueError, match=r"TruncatedLSTM state: the saved ring's `hidden` should "
                                         r"be a tensor of shape \(2, \d+, 3, 3\)"):
        _restore_state(h, c, bad, 2)
    if mode != "checkpoints":
        bad = copy.deepcopy(record)
        bad["ring"]["mask"] = torch.zeros(*bad["ring"]["mask"].shape[:3], 5)  # masks of width H
        with pytest.raises(ValueError, match=r"the saved ring's `mask` should be a tensor of "
                                             r"shape \(1, \d+, 3, 3\)"):
            _restore_state(h, c, bad, 2)
    bad = copy.deepcopy(record)
    bad["c_init"] = torch.zeros(2, 3, 3)  # c as wide as h: not an LSTM with projections
    with pytest.raises(ValueError, match=r"the saved initial state must be h \[layers, B, P\] "
                                         r"and c \[layers, B, H\] tensors \(0 < P < H\)"):
        _restore_state(h, c, bad, 2)
    bad = copy.deepcopy(record)
    bad["ring"]["cell_kind"] = "lstm"
    with pytest.raises(ValueError, match="the saved ring is of cell 'lstm', its stream of cell "
                                         "'lstmp'"):
        _restore_state(h, c, bad, 2)


# ---------------------------------------------------------------------------------------------
# errors (pure Python: raised before any op runs)

@pytest.mark.parametrize("proj_size,match", [
    (6, r"TruncatedLSTM: proj_size must be smaller than hidden_size \(nn.LSTM's rule\), got "
        r"proj_size=6, hidden_size=6"),
    (7, r"proj_size must be smaller than hidden_size .* got proj_size=7"),
    (-1, r"TruncatedLSTM: proj_size must be an integer >= 0 \(0: no projection\), got -1"),
    (2.0, r"proj_size must be an integer >= 0 .* got 2.0"),
    (True, r"proj_size must be an integer >= 0 .* got True"),
    ("2", r"proj_size must be an integer >= 0 .* got '2'"),
])
def test_bad_proj_size_is_refused(proj_size, match):
    with pytest.raises(ValueError, match=match):
        TruncatedLSTM(I, H, proj_size=proj_size)
    with pytest.raises(ValueError):  # nn.LSTM refuses the same sizes
        if isinstance(proj_size, int) and not isinstance(proj_size, bool):
            nn.LSTM(I, H, proj_size=proj_size)
        else:
            raise ValueError


def test_errors_name_the_argument():
    lstm = TruncatedLSTM(I, H, 2, proj_size=P, k2=5)
    x = torch.randn(4, 2, I)
    with pytest.raises(ValueError, match=r"TruncatedLSTM: state h0 must be \[num_layers, B, "
                                         r"proj_size\] = \[2, 2, 3\], got \[2, 2, 6\]"):
        lstm(x, (torch.zeros(2, 2, H), torch.zeros(2, 2, H)))  # h0 hidden_size wide
    with pytest.raises(ValueError, match=r"TruncatedLSTM: state c0 must be \[num_layers, B, "
                                         r"hidden_size\] = \[2, 2, 6\], got \[2, 2, 3\]"):
        lstm(x, (torch.zeros(2, 2, P), torch.zeros(2, 2, P)))  # c0 proj_size wide
    with pytest.raises(ValueError, match=r"state h0 must be \[num_layers, B, proj_size\] = "
                                         r"\[2, 2, 3\], got \[1, 2, 3\]"):
        lstm(x, hx=(torch.zeros(1, 2, P), torch.zeros(2, 2, H)))
    with pytest.raises(ValueError, match=r"for an unbatched 2-D input the state h0 must be 2-D "
                                         r"\[num_layers, proj_size\]"):
        lstm(x[:, 0], (torch.zeros(2, 1, P), torch.zeros(2, 1, H)))
    with pytest.raises(ValueError, match=r"TruncatedLSTM: state h0 must be \[num_layers, "
                                         r"proj_size\] = \[2, 3\], got \[2, 6\]"):
        lstm(x[:, 0], (torch.zeros(2, H), torch.zeros(2, H)))
    with pytest.raises(TypeError, match=r"TruncatedLSTM: state h0 dtype torch.float64"):
        lstm(x, (torch.zeros(2, 2, P, dtype=torch.float64), torch.zeros(2, 2, H)))
    with pytest.raises(TypeError, match="TruncatedLSTM: state must be None"):
        lstm(x, torch.zeros(2, 2, P))  # a GRU's hx
    with pytest.raises(ValueError, match=r"TruncatedLSTM: input has 3 features"):
        lstm(torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"TruncatedLSTM: the chunk has L=6 steps but k2=5"):
        lstm(torch.randn(6, 2, I))
    with pytest.raises(ValueError, match=r"TruncatedLSTM: bidirectional=True is not supported"):
        TruncatedLSTM(I, H, proj_size=P, bidirectional=True)
    # a plain LSTM's stream is not an LSTM with projections' (its h is H wide: the shape check
    # names it first; a history check backs it)
    _, plain_state = TruncatedLSTM(I, H, 2, k2=5)(x)
    with pytest.raises(ValueError, match=r"state h0 must be \[num_layers, B, proj_size\]"):
        lstm(x, plain_state)
    _, gru_state = TruncatedGRU(I, H, 2, k2=5)(x)
    with pytest.raises(TypeError, match="TruncatedLSTM: state must be None"):
        lstm(x, gru_state)
    assert TruncatedLSTM(I, H, 2, proj_size=0).cell == "lstm"  # 0: no projection


# ---------------------------------------------------------------------------------------------
# the ops (which backend runs it: tests/test_persistent.py and test_cpu_fused.py, over the
# cells)

def test_opcheck_registered_ops_for_lstmp(device):
    """The ops and their fake (shape-only) implementations agree for cell = 1: y and h_n P
    wide, c_n H wide; the backward's grad_h P wide, grad_c H wide."""
    ops = _backend.ops()
    lstm = TruncatedLSTM(3, 4, 2, proj_size=2, k2=5, device=device)
    x = torch.randn(3, 2, 3, device=device)
    _, state = lstm(x)
    ring = state.history.ring
    weights = [p.detach() for p in lstm.parameters()]
    assert len(weights) == 10
    h0 = torch.randn(2, 2, 2, device=device)
    c0 = torch.randn(2, 2, 4, device=device)
    flags = torch.zeros(3, 2, dtype=torch.uint8, device=device)
    forward_args = (x, h0, c0, flags, weights, True, None, *[t.clone() for t in ring.tensors()],
                    1, True, 0, 1, CELL_CODES["lstmp"])
    y, h_n, c_n = ops.chunk_forward(*forward_args)
    assert y.shape == (3, 2, 2) and h_n.shape == (2, 2, 2) and c_n.shape == (2, 2, 4)
    torch.library.opcheck(ops.chunk_forward.default, forward_args)
    backward_args = (torch.randn(3, 2, 2, device=device), torch.randn(2, 2, 2, device=device),
                     torch.randn(2, 2, 4, device=device), weights, True, *ring.tensors(), h0, c0,
                     3, 2, None, 0, 1, True, CELL_CODES["lstmp"])
    grad_x, grad_h, grad_c, grad_w = ops.window_backward(*backward_args)
    assert grad_x.shape == x.shape and grad_h.shape == (2, 2, 2) and grad_c.shape == (2, 2, 4)
    assert [g.shape for g in grad_w] == [w.shape for w in weights]
    torch.library.opcheck(ops.window_backward.default, backward_args)


def test_fake_ops_give_the_projected_shapes():
    """The fakes alone (torch.compile traces with them), on FakeTensors: no op runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = _backend.ops()
    with FakeTensorMode():
        weights = []
        for layer_input in (3, 2):
            weights += [torch.empty(16, layer_input), torch.empty(16, 2), torch.empty(16),
                        torch.empty(16), torch.empty(2, 4)]
        x = torch.empty(5, 7, 3)
        ring = [torch.empty(0)] * 6
        y, h_n, c_n = ops.chunk_forward(x, torch.empty(2, 7, 2), torch.empty(2, 7, 4), None,
                                        weights, True, None, *ring, 0, False, 0, 1, 1)
        assert y.shape == (5, 7, 2) and h_n.shape == (2, 7, 2) and c_n.shape == (2, 7, 4)
        assert c_n.dtype == torch.float32
        grad_x, grad_h, grad_c, grad_w = ops.window_backward(
            torch.empty(5, 7, 2), torch.empty(2, 7, 2), torch.empty(2, 7, 4), weights, True,
            *ring, torch.empty(2, 7, 2), torch.empty(2, 7, 4), 5, 4, None, 0, 1, True, 1)
        assert grad_x.shape == (5, 7, 3) and grad_h.shape == (2, 7, 2) and grad_c.shape == (2, 7, 4)
        assert [g.shape for g in grad_w] == [w.shape for w in weights]


# ---------------------------------------------------------------------------------------------
# proj_size=0 unchanged; the training helpers

def test_proj_size_zero_streams_bit_for_bit(device):
    """TruncatedLSTM(proj_size=0) and TruncatedLSTM() give the same bits over a stream with
    resets and dropout (the same code path: nothing of the projection is taken)."""
    runs = []
    for kwargs in ({}, {"proj_size": 0}):
        torch.manual_seed(0)
        lstm = TruncatedLSTM(3, 5, 2, dropout=0.2, k2=7, device=device, **kwargs)
        chunks, resets = make_stream([4, 3, 4], 2, 3, torch.float32, device, reset_prob=0.2)
        runs.append(stream_records(lstm, chunks, resets, 7))
    for a, b in zip(*runs):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def test_train_tbptt_and_set_k2_take_a_projected_lstm():
    from tbptt_cuda.train import set_k2, train_tbptt

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = TruncatedLSTM(2, 6, 2, proj_size=3, k2=4)
            self.head = nn.Linear(3, 1)

        def forward(self, x, state=None, reset=None):
            out, state = self.rnn(x, state, reset=reset)
            return self.head(out), state

    torch.manual_seed(0)
    model = Model()
    assert set_k2(model, 8) == 1 and model.rnn.k2 == 8
    gen = torch.Generator().manual_seed(1)
    chunks = [(torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 1, generator=gen))
              for _ in range(6)]
    result = train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.1),
                         nn.functional.mse_loss, chunks, progress=False)
    assert result.updates == 6 and all(math.isfinite(loss) for loss in result.losses)
    assert result.history_nbytes > 0
