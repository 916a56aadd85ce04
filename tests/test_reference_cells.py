"""tbptt_cuda/reference.py for the cells of issue 18 (lstm, lstmp = nn.LSTM(proj_size=P), gru),
held to torch.nn and to hand-made computations, with no code of ours beside the reference: the
reference is what the fused backends will be checked against, so it is checked here on its own.

CPU, float64: "equal" is 1e-12 (absolute; values and gradients are O(1)).
"""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tbptt_cuda.reference import (CELLS, GRU, LSTM, LSTMP, Cell, ReferenceStream, cell_of,
                                  gru_cell, layer_weights, lstm_cell, run_steps)

DT = torch.float64
I, H, P, B = 3, 5, 2, 4  # input, hidden, projection (lstmp: h has P), batch
TOL = 1e-12
CELL_NAMES = ["lstm", "lstmp", "gru"]


def make(cell, layers=2, bias=True, batch_first=False, seed=0):
    torch.manual_seed(seed)
    if cell == "gru":
        return nn.GRU(I, H, layers, bias=bias, batch_first=batch_first, dtype=DT)
    return nn.LSTM(I, H, layers, bias=bias, batch_first=batch_first, dtype=DT,
                   proj_size=P if cell == "lstmp" else 0)


def sizes(cell):
    """One layer's state tensors' sizes, in the cell's order."""
    return {"lstm": (H, H), "lstmp": (P, H), "gru": (H,)}[cell]


def out_size(cell):
    return sizes(cell)[0]


