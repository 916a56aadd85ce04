"""torch.autograd.gradcheck of the chunk function and torch.library.opcheck of the ops."""
import pytest
import torch
from torch.func import functional_call

from tbptt_cuda import TruncatedLSTM
from tbptt_cuda import _backend

from helpers import make_rnn, out_size, split_state


def _params(module):
    return {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}


@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda n: f"layers{n}")
def test_gradcheck_fresh_chunk(num_layers, cell, device):
    rnn = make_rnn(cell, 2, 3, num_layers, k2=4, device=device, dtype=torch.float64)
    params = _params(rnn)
    names = list(params)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(num_layers, 2, out_size(rnn), dtype=torch.float64, device=device,
                     requires_grad=True)
    c0 = torch.randn(num_layers, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    reset = torch.tensor([[False, False], [True, False], [False, False]], device=device)
    states = (h0,) if cell == "gru" else (h0, c0)  # a GRU has no c

    def fn(x, *inputs):
        state, weights = inputs[:len(states)], inputs[len(states):]
        out, state = functional_call(rnn, dict(zip(names, weights)),
                                     (x, state[0] if cell == "gru" else state), {"reset": reset})
        h, c = split_state(state)
        return (out, h) if c is None else (out, h, c)

    assert torch.autograd.gradcheck(fn, (x, *states, *params.values()))


def test_gradcheck_window_reaching_into_earlier_chunks(cell, device):
    # With k2 covering the whole stream, the second chunk's gradient w.r.t. the parameters is
    # the full derivative of its loss, which gradcheck measures by re-running both chunks.
    rnn = make_rnn(cell, 2, 3, 2, k2=8, device=device, dtype=torch.float64)
    params = _params(rnn)
    names = list(params)
    x1 = torch.randn(3, 2, 2, dtype=torch.float64, device=device)
    x2 = torch.randn(4, 2, 2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x2, *weights):
        weights = dict(zip(names, weights))
        _, state = functional_call(rnn, {n: w.detach() for n, w in weights.items()}, (x1,))
        out, state = functional_call(rnn, weights, (x2, state))
        h, c = split_state(state)
        return (out, h) if c is None else (out, h, c)

    assert torch.autograd.gradcheck(fn, (x2, *params.values()))


def test_opcheck_registered_ops(device):
    ops = _backend.ops()
    lstm = TruncatedLSTM(3, 4, 2, k2=5, device=device, dtype=torch.float32)
    x = torch.randn(3, 2, 3, device=device)
    _, state = lstm(x)
    ring = state.history.ring
    weights = [p.detach() for p in lstm.parameters()]
    h0 = torch.randn(2, 2, 4, device=device)
    c0 = torch.randn(2, 2, 4, device=device)
    reset = torch.zeros(3, 2, dtype=torch.uint8, device=device)
    forward_args = (x, h0, c0, reset, weights, True, None, *[t.clone() for t in ring.tensors()],
                    1, True)
    torch.library.opcheck(ops.chunk_forward.default, forward_args)
    grad_out = torch.randn(3, 2, 4, device=device)
    backward_args = (grad_out, torch.randn(2, 2, 4, device=device),
                     torch.randn(2, 2, 4, device=device), weights, True, *ring.tensors(),
                     h0, c0, 3, 2)
    torch.library.opcheck(ops.window_backward.default, backward_args)
