"""The history ring: what is recorded when, what a backward may still read, and isolation."""
import pytest
import torch

from tbptt_cuda import TruncatedLSTM

from helpers import TOLERANCE, assert_records_close, make_stream, rel_err, run_both


def test_backward_after_history_overwritten_raises(device):
    lstm = TruncatedLSTM(3, 4, k2=6, device=device)
    out1, state = lstm(torch.randn(4, 2, 3, device=device))
    out2, state = lstm(torch.randn(4, 2, 3, device=device), state)  # overwrites chunk 1's window
    with pytest.raises(RuntimeError, match="overwritten by a later forward.*Call backward"):
        out1.sum().backward()
    out2.sum().backward()  # the newest chunk is still fine


def test_two_pending_backwards_in_order_when_ring_holds_both(device):
    # k2 large enough that chunk 2's forward overwrites nothing chunk 1 needs: the two
    # backward passes give exactly the gradients of running each right after its forward.
    dtype = torch.float64
    lstm = TruncatedLSTM(3, 4, 2, k2=20, device=device, dtype=dtype)
    x1, x2 = (torch.randn(4, 2, 3, device=device, dtype=dtype) for _ in range(2))
    out1, state = lstm(x1)
    out2, _ = lstm(x2, state)
    (out1.sum() + out2.pow(2).sum()).backward()
    together = [p.grad.clone() for p in lstm.parameters()]
    lstm.zero_grad()
    out1, state = lstm(x1)
    out1.sum().backward()
    out2, _ = lstm(x2, state)
    out2.pow(2).sum().backward()
    for a, b in zip(together, lstm.parameters()):
        assert rel_err(a, b.grad) <= TOLERANCE[dtype]


def test_no_grad_and_eval_write_no_history(device):
    lstm = TruncatedLSTM(3, 4, k2=6, device=device)
    _, state = lstm(torch.randn(3, 2, 3, device=device))
    history = state.history  # steps 0..2 are in slots 0..2; the other slots were never written
    before = [t.clone() for t in history.ring.tensors()]
    end = history.end
    with torch.no_grad():
        _, s_nograd = lstm(torch.randn(3, 2, 3, device=device), state)
    lstm.eval()
    out_eval, s_eval = lstm(torch.randn(3, 2, 3, device=device, requires_grad=True), state)
    out_eval.sum().backward()  # eval with autograd: gradient within the chunk only
    assert history.end == end
    for a, b in zip(before, history.ring.tensors()):
        if a.numel() == 0:  # no dropout mask
            continue
        dim = 1 if a.dim() == 4 else 0
        assert torch.equal(a.narrow(dim, 0, 3), b.narrow(dim, 0, 3))
    assert s_nograd.history is None and s_eval.history is None
    assert s_nograd.history_nbytes == 0
    lstm.train()
    lstm(torch.randn(3, 2, 3, device=device), state)  # the original state is still current


def test_stale_state_raises(device):
    lstm = TruncatedLSTM(3, 4, k2=6, device=device)
    _, s1 = lstm(torch.randn(3, 2, 3, device=device))
    _, s2 = lstm(torch.randn(3, 2, 3, device=device), s1)
    with pytest.raises(ValueError, match="stale"):
        lstm(torch.randn(3, 2, 3, device=device), s1)
    h, c = s1
    lstm(torch.randn(3, 2, 3, device=device), (h, c))  # a plain tuple starts a new stream


def test_ring_holds_exactly_the_outputs(device):
    # The top layer's ring rows are the chunk outputs, slot t % (k2 + 1), bit for bit.
    lstm = TruncatedLSTM(3, 4, 2, k2=5, device=device)
    state, outs = None, []
    for L in (3, 4, 2, 5, 1):
        out, state = lstm(torch.randn(L, 2, 3, device=device), state)
        outs.append(out.detach())
    steps = torch.cat(outs)
    ring = state.history.ring
    n = steps.shape[0]
    for t in range(n - ring.slots, n):
        assert torch.equal(ring.hidden[1, t % ring.slots], steps[t])


def test_strided_inputs_give_the_same_result(device):
    dtype = torch.float64
    lstm = TruncatedLSTM(3, 5, 2, k2=8, device=device, dtype=dtype)
    base = torch.randn(6, 4, 2 * 3, device=device, dtype=dtype)
    strided = base[:, :, ::2]  # non-contiguous last dim
    assert not strided.is_contiguous()
    results = []
    for x in (strided, strided.contiguous()):
        lstm.zero_grad()
        x = x.detach().requires_grad_()
        out, _ = lstm(x)
        out.pow(2).sum().backward()
        results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in lstm.parameters()]))
    (o1, g1, p1), (o2, g2, p2) = results
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


def test_nan_in_one_row_stays_in_that_row(device):
    lstm = TruncatedLSTM(3, 4, 2, k2=6, device=device, dtype=torch.float64)
    x = torch.randn(5, 3, 3, device=device, dtype=torch.float64)
    x[2, 1, 0] = float("nan")
    x.requires_grad_()
    out, (h, c) = lstm(x)
    (out.sum() + h.sum() + c.sum()).backward()
    assert torch.isnan(out[2:, 1]).any()
    assert torch.isfinite(out[:, [0, 2]]).all()
    assert torch.isfinite(x.grad[:, [0, 2]]).all()
    assert torch.isfinite(h[:, [0, 2]]).all() and torch.isfinite(c[:, [0, 2]]).all()


def test_bptt_1_n_chunks_of_one_step(device):
    # internal-state use: one step per call, state preserved
    dtype = torch.float64
    lstm = TruncatedLSTM(2, 3, device=device, dtype=dtype)
    chunks, resets = make_stream([1] * 10, 2, 2, dtype, device, reset_prob=0.1, seed=8)
    ours, ref = run_both(lstm, chunks, resets, [7] * 10, use_state=True)
    assert_records_close(ours, ref, dtype)
