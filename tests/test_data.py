"""Data preparation (tbptt_cuda.data): as-is, naive split, streaming, ACF/PACF k, grid search."""
import math
import sys

import numpy as np
import pytest
import torch

from tbptt_cuda import TruncatedLSTM
from tbptt_cuda.data import (
    SequenceStream,
    as_sequences,
    autocorrelation,
    bartlett_band,
    grid_search_k,
    partial_autocorrelation,
    split_sequences,
    suggest_k,
)


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield


def numbered(length, seq_id, features=None):
    """A sequence whose values name it: value = 1000 * (seq_id + 1) + step (+ 0.1 * feature)."""
    steps = torch.arange(length, dtype=torch.float64) + 1000.0 * (seq_id + 1)
    if features is None:
        return steps
    return steps[:, None] + 0.1 * torch.arange(features, dtype=torch.float64)[None, :]


# ----------------------------------------------------------------------------------------
# as-is


def test_as_sequences_adds_feature_dim_to_univariate_batches():
    x = np.random.default_rng(0).normal(size=(100, 25))
    out = as_sequences(x)
    assert out.shape == (100, 25, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out[..., 0].double(), torch.from_numpy(x), atol=1e-6)


def test_as_sequences_keeps_multivariate_batches():
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    assert torch.equal(as_sequences(x, dtype=None), x)


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(2, 3, 4, 5), torch.zeros(0, 4)])
def test_as_sequences_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match=r"x must be|at least one"):
        as_sequences(bad)


# ----------------------------------------------------------------------------------------
# naive split


def expected_split(seqs, k1):
    """Hand-rolled split: per sequence, per chunk, copy the steps one by one."""
    chunks, starts, lengths = [], [], []
    for s in seqs:
        s = s if s.dim() == 2 else s[:, None]
        for first in range(0, s.shape[0], k1):
            chunk = torch.zeros(k1, s.shape[1], dtype=s.dtype)
            n = 0
            for t in range(first, min(first + k1, s.shape[0])):
                chunk[t - first] = s[t]
                n += 1
            chunks.append(chunk)
            starts.append(first == 0)
            lengths.append(n)
    return torch.stack(chunks), torch.tensor(starts), torch.tensor(lengths)


@pytest.mark.parametrize(
    "lengths,k1,features",
    [
        ([7, 3, 10], 4, None),      # uneven lengths
        ([3], 5, None),             # T < k1
        ([8, 12], 4, None),         # T a multiple of k1
        ([9], 4, None),             # one sequence
        ([6, 5], 4, 3),             # F > 1
        ([5, 2, 4], 1, 2),          # k1 = 1
    ],
    ids=["uneven", "T<k1", "T%k1==0", "one-sequence", "F>1", "k1=1"],
)
def test_split_sequences_matches_hand_split(lengths, k1, features):
    seqs = [numbered(n, i, features) for i, n in enumerate(lengths)]
    got = split_sequences(seqs, k1)
    chunks, starts, lens = expected_split(seqs, k1)
    assert got.chunks.shape == (sum(math.ceil(n / k1) for n in lengths), k1, features or 1)
    assert torch.equal(got.chunks, chunks)
    assert torch.equal(got.starts, starts)
    assert torch.equal(got.lengths, lens)
    assert int(got.starts.sum()) == len(lengths)


def test_split_sequences_round_trip_and_padding_is_zero():
    seqs = [numbered(n, i, 2) for i, n in enumerate([11, 4, 9])]
    got = split_sequences(seqs, 4)
    rebuilt, current = [], None
    for chunk, start, length in zip(got.chunks, got.starts, got.lengths):
        if start:
            current = []
            rebuilt.append(current)
        current.append(chunk[:length])
        assert torch.count_nonzero(chunk[length:]) == 0
    for original, pieces in zip(seqs, rebuilt):
        assert torch.equal(torch.cat(pieces), original)


def test_split_sequences_documented_example_50000_steps():
    x = torch.randn(100, 50_000)
    got = split_sequences(x, 500)
    assert got.chunks.shape == (10_000, 500, 1)
    assert int(got.starts.sum()) == 100
    assert torch.equal(torch.nonzero(got.starts).flatten(), torch.arange(0, 10_000, 100))
    assert bool((got.lengths == 500).all())
    assert torch.equal(got.chunks[101, :, 0], x[1, 500:1000])