def as_tuple(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def as_nn(cell, state):
    """A state tuple as torch.nn takes it: a tensor for the GRU, (h, c) for an LSTM."""
    return state[0] if cell == "gru" else tuple(state)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def loss_of(out, state, seed):
    """A loss with every output and state tensor in it, nonlinear in the last (c or h)."""
    state = as_tuple(state)
    loss = (out * randn(*out.shape, seed=seed)).sum()
    for k, s in enumerate(state):
        loss = loss + (s * randn(*s.shape, seed=seed + 1 + k)).sum()
    return loss + 0.3 * (state[-1] ** 2).sum()


def grads(loss, module, inputs):
    """d loss / d (every parameter, then every input)."""
    return torch.autograd.grad(loss, list(module.parameters()) + list(inputs))


def assert_all_close(ours, theirs, what=""):
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"{what}[{k}]: {tuple(a.shape)} vs {tuple(b.shape)}"
        err = (a - b).abs().max().item()
        assert err <= TOL, f"{what}[{k}]: max abs diff {err:.3g} > {TOL}"


def start_state(cell, layers, seed, requires_grad=True):
    return tuple(randn(layers, B, size, seed=seed + k).requires_grad_(requires_grad)
                 for k, size in enumerate(sizes(cell)))


# ---------------------------------------------------------------------------------------------
# The cell description, the weights, the pick from the module.

def test_the_cell_of_each_torch_nn_module_and_its_weights():
    assert cell_of(nn.LSTM(I, H, 2)) is LSTM
    assert cell_of(nn.LSTM(I, H, 2, proj_size=P)) is LSTMP
    assert cell_of(nn.GRU(I, H, 2)) is GRU
    assert sorted(CELLS) == ["gru", "lstm", "lstmp"]
    assert [len(w) for w in layer_weights(nn.LSTM(I, H, 2))] == [4, 4]   # as before issue 18
    assert [len(w) for w in layer_weights(nn.GRU(I, H, 2, bias=False))] == [4, 4]
    weights = layer_weights(nn.LSTM(I, H, 2, proj_size=P))
    assert [tuple(w[4].shape) for w in weights] == [(P, H), (P, H)]
    assert LSTMP.sizes(weights[1]) == (P, H)
    assert GRU.sizes(layer_weights(nn.GRU(I, H))[0]) == (H,)
    assert LSTM.sizes(layer_weights(nn.LSTM(I, H))[0]) == (H, H)
    # a `cell` attribute names the cell and must agree with the weights
    named = nn.GRU(I, H)
    named.cell = "gru"
    assert cell_of(named) is GRU
    named.cell = "lstm"
    with pytest.raises(ValueError, match="weights are a 'gru'"):
        cell_of(named)
    with pytest.raises(ValueError, match="neither a GRU"):
        cell_of(nn.RNN(I, H))
    with pytest.raises(ValueError, match="no cell state"):
        ReferenceStream(nn.GRU(I, H), torch.zeros(1, B, H), torch.zeros(1, B, H))


def test_gru_cell_is_torch_gru_cell():
    torch.manual_seed(1)
    ref = nn.GRUCell(I, H, dtype=DT)
    x, h = randn(B, I, seed=2), randn(B, H, seed=3)
    theirs = ref(x, h)
    ours = gru_cell(x, h, ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh)
    assert_all_close([ours], [theirs], "h")


def test_lstm_cell_with_projection_shapes():
    torch.manual_seed(1)
    w = layer_weights(nn.LSTM(I, H, proj_size=P, dtype=DT))[0]
    h, c = lstm_cell(randn(B, I, seed=2), randn(B, P, seed=3), randn(B, H, seed=4), *w)
    assert h.shape == (B, P) and c.shape == (B, H)


# ---------------------------------------------------------------------------------------------
# BPTT(n, n): the reference is torch.nn.

@pytest.mark.parametrize("explicit", [False, True], ids=["zero_state", "explicit_state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layers", [1, 2], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_one_chunk_equals_torch_nn(cell, layers, bias, batch_first, explicit):
    """k2=None over one chunk: outputs, final state and every gradient (parameters, x, the
    explicit initial state) are torch.nn's on the same weights."""
    module = make(cell, layers, bias, batch_first)
    x = randn(7, B, I, seed=10).requires_grad_()
    start = start_state(cell, layers, seed=20) if explicit else ()

    out, state = ReferenceStream(module, *start).chunk(x, None)
    ours = [out, *as_tuple(state), *grads(loss_of(out, state, 30), module, (x,) + start)]

    x_nn = x.transpose(0, 1) if batch_first else x  # the test does torch.nn's batch_first
    out_nn, state_nn = module(x_nn, as_nn(cell, start) if explicit else None)
    out_nn = out_nn.transpose(0, 1) if batch_first else out_nn
    theirs = [out_nn, *as_tuple(state_nn),
              *grads(loss_of(out_nn, state_nn, 30), module, (x,) + start)]
    assert_all_close(ours, theirs, cell)


@pytest.mark.parametrize("explicit", [False, True], ids=["zero_state", "explicit_state"])
@pytest.mark.parametrize("layers", [1, 2], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_chunks_with_k2_beyond_the_stream_equal_torch_nn(cell, layers, explicit):
    """k2 >= the stream over several chunks: each chunk's gradient is torch.nn's BPTT over the
    whole stream so far, with the loss on that chunk's outputs (the explicit initial state
    gets gradient from the first chunk only)."""
    module = make(cell, layers)
    chunks = [randn(L, B, I, seed=40 + i) for i, L in enumerate([3, 1, 4, 2])]
    start = start_state(cell, layers, seed=50) if explicit else ()
    stream = ReferenceStream(module, *start)
    a = 0
    for i, chunk in enumerate(chunks):
        x = chunk.clone().requires_grad_()
        inputs = (x,) + (start if i == 0 else ())
        out, state = stream.chunk(x, 100)
        ours = [out, *as_tuple(state), *grads(loss_of(out, state, 60 + i), module, inputs)]

        x_nn = chunk.clone().requires_grad_()
        given = tuple(s if i == 0 else s.detach() for s in start)
        whole = torch.cat([c for c in chunks[:i]] + [x_nn])
        out_nn, state_nn = module(whole, as_nn(cell, given) if explicit else None)
        out_nn = out_nn[a:]
        inputs_nn = (x_nn,) + (start if i == 0 else ())
        theirs = [out_nn, *as_tuple(state_nn),
                  *grads(loss_of(out_nn, state_nn, 60 + i), module, inputs_nn)]
        assert_all_close(ours, theirs, f"{cell} chunk {i}")
        a += chunk.shape[0]


# ---------------------------------------------------------------------------------------------
# Truncation: the window, recomputed by hand with torch.nn.

@pytest.mark.parametrize("cell", CELL_NAMES)
def test_truncated_window_equals_a_hand_recomputation(cell):
    """k2 < the stream: torch.nn run without gradient to the window's start, then with
    gradient over the window [max(b - k2, 0), b); the loss on the chunk's outputs and state."""
    module, k2, layers = make(cell, 2), 6, 2
    chunks = [randn(L, B, I, seed=70 + i) for i, L in enumerate([3, 4, 2, 5, 1])]
    start = start_state(cell, layers, seed=80)
    stream = ReferenceStream(module, *start)
    a = 0
    for i, chunk in enumerate(chunks):
        b = a + chunk.shape[0]
        w = max(b - k2, 0)
        x = chunk.clone().requires_grad_()
        inputs = (x,) + (start if i == 0 else ())
        out, state = stream.chunk(x, k2)
        ours = [out, *as_tuple(state), *grads(loss_of(out, state, 90 + i), module, inputs)]

        x_nn = chunk.clone().requires_grad_()
        history = torch.cat(chunks[:i]) if i else chunk[:0]
        given = as_nn(cell, tuple(s if i == 0 else s.detach() for s in start))
        if w > 0:
            with torch.no_grad():
                _, given = module(history[:w], given)
        out_nn, state_nn = module(torch.cat([history[w:a], x_nn]), given)
        out_nn = out_nn[a - w:]
        inputs_nn = (x_nn,) + (start if i == 0 else ())
        theirs = [out_nn, *as_tuple(state_nn),
                  *grads(loss_of(out_nn, state_nn, 90 + i), module, inputs_nn)]
        assert_all_close(ours, theirs, f"{cell} chunk {i} window [{w}, {b})")
        a = b


# ---------------------------------------------------------------------------------------------
# Resets, holds, dropout masks.

@pytest.mark.parametrize("cell", ["lstmp", "gru"])
def test_a_reset_keeps_nan_out_and_stops_gradient(cell):
    """NaN in row 1's state before its reset (at the chunk's first step, with the window
    reaching back over the NaN) reaches no output, state or gradient; the reset zeroes every
    layer; a reset of row 0 inside the chunk stops the gradient to row 0's earlier steps."""
    module = make(cell, 2)
    x0 = randn(4, B, I, seed=100)
    x1 = randn(3, B, I, seed=101)
    reset = torch.zeros(3, B, dtype=torch.bool)
    reset[0, 1] = True
    reset[2, 0] = True
    poisoned = x0.clone()
    poisoned[1, 1] = float("nan")

    def run(first):
        stream = ReferenceStream(module)
        stream.chunk(first, 7)
        x = x1.clone().requires_grad_()
        out, state = stream.chunk(x, 7, reset=reset)
        return x, out, state

    x, out, state = run(poisoned)
    ours = [out, *as_tuple(state), *grads(loss_of(out, state, 110), module, (x,))]
    for k, t in enumerate(ours):
        assert torch.isfinite(t).all(), f"{cell}: NaN reached tensor {k}"
    # ... and the values are those of the same stream without the NaN
    xc, outc, statec = run(x0)
    assert_all_close(ours, [outc, *as_tuple(statec),
                            *grads(loss_of(outc, statec, 110), module, (xc,))], cell)
    # row 1 after its reset is torch.nn from zeros, in every layer
    out_row, state_row = module(x1[:, 1:2])
    assert_all_close([out[:, 1:2], *(s[:, 1:2] for s in as_tuple(state))],
                     [out_row, *as_tuple(state_row)], f"{cell} row 1")
    # row 0's outputs after its reset at step 2 do not depend on row 0's steps before it
    x = x1.clone().requires_grad_()
    stream = ReferenceStream(module)
    stream.chunk(x0, 7)
    out, _ = stream.chunk(x, 7, reset=reset)
    (g,) = torch.autograd.grad(out[2:].sum(), x)
    assert torch.equal(g[:2, 0], torch.zeros_like(g[:2, 0]))
    assert (g[:, 2:] != 0).any()


@pytest.mark.parametrize("cell", ["lstmp", "gru"])
def test_held_rows_keep_their_state_and_output_zero(cell):
    """A packed chunk: row 1 ends after 2 steps of chunk 0, row 3 after 4 (holds past the
    end). Held outputs are zero; the state stays that of the row's last step; the stream goes
    on from it. Checked against torch.nn run on each row's own steps."""
    module = make(cell, 2)
    x0, x1 = randn(5, B, I, seed=120), randn(3, B, I, seed=121)
    hold = torch.zeros(5, B, dtype=torch.bool)
    hold[2:, 1] = True
    hold[4:, 3] = True
    stream = ReferenceStream(module)
    out0, state0 = stream.chunk(x0, 8, hold=hold)
    assert torch.equal(out0[hold], torch.zeros_like(out0[hold]))
    x = x1.clone().requires_grad_()
    out, state = stream.chunk(x, 8)  # the window reaches back over the held steps
    ours = [out0.detach(), *as_tuple(state0), out, *as_tuple(state),
            *grads(loss_of(out, state, 130), module, (x,))]

    # by hand: every row alone through torch.nn, over its own (unheld) steps
    x_nn = x1.clone().requires_grad_()
    rows0, states0, rows1, states1 = [], [], [], []
    for r in range(B):
        own = x0[~hold[:, r], r:r + 1]
        out_r, state_r = module(own)
        rows0.append(torch.cat([out_r, out_r.new_zeros(5 - own.shape[0], 1, out_r.shape[2])]))
        states0.append(as_tuple(state_r))
        out_r, state_r = module(x_nn[:, r:r + 1], state_r)
        rows1.append(out_r)
        states1.append(as_tuple(state_r))
    out_nn = torch.cat(rows1, 1)
    state_nn = tuple(torch.cat(s, 1) for s in zip(*states1))
    theirs = [torch.cat(rows0, 1).detach(), *(torch.cat(s, 1) for s in zip(*states0)),
              out_nn, *state_nn, *grads(loss_of(out_nn, state_nn, 130), module, (x_nn,))]
    assert_all_close(ours, theirs, cell)


def _single_layers(module, cell):
    """One single-layer torch.nn module per layer of `module`, sharing its parameters."""
    layers = []
    for k in range(module.num_layers):
        size = I if k == 0 else out_size(cell)  # a layer above the first takes h (P for lstmp)
        one = (nn.GRU(size, H, bias=module.bias, dtype=DT) if cell == "gru" else
               nn.LSTM(size, H, bias=module.bias, dtype=DT, proj_size=P if cell == "lstmp" else 0))
        for name, _ in list(one.named_parameters()):
            setattr(one, name, getattr(module, name.replace("_l0", f"_l{k}")))
        layers.append(one)
    return layers


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_dropout_masks_multiply_each_layers_input(cell):
    """masks [layers-1, L, B, O] (O = P for lstmp) multiply the input of layers 1..: the same
    as single-layer torch.nn modules stacked by hand with the mask between them."""
    module = make(cell, 3)
    x = randn(6, B, I, seed=140).requires_grad_()
    masks = (torch.rand(2, 6, B, out_size(cell), generator=torch.Generator().manual_seed(141))
             < 0.6).to(DT) / 0.6
    out, state = ReferenceStream(module).chunk(x, None, masks=masks)
    ours = [out, *as_tuple(state), *grads(loss_of(out, state, 150), module, (x,))]

    layer_input, finals = x, []
    for k, one in enumerate(_single_layers(module, cell)):
        if k > 0:
            layer_input = layer_input * masks[k - 1]
        layer_input, final = one(layer_input)
        finals.append(as_tuple(final))
    state_nn = tuple(torch.cat(s) for s in zip(*finals))
    theirs = [layer_input, *state_nn,
              *grads(loss_of(layer_input, state_nn, 150), module, (x,))]
    assert_all_close(ours, theirs, cell)


# ---------------------------------------------------------------------------------------------
# ARTBP's carry scales.

def _last_chunk(module, window=None, carry_scales=None, k2=4):
    """Chunks of 3, 4, 3 steps; the last with the window and scales given.
    -> [out, *final state, *parameter grads, x grad]"""
    chunks = [randn(L, B, I, seed=160 + i) for i, L in enumerate([3, 4, 3])]
    stream = ReferenceStream(module)
    for chunk in chunks[:-1]:
        stream.chunk(chunk, k2)
    x = chunks[-1].clone().requires_grad_()
    out, state = stream.chunk(x, k2, window=window, carry_scales=carry_scales)
    return [out, *as_tuple(state), *grads(loss_of(out, state, 170), module, (x,))]


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_carry_scales_of_one_are_the_plain_window(cell):
    module = make(cell, 2)
    plain = _last_chunk(module, window=8)
    ones = _last_chunk(module, window=8, carry_scales=[1.0] * 8)
    assert all(torch.equal(a, b) for a, b in zip(plain, ones))
    with pytest.raises(ValueError, match="7 factors for a window of 8"):
        _last_chunk(module, window=8, carry_scales=[1.0] * 7)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_a_carry_scale_scales_the_gradient_crossing_that_step(cell):
    """Window [2, 10) (8 steps), factor s on window step j = 3 (global step 5, inside the
    previous chunk). Every path from the loss (steps 7..9) to a parameter use at a step <= 5
    crosses 5 -> 6 once, in some state tensor (h or c, any layer), so the gradient is
    (1 - s) * G_short + s * G_long, where G_long is the plain 8-step window and G_short the
    plain window [6, 10) (4 steps: s = 0 cuts there). Outputs and x's gradient do not depend
    on s."""
    module = make(cell, 2)
    long, short = _last_chunk(module, window=8), _last_chunk(module, window=4)
    n_values = 1 + len(sizes(cell))  # out and the final state
    for s in [0.0, 2.5, -0.7]:
        scaled = _last_chunk(module, window=8, carry_scales=[1, 1, 1, s, 1, 1, 1, 1])
        assert_all_close(scaled[:n_values], long[:n_values], f"{cell} values, s={s}")
        assert_all_close(scaled[-1:], long[-1:], f"{cell} x grad, s={s}")
        expected = [(1 - s) * gs + s * gl for gs, gl in zip(short, long)]
        assert_all_close(scaled[n_values:-1], expected[n_values:-1], f"{cell} grads, s={s}")
    assert any((gs - gl).abs().max() > 1e-6 for gs, gl in zip(short, long))  # s matters


# ---------------------------------------------------------------------------------------------
# gradcheck through ReferenceStream.chunk.

@pytest.mark.parametrize("cell", ["lstmp", "gru"])
def test_gradcheck_through_reference_chunks(cell):
    """float64, tiny: the second chunk of a stream, with a reset and a hold. With k2 over the
    whole stream the window's gradient is the total derivative: gradcheck in x and every
    parameter. With k2 = 3 (the window starts inside the first chunk) it is the derivative with
    the state before the window held fixed, by definition, so only x (inside the window) is
    gradchecked there; the parameters' truncated gradient is the hand recomputation's above."""
    torch.manual_seed(3)
    module = (nn.GRU(2, 3, 2, dtype=DT) if cell == "gru"
              else nn.LSTM(2, 3, 2, proj_size=2, dtype=DT))
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    first = randn(3, 2, 2, seed=180)
    x = randn(2, 2, 2, seed=181).requires_grad_()
    reset = torch.tensor([[False, False], [True, False]])
    hold = torch.tensor([[False, False], [False, True]])

    def chunk(k2, x, *values):
        weights = SimpleNamespace(num_layers=2, **dict(zip(names, values or params)))
        stream = ReferenceStream(weights)
        stream.chunk(first, k2)
        out, state = stream.chunk(x, k2, reset=reset, hold=hold)
        return (out, *as_tuple(state))

    assert torch.autograd.gradcheck(lambda *inputs: chunk(5, *inputs), (x, *params))
    assert torch.autograd.gradcheck(lambda x: chunk(3, x), (x,))


def test_run_steps_keeps_its_lstm_call_and_takes_the_other_cells():
    """run_steps(x, h, c, weights, ...) as before issue 18, c None for a GRU (cell from the
    weights); it returns torch.nn's state: (h, c) for an LSTM, the tensor h for a GRU."""
    for cell in CELL_NAMES:
        module = make(cell, 2)
        x = randn(5, B, I, seed=190)
        start = start_state(cell, 2, seed=191, requires_grad=False)
        out, state = run_steps(x, *(start + (None,))[:2], layer_weights(module))
        out_nn, state_nn = module(x, as_nn(cell, start))
        assert type(state) is type(state_nn)
        assert_all_close([out, *as_tuple(state)], [out_nn, *as_tuple(state_nn)], cell)
    assert isinstance(CELLS["gru"], Cell)
