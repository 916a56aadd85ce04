"""ARTBP (unbiased truncation), after shared/research/artbp.md section 4: (a) the exact
expectation over forced windows equals TBPTT with k2 = cap, while the unweighted average and
TBPTT with k2 do not; (b) the sampler's histogram and seed; (c) Monte Carlo through
loss.backward() converges to the cap gradient and rejects the k2 one; (d) with cap >= the
stream, the mean of the summed chunk gradients is BPTT(n,n); (e) a forced window against the
reference with the same compensation factors, every cell and history mode. Float64
throughout."""
import math

import pytest
import torch

from tbptt_cuda import ARTBP, TruncatedLSTM
from tbptt_cuda.reference import ReferenceStream

from helpers import make_rnn, make_stream, out_size, rel_err, split_state

DTYPE = torch.float64
K1 = K2 = 4
CAP = 16


def _stream(device, steps=40, seed=0, width=4):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, 2, 2, generator=gen, dtype=DTYPE).to(device)
    weights = torch.randn(K1, 2, width, generator=gen, dtype=DTYPE).to(device)  # loss: sum out * R
    return [xs[i:i + K1] for i in range(0, steps, K1)], weights


def _module(device, cell="lstm"):
    torch.manual_seed(0)
    return make_rnn(cell, 2, 4, k2=K2, device=device, dtype=DTYPE)


def _last_chunk_gradient(lstm, chunks, loss_weights, window=None, artbp=None, k2=K2):
    """The last chunk's parameter gradient, after forward-only passes over the others."""
    lstm.k2, lstm.artbp = k2, artbp
    state = None
    for x in chunks[:-1]:
        _, state = lstm(x, state)
    lstm.zero_grad(set_to_none=True)
    if artbp is not None and window is not None:
        with artbp.force(window):
            out, state = lstm(chunks[-1], state)
    else:
        out, state = lstm(chunks[-1], state)
    (out * loss_weights).sum().backward()
    return torch.cat([p.grad.flatten() for p in lstm.parameters()]), state


def _exact(lstm, chunks, loss_weights, artbp):
    """E[g] and Var[g] per coordinate, over every window W in [k2, cap] weighted by P(W)."""
    probabilities = artbp.probabilities(K2)
    grads = []
    for window in range(K2, CAP + 1):
        grad, state = _last_chunk_gradient(lstm, chunks, loss_weights, window, artbp)
        assert state.window == window
        grads.append(grad)
    grads = torch.stack(grads)
    p = probabilities.to(grads).unsqueeze(1)
    mean = (p * grads).sum(0)
    return mean, (p * (grads - mean) ** 2).sum(0), grads


LAWS = {"geometric": dict(c=0.2), "power": dict(alpha=4.0, mean_length=4.0)}


@pytest.mark.parametrize("law", list(LAWS))
def test_exact_expectation_is_tbptt_with_k2_equal_to_cap(law, cell, device):
    rnn = _module(device, cell)
    chunks, loss_weights = _stream(device, width=out_size(rnn))
    artbp = ARTBP(cap=CAP, **LAWS[law])
    mean, _, grads = _exact(rnn, chunks, loss_weights, artbp)
    target, _ = _last_chunk_gradient(rnn, chunks, loss_weights, k2=CAP)
    assert rel_err(mean, target) <= 1e-10
    # negative controls: the unweighted average of plain TBPTT over W, and TBPTT with k2
    plain = torch.stack([_last_chunk_gradient(rnn, chunks, loss_weights, k2=w)[0]
                         for w in range(K2, CAP + 1)])
    assert rel_err(plain.mean(0), target) > 1e-3
    short, _ = _last_chunk_gradient(rnn, chunks, loss_weights, k2=K2)
    assert rel_err(short, target) > 1e-2
    # one window against the reference with the same compensation factors
    window = 11
    reference = ReferenceStream(rnn)
    for x in chunks[:-1]:
        reference.chunk(x, K2)
    rnn.zero_grad(set_to_none=True)
    out, _ = reference.chunk(chunks[-1], K2, window=window,
                             carry_scales=artbp.carry_scales(window, K2))
    (out * loss_weights).sum().backward()
    expected = torch.cat([p.grad.flatten() for p in rnn.parameters()])
    assert rel_err(grads[window - K2], expected) <= 1e-10