@pytest.mark.parametrize("k1", [0, -3, 2.5, True])
def test_split_sequences_rejects_bad_k1(k1):
    with pytest.raises(ValueError, match="k1 must be an integer >= 1"):
        split_sequences(torch.zeros(2, 6), k1)


def test_split_sequences_rejects_bad_sequences():
    with pytest.raises(ValueError, match=r"x\[1\] has no steps"):
        split_sequences([torch.zeros(3), torch.zeros(0)], 2)
    with pytest.raises(ValueError, match="same per-step shape"):
        split_sequences([torch.zeros(3, 2), torch.zeros(3, 4)], 2)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        split_sequences(torch.zeros(10), 2)
    with pytest.raises(TypeError, match="x must be"):
        split_sequences("abc", 2)


# ----------------------------------------------------------------------------------------
# streaming


def stream_to_lanes(stream):
    """Concatenate a stream's chunks along time: inputs [B, T, ...], reset/valid [B, T]."""
    chunks = list(stream)
    time_dim = 1 if stream.batch_first else 0
    cat = lambda name: torch.cat([getattr(c, name) for c in chunks], dim=time_dim)  # noqa: E731
    lanes = {name: cat(name) for name in ("inputs", "reset", "valid")}
    if chunks[0].targets is not None:
        lanes["targets"] = cat("targets")
    if not stream.batch_first:
        lanes = {k: v.transpose(0, 1) for k, v in lanes.items()}
    return chunks, lanes


def test_stream_lays_uneven_sequences_end_to_end():
    lengths = [5, 3, 4, 2]
    seqs = [numbered(n, i) for i, n in enumerate(lengths)]
    stream = SequenceStream(seqs, k1=3, batch_size=2, targets=[-s for s in seqs])
    # by hand: seq0 -> lane 0 [0,5); seq1 -> lane 1 [0,3); lane 1 frees first: seq2 -> lane 1
    # [3,7); then lane 0 (free at 5): seq3 -> lane 0 [5,7). Both lanes 7 steps: no padding.
    expected_lane0 = torch.cat([seqs[0], seqs[3]])
    expected_lane1 = torch.cat([seqs[1], seqs[2]])
    chunks, lanes = stream_to_lanes(stream)
    assert [c.inputs.shape for c in chunks] == [(3, 2), (3, 2), (1, 2)]
    assert len(stream) == 3
    assert torch.equal(lanes["inputs"][0], expected_lane0)
    assert torch.equal(lanes["inputs"][1], expected_lane1)
    assert torch.equal(lanes["targets"], -lanes["inputs"])
    expected_reset = torch.zeros(2, 7, dtype=torch.bool)
    expected_reset[0, [0, 5]] = True
    expected_reset[1, [0, 3]] = True
    assert torch.equal(lanes["reset"], expected_reset)
    assert bool(lanes["valid"].all())
    assert stream.padding_fraction == 0.0


