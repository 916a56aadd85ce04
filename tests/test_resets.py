"""Resets truly reset: the state entering a reset step is replaced by zeros (a select), so NaN or
Inf before a reset reaches neither the outputs nor any gradient after it, on every backend and
for windows that reach back across the reset; and the reference agrees."""
import pytest
import torch

from tbptt_cuda import TruncatedLSTM
from tbptt_cuda.reference import ReferenceStream

from helpers import TOLERANCE, make_rnn, rel_err, split_state


def _bad_stream(bad, device, dtype):
    """Three chunks of 4 steps, B=3: row 0 gets `bad` at step 2 of chunk 1 and is reset at the
    first step of chunk 2; row 2 is reset at step 1 of chunk 3."""
    gen = torch.Generator().manual_seed(4)
    chunks = [torch.randn(4, 3, 2, generator=gen, dtype=torch.float64).to(device, dtype)
              for _ in range(3)]
    chunks[0][2, 0, 1] = bad
    resets = [None, torch.zeros(4, 3, dtype=torch.bool, device=device),
              torch.zeros(4, 3, dtype=torch.bool, device=device)]
    resets[1][0, 0] = True
    resets[2][1, 2] = True
    return chunks, resets


def _run(lstm, chunks, resets, k2, reference=False):
    stream = ReferenceStream(lstm) if reference else None
    state, records = None, []
    for x, reset in zip(chunks, resets):
        lstm.zero_grad(set_to_none=True)
        if reference:
            out, state = stream.chunk(x, k2, reset=reset)
        else:
            lstm.k2 = k2
            out, state = lstm(x, state, reset=reset)
        h, c = split_state(state)
        c = h.new_zeros(0) if c is None else c  # a GRU has no c
        (out.sum() + h.sum() + c.pow(2).sum()).backward()
        records.append({"out": out.detach(), "h": h.detach(), "c": c.detach(),
                        "grads": [p.grad.clone() for p in lstm.parameters()]})
    return records


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("k2", [None, 4, 7, 12], ids=lambda k: f"k2={k}")
def test_nothing_of_a_bad_record_survives_a_reset(k2, bad, cell, device):
    # k2 = 7 and 12: the windows of chunks 2 and 3 reach back across the reset into the steps
    # with non-finite activations.
    dtype = torch.float64
    rnn = make_rnn(cell, 2, 4, 2, device=device, dtype=dtype)
    chunks, resets = _bad_stream(bad, device, dtype)
    ours = _run(rnn, chunks, resets, k2)
    # the bad record does damage where it is (NaN outputs; Inf saturates the gates, so finite
    # outputs but non-finite gradients), and other rows' outputs are untouched
    first = ours[0]
    assert not (torch.isfinite(first["out"]).all() and all(torch.isfinite(g).all() for g in first["grads"]))
    assert torch.isfinite(first["out"][:, 1:]).all()
    for later in ours[1:]:
        assert torch.isfinite(later["out"]).all()
        assert torch.isfinite(later["h"]).all() and torch.isfinite(later["c"]).all()
        for grad in later["grads"]:
            assert torch.isfinite(grad).all()
    reference = _run(rnn, chunks, resets, k2, reference=True)
    for a, b in zip(ours[1:], reference[1:]):
        for key in ("out", "h", "c"):
            if b[key].numel():
                assert rel_err(a[key], b[key]) <= TOLERANCE[dtype]
        for ga, gb in zip(a["grads"], b["grads"]):
            assert rel_err(ga, gb) <= TOLERANCE[dtype]


def test_a_reset_inside_the_chunk_clears_the_outputs_after_it(device):
    lstm = TruncatedLSTM(2, 4, device=device)
    x = torch.randn(6, 2, 2, device=device)
    x[1, 0, 0] = float("nan")
    reset = torch.zeros(6, 2, dtype=torch.bool, device=device)
    reset[3, 0] = True
    out, (h, c) = lstm(x, reset=reset)
    assert torch.isnan(out[1:3, 0]).all()
    assert torch.isfinite(out[3:]).all() and torch.isfinite(h).all() and torch.isfinite(c).all()


def test_a_reset_replaces_a_non_finite_explicit_state(device):
    lstm = TruncatedLSTM(2, 3, 2, device=device)
    h0 = torch.full((2, 2, 3), float("nan"), device=device)
    c0 = torch.full((2, 2, 3), float("inf"), device=device)
    out, (h, c) = lstm(torch.randn(3, 2, 2, device=device), (h0, c0),
                       reset=torch.tensor([True, False], device=device))
    assert torch.isfinite(out[:, 0]).all() and torch.isfinite(h[:, 0]).all()
    assert torch.isnan(out[:, 1]).all()