@pytest.mark.parametrize("history", ["activations", "states", "checkpoints"])
def test_forced_window_matches_the_reference(history, cell, device):
    """A forced ARTBP window of 8 steps over chunks of 3 (k2 = 3, cap 9), 2 layers: outputs, the
    final state and every gradient as the reference's with the same compensation factors on
    the carried gradient (of h, and of c where there is one)."""
    torch.manual_seed(0)
    rnn = make_rnn(cell, 2, 4, 2, k2=3, artbp=ARTBP(cap=9, c=0.3), history=history,
                   checkpoint_every=2 if history == "checkpoints" else None, device=device,
                   dtype=DTYPE)
    chunks, _ = make_stream([3, 3, 3, 3], 2, 2, DTYPE, device, seed=6)
    stream, state = ReferenceStream(rnn), None
    for x in chunks[:3]:
        _, state = rnn(x, state)
        stream.chunk(x, 3)

    def records(out, state):
        h, c = split_state(state)
        (out.pow(2).sum() + h.sum() + (c.pow(2).sum() if c is not None else 0)).backward()
        return ([out.detach(), h.detach()] + ([] if c is None else [c.detach()])
                + [p.grad.clone() for p in rnn.parameters()])

    rnn.zero_grad(set_to_none=True)
    with rnn.artbp.force(8):
        out, state = rnn(chunks[3], state)
    assert state.window == 8
    ours = records(out, state)
    rnn.zero_grad(set_to_none=True)
    theirs = records(*stream.chunk(chunks[3], 3, window=8,
                                   carry_scales=rnn.artbp.carry_scales(8, 3)))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("law", list(LAWS))
def test_sampler_histogram_and_seed(law):
    artbp = ARTBP(cap=CAP, generator=torch.Generator().manual_seed(3), **LAWS[law])
    probabilities = artbp.probabilities(K2)
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (probabilities > 0).all()
    n = 100_000
    draws = torch.tensor([artbp.sample(K2) for _ in range(n)])
    assert draws.min() >= K2 and draws.max() <= CAP
    counts = torch.bincount(draws - K2, minlength=CAP - K2 + 1).double()
    expected = n * probabilities
    assert ((counts - expected).abs() <= 5 * (expected * (1 - probabilities)).sqrt()).all()
    assert draws.double().mean().item() == pytest.approx(artbp.mean_window(K2), rel=0.01)
    again = ARTBP(cap=CAP, generator=torch.Generator().manual_seed(3), **LAWS[law])
    assert [again.sample(K2) for _ in range(1000)] == draws[:1000].tolist()
    # S(j) = P(W >= j): 1 up to k2, 0 beyond cap, and its drops are the probabilities
    s = [artbp.survival(j, K2) for j in range(0, CAP + 2)]
    assert s[:K2 + 1] == [1.0] * (K2 + 1) and s[CAP + 1] == 0.0
    s = torch.tensor(s, dtype=torch.float64)
    assert torch.allclose(s[K2:CAP + 1] - s[K2 + 1:], probabilities)
    with artbp.force(9):
        assert artbp.sample(K2) == 9


def test_monte_carlo_mean_is_within_five_standard_errors_of_the_cap_gradient():
    device = torch.device("cpu")
    lstm = _module(device)
    chunks, loss_weights = _stream(device, steps=16)  # cap = 16 covers the whole stream
    artbp = ARTBP(cap=CAP, c=0.2, generator=torch.Generator().manual_seed(7))
    mean, variance, _ = _exact(lstm, chunks, loss_weights, artbp)
    target, _ = _last_chunk_gradient(lstm, chunks, loss_weights, k2=CAP)
    short, _ = _last_chunk_gradient(lstm, chunks, loss_weights, k2=K2)
    n = 600
    total = torch.zeros_like(mean)
    for _ in range(n):  # through loss.backward(), a fresh stream per draw
        total += _last_chunk_gradient(lstm, chunks, loss_weights, artbp=artbp)[0]
    estimate = total / n
    standard_error = variance.sqrt() / math.sqrt(n)
    assert ((estimate - target).abs() <= 5 * standard_error + 1e-12).all()
    z_short = ((estimate - short).abs() / (standard_error + 1e-300)).max().item()
    assert z_short > 10, z_short


