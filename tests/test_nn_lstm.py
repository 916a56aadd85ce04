"""Drop-in behaviour: parameters and state_dict as nn.LSTM's, and k2=None (BPTT(k,k)) equal to
the nn peer run chunk by chunk from the detached state (every cell: nn.LSTM, nn.LSTM with
proj_size, nn.GRU)."""
import pytest
import torch
from torch import nn

from tbptt_cuda import GRUState, LSTMState, TruncatedLSTM

from helpers import (TOLERANCE, fresh_leaves, leaf_state, nn_pair, out_size, rel_err, split_state,
                     state_loss)


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
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_k2_none_equals_its_nn_peer_chunked_with_detach(bias, batch_first, num_layers, dtype,
                                                        cell, device):
    """k2=None is BPTT(k, k): each chunk's gradient stops at its start, as the nn peer (nn.LSTM,
    nn.LSTM with proj_size, nn.GRU) fed chunk by chunk from the detached state. Outputs, the
    final state, x's, the initial state's and every parameter's gradient."""
    ours, theirs = nn_pair(cell, device, dtype, batch_first=batch_first, layers=num_layers,
                           I=4, H=6, bias=bias)
    O = out_size(ours)
    assert ours.k2 is None
    B = 3
    state0, tensors = leaf_state(ours, B, device, dtype)
    xs = [torch.randn(*((B, L) if batch_first else (L, B)), 4, device=device, dtype=dtype)
          for L in (5, 3, 6)]
    tol = TOLERANCE[dtype]
    state_ours = state_theirs = None
    for i, x in enumerate(xs):
        results = []
        for module in (ours, theirs):
            module.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            leaves = []
            if i == 0:
                state, leaves = fresh_leaves(state0, tensors)
            elif module is ours:
                state = state_ours  # the stream: never detached
            elif isinstance(state_theirs, torch.Tensor):
                state = state_theirs.detach()
            else:
                state = tuple(t.detach() for t in state_theirs)
            out, new_state = module(xi, state)
            h, c = split_state(new_state)
            assert out.shape[-1] == O and h.shape == (num_layers, B, O)
            assert c is None if cell == "gru" else c.shape == (num_layers, B, 6)
            (out.pow(2).sum() + state_loss(new_state) + h[-1].pow(2).sum()).backward()
            grads = [xi.grad] + [p.grad for p in module.parameters()] + [t.grad for t in leaves]
            results.append([out, h] + ([] if c is None else [c]) + grads)
            if module is ours:
                assert isinstance(new_state, GRUState if cell == "gru" else LSTMState)
                state_ours = new_state
            else:
                state_theirs = new_state
        assert len(results[0]) == len(results[1])
        for a, b in zip(*results):
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
