"""Drop-in behaviour: parameters and state_dict as nn.LSTM's, and k2=None (BPTT(k,k)) equal to
nn.LSTM run chunk by chunk from the detached state."""
import pytest
import torch
from torch import nn

from tbptt_cuda import TruncatedLSTM

from helpers import TOLERANCE, rel_err


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameters_and_state_dict_both_ways(bias):
    ours = TruncatedLSTM(3, 5, 2, bias=bias)
    theirs = nn.LSTM(3, 5, 2, bias=bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, p.shape) for n, p in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), n
    fresh = nn.LSTM(3, 5, 2, bias=bias)
    fresh.load_state_dict(ours.state_dict())
    for a, b in zip(fresh.parameters(), ours.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_k2_none_equals_nn_lstm_chunked_with_detach(batch_first, num_layers, dtype, device):
    theirs = nn.LSTM(4, 6, num_layers, batch_first=batch_first).to(device, dtype)
    ours = TruncatedLSTM(4, 6, num_layers, batch_first=batch_first, k2=None, device=device,
                         dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    B = 3
    h0 = torch.randn(num_layers, B, 6, device=device, dtype=dtype)
    c0 = torch.randn(num_layers, B, 6, device=device, dtype=dtype)
    xs = [torch.randn(*((B, L) if batch_first else (L, B)), 4, device=device, dtype=dtype)
          for L in (5, 3, 6)]
    tol = TOLERANCE[dtype]
    state_ours, state_theirs = None, None
    for i, x in enumerate(xs):
        results = []
        for module in (ours, theirs):
            module.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            if i == 0:
                hi, ci = h0.clone().requires_grad_(), c0.clone().requires_grad_()
                state = (hi, ci)
            elif module is ours:
                state = state_ours
            else:
                state = tuple(s.detach() for s in state_theirs)
            out, new_state = module(xi, state)
            loss = out.pow(2).sum() + new_state[0].sum() + new_state[1].pow(2).sum()
            loss.backward()
            grads = [xi.grad] + [p.grad for p in module.parameters()]
            if i == 0:
                grads += [hi.grad, ci.grad]
            results.append((out, new_state, grads))
            if module is ours:
                state_ours = new_state
            else:
                state_theirs = new_state
        (out_a, st_a, g_a), (out_b, st_b, g_b) = results
        assert rel_err(out_a, out_b) <= tol
        assert rel_err(st_a[0], st_b[0]) <= tol and rel_err(st_a[1], st_b[1]) <= tol
        for a, b in zip(g_a, g_b):
            assert rel_err(a, b) <= tol


def test_state_unpacks_like_nn_lstm():
    lstm = TruncatedLSTM(2, 3, 2, k2=4)
    out, state = lstm(torch.randn(4, 5, 2))
    h_n, c_n = state
    assert out.shape == (4, 5, 3) and h_n.shape == (2, 5, 3) and c_n.shape == (2, 5, 3)
    assert torch.equal(out[-1], h_n[-1])
    assert state.history_nbytes > 0


def test_refused_options_say_why():
    with pytest.raises(ValueError, match="bidirectional"):
        TruncatedLSTM(2, 3, bidirectional=True)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        TruncatedLSTM(2, 3, proj_size=3)  # nn.LSTM's rule (proj_size=2 works: test_lstmp.py)