def test_cap_beyond_the_stream_gives_bptt_n_n_in_the_mean():
    device = torch.device("cpu")
    lstm = _module(device)
    chunks, loss_weights = _stream(device, steps=16)
    artbp = ARTBP(cap=CAP, c=0.25, generator=torch.Generator().manual_seed(11))
    # BPTT(n,n): the whole stream as one chunk, the summed loss of all chunks
    lstm.k2, lstm.artbp = None, None
    lstm.zero_grad(set_to_none=True)
    out, _ = lstm(torch.cat(chunks))
    (out * loss_weights.repeat(len(chunks), 1, 1)).sum().backward()
    full = torch.cat([p.grad.flatten() for p in lstm.parameters()])
    lstm.k2, lstm.artbp = K2, artbp
    n, streams = 300, []
    for _ in range(n):
        state = None
        lstm.zero_grad(set_to_none=True)
        for x in chunks:  # gradients accumulate over the stream's chunks
            out, state = lstm(x, state)
            (out * loss_weights).sum().backward()
        streams.append(torch.cat([p.grad.flatten() for p in lstm.parameters()]))
    streams = torch.stack(streams)
    mean, error = streams.mean(0), streams.std(0) / math.sqrt(n)
    assert ((mean - full).abs() <= 5 * error + 1e-12).all()
    # and plain TBPTT(4, 4) is biased: far from it
    lstm.artbp = None
    lstm.zero_grad(set_to_none=True)
    state = None
    for x in chunks:
        out, state = lstm(x, state)
        (out * loss_weights).sum().backward()
    truncated = torch.cat([p.grad.flatten() for p in lstm.parameters()])
    assert ((truncated - full).abs() / (error + 1e-300)).max() > 10


def test_ring_holds_cap_plus_one_steps_and_window_is_reported():
    lstm = TruncatedLSTM(2, 3, k2=4, artbp=ARTBP(cap=10, c=0.3))
    state = None
    for _ in range(5):
        out, state = lstm(torch.randn(4, 1, 2), state)
        out.sum().backward()
        assert 4 <= state.window <= 10
    assert state.history.ring.slots == 11
    assert "artbp=ARTBP(cap=10, c=0.3)" in repr(lstm)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(cap=0), ValueError, "cap must be a positive integer"),
    (dict(cap=8, c=1.5), ValueError, r"c must be in \(0, 1\)"),
    (dict(cap=8, c=0.2, alpha=3), ValueError, "either c .* or alpha"),
    (dict(cap=8, alpha=2.0), ValueError, "alpha must be a number > 2"),
    (dict(cap=8, generator=3), TypeError, "generator must be a torch.Generator"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ARTBP(**kwargs)


def test_module_rules_for_artbp():
    with pytest.raises(TypeError, match="artbp must be None or a tbptt_cuda.ARTBP"):
        TruncatedLSTM(2, 3, k2=4, artbp=16)
    with pytest.raises(ValueError, match=r"artbp needs k2, the shortest backward length, set and in "
                                         r"\[chunk length, cap\] = \[4, 8\], got k2=None"):
        TruncatedLSTM(2, 3, artbp=ARTBP(cap=8))(torch.randn(4, 1, 2))
    with pytest.raises(ValueError, match=r"got k2=9"):
        TruncatedLSTM(2, 3, k2=9, artbp=ARTBP(cap=8))(torch.randn(4, 1, 2))
    with pytest.raises(ValueError, match="L=5 steps but k2=4"):
        TruncatedLSTM(2, 3, k2=4, artbp=ARTBP(cap=8))(torch.randn(5, 1, 2))