@pytest.mark.parametrize("balance", [False, True], ids=["in-order", "balanced"])
def test_stream_resets_exactly_where_values_restart(balance):
    """Property check on random lengths: every reset is a sequence start (step value 0)."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 30, size=23).tolist()
    seqs = [numbered(n, i) for i, n in enumerate(lengths)]
    stream = SequenceStream(seqs, k1=7, batch_size=5, balance=balance)
    _, lanes = stream_to_lanes(stream)
    step_in_sequence = lanes["inputs"] % 1000
    starts = lanes["valid"] & (step_in_sequence == 0)
    assert torch.equal(lanes["reset"], starts)
    assert int(lanes["reset"].sum()) == len(lengths)
    # every sequence appears once, whole and in order
    assert int(lanes["valid"].sum()) == sum(lengths)
    for i, n in enumerate(lengths):
        assert int((lanes["inputs"] // 1000 == i + 1).sum()) == n
    # padding only after a lane's last sequence
    for lane in range(5):
        valid = lanes["valid"][lane]
        assert not bool(valid[valid.cumsum(0) < valid.sum()].logical_not().any())


def test_balanced_stream_evens_out_lanes_and_keeps_order_within_lanes():
    lengths = [3, 3, 3, 3, 12]  # in order: the long one lands last and sticks out
    seqs = [numbered(n, i) for i, n in enumerate(lengths)]
    in_order = SequenceStream(seqs, k1=4, batch_size=2)
    balanced = SequenceStream(seqs, k1=4, batch_size=2, balance=True)
    assert in_order.total_steps == 18 and balanced.total_steps == 12
    assert balanced.padding_fraction == 0.0 < in_order.padding_fraction
    _, lanes = stream_to_lanes(balanced)
    assert torch.equal(lanes["inputs"][0], seqs[4])
    assert torch.equal(lanes["inputs"][1], torch.cat(seqs[:4]))
    assert torch.equal(torch.nonzero(lanes["reset"][1]).flatten(), torch.tensor([0, 3, 6, 9]))


def test_stream_pads_only_the_end_and_reports_it():
    seqs = [numbered(5, 0), numbered(1, 1)]
    stream = SequenceStream(seqs, k1=2, batch_size=2, targets=seqs)
    _, lanes = stream_to_lanes(stream)
    assert lanes["valid"][0].all()
    assert torch.equal(lanes["valid"][1], torch.tensor([True, False, False, False, False]))
    assert torch.count_nonzero(lanes["inputs"][1, 1:]) == 0
    assert stream.padding_fraction == pytest.approx(4 / 10)


def test_stream_T_below_k1_gives_one_short_chunk():
    stream = SequenceStream([numbered(3, 0)], k1=8, batch_size=1)
    chunks = list(stream)
    assert len(chunks) == 1 and chunks[0].inputs.shape == (3, 1)
    assert chunks[0].reset[:, 0].tolist() == [True, False, False]


def test_stream_multiple_of_k1_with_features_batch_first():
    seqs = [numbered(8, 0, features=3), numbered(4, 1, features=3), numbered(4, 2, features=3)]
    time_major = SequenceStream(seqs, k1=4, batch_size=2, targets=[s[:, :1] for s in seqs])
    batch_first = SequenceStream(seqs, k1=4, batch_size=2, targets=[s[:, :1] for s in seqs], batch_first=True)
    assert len(time_major) == 2
    for a, b in zip(time_major, batch_first):
        assert a.inputs.shape == (4, 2, 3) and b.inputs.shape == (2, 4, 3)
        assert a.targets.shape == (4, 2, 1)
        assert torch.equal(a.inputs.transpose(0, 1), b.inputs)
        assert torch.equal(a.reset.t(), b.reset)
        assert torch.equal(a.valid.t(), b.valid)


def test_stream_k1_equal_one_yields_single_steps():
    seqs = [numbered(3, 0), numbered(2, 1)]
    stream = SequenceStream(seqs, k1=1, batch_size=2)
    chunks = list(stream)
    assert len(chunks) == 3 and all(c.inputs.shape == (1, 2) for c in chunks)
    assert [c.reset[0].tolist() for c in chunks] == [[True, True], [False, False], [False, False]]


def test_stream_rejects_bad_arguments():
    seqs = [numbered(3, 0), numbered(2, 1)]
    with pytest.raises(ValueError, match=r"batch_size \(3\) must be <= the number of sequences \(2\)"):
        SequenceStream(seqs, k1=2, batch_size=3)
    with pytest.raises(ValueError, match="k1 must be an integer >= 1"):
        SequenceStream(seqs, k1=0, batch_size=1)
    with pytest.raises(ValueError, match=r"targets\[1\] must have as many steps"):
        SequenceStream(seqs, k1=2, batch_size=1, targets=[seqs[0], seqs[0]])
    with pytest.raises(ValueError, match="one entry per sequence"):
        SequenceStream(seqs, k1=2, batch_size=1, targets=[seqs[0]])


def test_stream_state_carries_within_and_resets_between_sequences():
    """Streaming through TruncatedLSTM with the reset mask = each sequence run alone from zero."""
    torch.manual_seed(0)
    lengths = [9, 4, 13, 6, 3, 7]
    seqs = [torch.randn(n, 3) for n in lengths]
    lstm = TruncatedLSTM(3, 5, k2=4)
    reference = torch.nn.LSTM(3, 5)
    reference.load_state_dict(lstm.state_dict())
    stream = SequenceStream(seqs, k1=4, batch_size=3)
    outputs, state = [], None
    with torch.no_grad():
        for chunk in stream:
            out, state = lstm(chunk.inputs, state, reset=chunk.reset)
            outputs.append(out)
        lanes = torch.cat(outputs).transpose(0, 1)  # [B, T, H]
        for i, (lane, offset) in enumerate(stream.placement):
            alone, _ = reference(seqs[i][:, None, :])
            got = lanes[lane, offset:offset + lengths[i]]
            torch.testing.assert_close(got, alone[:, 0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# suggest_k


def ar_series(coefficients, steps, seed):
    """x_t = sum_i coefficients[i] * x_{t-1-i} + N(0, 1), after a 500-step burn-in."""
    noise = np.random.default_rng(seed).normal(size=steps + 500).tolist()
    p = len(coefficients)
    x = [0.0] * p
    for e in noise:
        x.append(sum(c * x[-1 - i] for i, c in enumerate(coefficients)) + e)
    return np.array(x[p + 500:])


def theoretical_acf(coefficients, max_lag, steps=5000):
    """ACF of an AR process by running its impulse response (MA(infinity) weights)."""
    p = len(coefficients)
    psi = np.zeros(steps)
    psi[0] = 1.0
    for j in range(1, steps):
        psi[j] = sum(coefficients[i] * psi[j - 1 - i] for i in range(min(p, j)))
        if j > 200 and abs(psi[j]) < 1e-14:
            psi = psi[: j + 1]
            break
    gamma = np.array([np.dot(psi[: len(psi) - k], psi[k:]) for k in range(max_lag + 1)])
    return gamma / gamma[0]


def test_autocorrelation_matches_direct_sum():
    x = np.random.default_rng(3).normal(size=300).cumsum()
    got = autocorrelation(x, 20)
    centred = x - x.mean()
    direct = np.array([np.dot(centred[: len(x) - k], centred[k:]) for k in range(21)]) / np.dot(centred, centred)
    np.testing.assert_allclose(got, direct, atol=1e-10)


def test_partial_autocorrelation_matches_regression():
    """PACF at lag k = last coefficient of the least-squares AR(k) fit."""
    x = ar_series([0.6, -0.2], 4000, seed=5)
    pacf = partial_autocorrelation(x, 6)
    centred = x - x.mean()
    for k in range(1, 7):
        design = np.stack([centred[k - j - 1: len(x) - j - 1] for j in range(k)], axis=1)
        coef, *_ = np.linalg.lstsq(design, centred[k:], rcond=None)
        assert pacf[k] == pytest.approx(coef[-1], abs=0.02)


@pytest.mark.parametrize(
    "coefficients",
    [[0.7], [0.5, -0.3, 0.3], [0.3] + [0.0] * 10 + [0.4]],
    ids=["AR(1)", "AR(3)", "AR(12)-seasonal"],
)
def test_suggest_k_on_ar_process_finds_its_order(coefficients):
    p = len(coefficients)
    steps = 20_000
    rho = theoretical_acf(coefficients, 60)
    # where the true ACF leaves its band for good (Bartlett band from the true ACF)
    true_acf_cutoff = int(np.nonzero(np.abs(rho) > bartlett_band(rho, steps, 1.96))[0].max())
    pacf_cutoffs, acf_cutoffs, ks = [], [], []
    for seed in range(8):
        got = suggest_k(ar_series(coefficients, steps, seed), max_lag=60)
        np.testing.assert_allclose(got.acf[:6], rho[:6], atol=5 / math.sqrt(steps))
        pacf_cutoffs.append(got.pacf_cutoff)
        acf_cutoffs.append(got.acf_cutoff)
        ks.append(got.k)
        assert got.k == max(got.acf_cutoff, got.pacf_cutoff, 1)
    assert sum(c == p for c in pacf_cutoffs) >= 6, f"PACF cutoffs {pacf_cutoffs}, expected mostly {p}"
    assert abs(np.median(acf_cutoffs) - true_acf_cutoff) <= 3, (acf_cutoffs, true_acf_cutoff)
    assert min(ks) >= p


def test_suggest_k_on_white_noise_is_short():
    ks = [suggest_k(np.random.default_rng(seed).normal(size=5000)).k for seed in range(10)]
    assert sum(k == 1 for k in ks) >= 8, f"white noise gave k = {ks}"


def test_suggest_k_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "acf.png"
    got = suggest_k(ar_series([0.5, 0.3], 3000, seed=0), plot=str(path))
    assert got.plot_path == str(path) and path.stat().st_size > 1000


def test_suggest_k_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        suggest_k(np.random.default_rng(0).normal(size=500), plot=str(tmp_path / "x.png"))


@pytest.mark.parametrize(
    "series,kwargs,message",
    [
        (np.zeros((100, 2)), {}, "one univariate series"),
        (np.arange(5.0), {}, "at least 8 steps"),
        (np.ones(50), {}, "constant"),
        (np.r_[np.arange(20.0), np.nan], {}, "finite"),
        (np.random.default_rng(0).normal(size=30), {"max_lag": 30}, "max_lag"),
        (np.random.default_rng(0).normal(size=30), {"confidence": 1.5}, "confidence"),
    ],
    ids=["2-D", "short", "constant", "nan", "max_lag", "confidence"],
)
def test_suggest_k_rejects_bad_input(series, kwargs, message):
    with pytest.raises(ValueError, match=message):
        suggest_k(series, **kwargs)


# ----------------------------------------------------------------------------------------
# grid search


class TinyRegressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = TruncatedLSTM(1, 8)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x, state=None, reset=None):
        out, state = self.lstm(x, state, reset=reset)
        return self.head(out), state


def delayed_sum_data(steps=400, lanes=4, seed=0):
    """x random; target(t) = x(t) + x(t-2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(lanes, steps, 1, generator=g)
    y = x.clone()
    y[:, 2:] += x[:, :-2]
    return list(x), list(y)


def test_grid_search_reports_loss_time_and_memory(tmp_path):
    xs, ys = delayed_sum_data()
    pairs = [(2, 2), (2, 6), (4, 8)]
    result = grid_search_k(
        build_model=TinyRegressor,
        build_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        make_chunks=lambda k1: SequenceStream(xs, k1, 4, targets=ys),
        loss_fn=torch.nn.functional.mse_loss,
        pairs=pairs,
        updates=40,
    )
    assert [(p.k1, p.k2) for p in result.points] == pairs
    for point in result.points:
        assert math.isfinite(point.final_loss) and point.updates == 40
        assert point.seconds_per_update > 0
        assert point.microseconds_per_step == pytest.approx(1e6 * point.seconds_per_update / point.k1)
        assert point.final_loss < 0.8 * np.mean(point.losses[:5])
    by_pair = {(p.k1, p.k2): p for p in result.points}
    # the ring holds k2 steps: more k2, more bytes; same k2 -> same bytes
    assert by_pair[(2, 6)].history_nbytes > by_pair[(2, 2)].history_nbytes > 0
    table = result.table()
    assert table.count("\n") == 1 + len(pairs)
    assert "| 2 | 6 |" in table
    assert result.best() in result.points
    pytest.importorskip("matplotlib")
    path = result.plot(str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 1000 and path.endswith("grid.png")


def test_grid_search_rejects_k1_above_k2():
    with pytest.raises(ValueError, match=r"pairs\[1\] = \(8, 4\) breaks the rule k1 <= k2"):
        grid_search_k(TinyRegressor, lambda p: torch.optim.SGD(p, lr=0.1), lambda k1: [],
                      torch.nn.functional.mse_loss, pairs=[(2, 2), (8, 4)])


def test_split_sequences_tensor_and_list_inputs_agree():
    x = torch.randn(3, 10, 2)
    from_tensor = split_sequences(x, 4)
    from_list = split_sequences(list(x), 4)
    for a, b in zip(from_tensor, from_list):
        assert torch.equal(a, b)
    assert from_tensor.lengths.tolist() == [4, 4, 2] * 3
