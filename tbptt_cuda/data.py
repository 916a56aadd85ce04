"""Data preparation for truncated BPTT with :class:`tbptt_cuda.TruncatedLSTM`.

The methods people are taught for feeding long sequences to an LSTM, each as one function:

========================  ==========================================================
method                    here
========================  ==========================================================
as-is                     :func:`as_sequences` — whole sequences of up to a few
                          hundred steps, one call per batch, zero state.
naive split               :func:`split_sequences` — cut every sequence into chunks of
                          k1 steps (tail zero-padded) with a ``starts`` flag per chunk.
streaming                 :class:`SequenceStream` — lay sequences of any lengths end to
                          end in B lanes and yield chunks in time order with the reset
                          mask that ``TruncatedLSTM(x, state, reset=...)`` takes.
domain-specific           :func:`suggest_k` — k from the autocorrelation (ACF) and the
                          partial autocorrelation (PACF) of a series.
systematic                :func:`grid_search_k` — short trainings over (k1, k2) pairs;
                          final loss, time per step, history memory.
internal state            k1 = 1: ``SequenceStream(..., k1=1)`` yields one step per
                          call; with ``lstm.k2 = n`` that is BPTT(1, n).
========================  ==========================================================

Shape glossary (used in every docstring below):

- N: number of sequences, T: steps of one sequence (T_i when lengths differ),
- F: features per step (trailing dims of a step, possibly none for token ids),
- B: lanes (batch rows) of a stream, k1: steps per chunk (the update period),
- M: number of chunks produced by :func:`split_sequences`.

Nothing here needs ``detach()``: a stream's state is passed from chunk to chunk and the
module keeps the k2-step history itself.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]

__all__ = [
    "as_sequences",
    "split_sequences",
    "SplitSequences",
    "SequenceStream",
    "StreamChunk",
    "suggest_k",
    "SuggestedK",
    "autocorrelation",
    "partial_autocorrelation",
    "bartlett_band",
    "plot_suggest_k",
    "grid_search_k",
    "GridSearchResult",
    "GridPoint",
]


# ----------------------------------------------------------------------------------------
# helpers


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Tensor view of ``x`` (numpy arrays are shared, lists copied); names ``name`` on error."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name} must be a torch.Tensor, a numpy array or a nested list of numbers, "
            f"got {type(x).__name__} ({exc})"
        ) from None


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _sequence_list(sequences, name: str) -> List[torch.Tensor]:
    """Turn ``sequences`` into a list of tensors [T_i, *F].

    Accepts a tensor/array [N, T] or [N, T, F] (every row one sequence) or a list/tuple of
    tensors/arrays [T_i] or [T_i, *F] with equal trailing shapes.
    """
    if isinstance(sequences, (torch.Tensor, np.ndarray)):
        tensor = _as_tensor(sequences, name)
        if tensor.dim() < 2:
            raise ValueError(
                f"{name} as one tensor must be [N, T] or [N, T, F] (N sequences of T steps), "
                f"got shape {tuple(tensor.shape)}; wrap a single series as x[None]"
            )
        return list(tensor.unbind(0))
    if not isinstance(sequences, (list, tuple)):
        raise TypeError(
            f"{name} must be a tensor [N, T(, F)] or a list of tensors [T_i(, F)], "
            f"got {type(sequences).__name__}"
        )
    if len(sequences) == 0:
        raise ValueError(f"{name} must hold at least one sequence, got an empty list")
    out = [_as_tensor(s, f"{name}[{i}]") for i, s in enumerate(sequences)]
    trailing = out[0].shape[1:]
    for i, s in enumerate(out):
        if s.dim() == 0:
            raise ValueError(f"{name}[{i}] must be [T] or [T, F], got a scalar")
        if s.shape[1:] != trailing:
            raise ValueError(
                f"every sequence in {name} must have the same per-step shape: {name}[0] has "
                f"{tuple(trailing)}, {name}[{i}] has {tuple(s.shape[1:])}"
            )
        if s.dtype != out[0].dtype:
            raise ValueError(
                f"every sequence in {name} must have the same dtype: {name}[0] is "
                f"{out[0].dtype}, {name}[{i}] is {s.dtype}"
            )
    return out


# ----------------------------------------------------------------------------------------
# as-is


def as_sequences(x: ArrayLike, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
    """Whole sequences as one batch, to feed as-is (BPTT(T, T), one call, zero state).

    Args:
        x: [N, T] (univariate) or [N, T, F]; tensor, numpy array or nested list.
        dtype: result dtype (None keeps the input's).

    Returns:
        [N, T, F] (F = 1 for univariate input): feed it with ``batch_first=True`` or as
        ``x.transpose(0, 1)`` ([T, N, F]) to a time-major module.

    100 univariate sequences of 25 steps, [100, 25], give [100, 25, 1]. Suited to sequences of
    up to a few hundred steps; longer ones: :func:`split_sequences` or :class:`SequenceStream`.
    """
    tensor = _as_tensor(x, "x")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(-1)
    if tensor.dim() != 3:
        raise ValueError(
            f"x must be [N, T] or [N, T, F] (N sequences, T steps, F features), "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"x must hold at least one sequence of at least one step, got {tuple(tensor.shape)}")
    return tensor if dtype is None else tensor.to(dtype)


# ----------------------------------------------------------------------------------------
# naive split


class SplitSequences(NamedTuple):
    """Result of :func:`split_sequences`.

    chunks:  [M, k1, F] chunks, sequence-major then time order; the last chunk of each
             sequence zero-padded to k1 steps.
    starts:  bool [M], True where a sequence begins (the state must be reset there).
    lengths: int64 [M], the number of true (unpadded) steps of each chunk, 1..k1.
    """

    chunks: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor


def split_sequences(x, k1: int) -> SplitSequences:
    """Cut every sequence into chunks of ``k1`` steps (the "naive split").

    Args:
        x: [N, T] or [N, T, F] (tensor or array: N sequences of T steps), or a list of N
           sequences [T_i] / [T_i, F] of different lengths.
        k1: steps per chunk (>= 1).

    Returns:
        :class:`SplitSequences` (chunks [M, k1, F], starts bool [M], lengths int64 [M]) with
        M = sum_i ceil(T_i / k1). Univariate input gets F = 1.

    100 sequences of 50,000 steps with k1 = 500 give chunks [10000, 500, 1] and 100 starts.
    Feeding chunk j of a sequence right after chunk j-1 with the returned state carries the
    state across chunks; pass ``reset=starts[j]`` (or reshape equal-length input to
    [N, T/k1, k1, F] and feed the column [:, j]). Mask the loss of padded steps with
    ``lengths``. Treating chunks as independent samples (zero state each) is the naive
    method: it cannot learn dependencies longer than k1.
    """
    k1 = _check_positive_int(k1, "k1")
    if isinstance(x, (torch.Tensor, np.ndarray)) and getattr(x, "ndim", 0) in (2, 3) and 0 not in x.shape:
        # equal lengths: one padded copy, then a view [N * C, k1, F]
        tensor = _as_tensor(x, "x")
        tensor = tensor.unsqueeze(-1) if tensor.dim() == 2 else tensor
        N, T, feats = tensor.shape
        count = math.ceil(T / k1)
        padded = tensor.new_zeros(N, count * k1, feats)
        padded[:, :T] = tensor
        starts = torch.zeros(N, count, dtype=torch.bool)
        starts[:, 0] = True
        lengths = torch.full((N, count), k1, dtype=torch.int64)
        lengths[:, -1] = T - (count - 1) * k1
        return SplitSequences(padded.view(N * count, k1, feats), starts.flatten(), lengths.flatten())
    seqs = _sequence_list(x, "x")
    if seqs[0].dim() == 1:
        seqs = [s.unsqueeze(-1) for s in seqs]
    per_step = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.shape[0] == 0:
            raise ValueError(f"x[{i}] has no steps; every sequence needs T_i >= 1")
    counts = [math.ceil(s.shape[0] / k1) for s in seqs]
    total = sum(counts)
    chunks = seqs[0].new_zeros((total, k1) + tuple(per_step))
    starts = torch.zeros(total, dtype=torch.bool)
    lengths = torch.empty(total, dtype=torch.int64)
    row = 0
    for s, count in zip(seqs, counts):
        steps = s.shape[0]
        padded = s.new_zeros((count * k1,) + tuple(per_step))
        padded[:steps] = s
        chunks[row:row + count] = padded.view((count, k1) + tuple(per_step))
        starts[row] = True
        lengths[row:row + count] = k1
        lengths[row + count - 1] = steps - (count - 1) * k1
        row += count
    return SplitSequences(chunks, starts, lengths)


# ----------------------------------------------------------------------------------------
# streaming


class StreamChunk(NamedTuple):
    """One chunk of a :class:`SequenceStream`, time-major unless ``batch_first``.

    inputs:  [L, B, *F] ([B, L, *F] if batch_first), L = k1 except possibly the last chunk.
    reset:   bool [L, B] ([B, L]): True at the first step of every sequence — pass it as
             ``reset=`` so the state is zeroed there and never crosses sequences.
    targets: [L, B, *G] aligned with ``inputs`` (None when the stream has no targets).
    valid:   bool [L, B] ([B, L]): False on the padding after a lane's last sequence
             (only in the final chunks); mask the loss with it.
    """

    inputs: torch.Tensor
    reset: torch.Tensor
    targets: Optional[torch.Tensor]
    valid: torch.Tensor


class SequenceStream:
    """Lay sequences of different lengths end to end in ``batch_size`` lanes; iterate chunks.

    Each lane takes the next sequence (in the given order) when its current one ends, so the
    state carries within a sequence, resets exactly at the next sequence's first step, and
    no step is padding except after the last sequence of a lane (at most the difference in
    lane lengths; :attr:`padding_fraction` says how much). ``balance=True`` deals the
    sequences longest first to the least loaded lane instead (each lane then keeps its
    sequences in the given order), which evens the lanes out when a few sequences are long.

    Args:
        sequences: list of N tensors [T_i] or [T_i, *F] (e.g. token ids [T_i], features
            [T_i, F]), or one tensor [N, T(, F)].
        k1: steps per chunk (the update period of TBPTT(k1, k2)); 1 gives one step per call.
        batch_size: B, the number of lanes (<= N).
        targets: optional, same structure as ``sequences`` with the same T_i per sequence and
            any per-step shape; they travel with the inputs.
        batch_first: yield [B, L, ...] instead of [L, B, ...] (match the module's flag).
        device: where the yielded tensors live (the lanes stay on the CPU).
        balance: even out the lane lengths (longest-first assignment) to cut the end padding.

    Iterating yields :class:`StreamChunk` in time order; iterate again for another epoch.
    ``len(stream)`` is the number of chunks. Example::

        stream = SequenceStream(series_list, k1=32, batch_size=16, targets=target_list)
        state = None
        for chunk in stream:
            out, state = lstm(chunk.inputs, state, reset=chunk.reset)
            loss = loss_fn(head(out)[chunk.valid], chunk.targets[chunk.valid])
            opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(self, sequences, k1: int, batch_size: int, targets=None, batch_first: bool = False,
                 device: Optional[Union[str, torch.device]] = None, balance: bool = False):
        self.k1 = _check_positive_int(k1, "k1")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.batch_first = bool(batch_first)
        self.device = torch.device(device) if device is not None else None
        seqs = _sequence_list(sequences, "sequences")
        if self.batch_size > len(seqs):
            raise ValueError(
                f"batch_size ({self.batch_size}) must be <= the number of sequences ({len(seqs)}): "
                "every lane needs at least one sequence"
            )
        for i, s in enumerate(seqs):
            if s.shape[0] == 0:
                raise ValueError(f"sequences[{i}] has no steps; every sequence needs T_i >= 1")
        tgts = None
        if targets is not None:
            tgts = _sequence_list(targets, "targets")
            if len(tgts) != len(seqs):
                raise ValueError(
                    f"targets must hold one entry per sequence: {len(tgts)} targets for {len(seqs)} sequences"
                )
            for i, (s, t) in enumerate(zip(seqs, tgts)):
                if t.shape[0] != s.shape[0]:
                    raise ValueError(
                        f"targets[{i}] must have as many steps as sequences[{i}]: "
                        f"{t.shape[0]} != {s.shape[0]}"
                    )
        self.num_sequences = len(seqs)
        self.sequence_lengths = [int(s.shape[0]) for s in seqs]

        # Lane assignment: in order, each sequence goes to the lane that frees up first
        # (ties: lowest lane index) — what happens when every lane takes the next sequence
        # as soon as its current one ends.
        lane_load = [0] * self.batch_size
        free_at = [(0, lane) for lane in range(self.batch_size)]  # heap of (load, lane)
        placement = [None] * len(seqs)  # (lane, offset) per sequence
        if balance:
            by_length = sorted(range(len(seqs)), key=lambda i: (-self.sequence_lengths[i], i))
            lane_of = [0] * len(seqs)
            for i in by_length:
                load, lane = heapq.heappop(free_at)
                lane_of[i] = lane
                heapq.heappush(free_at, (load + self.sequence_lengths[i], lane))
            for i in range(len(seqs)):  # given order within each lane
                placement[i] = (lane_of[i], lane_load[lane_of[i]])
                lane_load[lane_of[i]] += self.sequence_lengths[i]
        else:
            for i, steps in enumerate(self.sequence_lengths):
                load, lane = heapq.heappop(free_at)
                placement[i] = (lane, load)
                lane_load[lane] = load + steps
                heapq.heappush(free_at, (lane_load[lane], lane))
        self.lane_lengths = lane_load
        self.total_steps = max(lane_load)  # steps per lane, time axis of the stream
        self.placement = placement

        B, T = self.batch_size, self.total_steps
        self._inputs = seqs[0].new_zeros((B, T) + tuple(seqs[0].shape[1:]))
        self._targets = None if tgts is None else tgts[0].new_zeros((B, T) + tuple(tgts[0].shape[1:]))
        self._reset = torch.zeros(B, T, dtype=torch.bool)
        self._valid = torch.zeros(B, T, dtype=torch.bool)
        for i, (lane, offset) in enumerate(placement):
            steps = self.sequence_lengths[i]
            self._inputs[lane, offset:offset + steps] = seqs[i]
            if tgts is not None:
                self._targets[lane, offset:offset + steps] = tgts[i]
            self._reset[lane, offset] = True
            self._valid[lane, offset:offset + steps] = True

    @property
    def padding_fraction(self) -> float:
        """Share of lane steps that are padding (after a lane's last sequence)."""
        return 1.0 - sum(self.sequence_lengths) / float(self.batch_size * self.total_steps)

    def __len__(self) -> int:
        return math.ceil(self.total_steps / self.k1)

    def _layout(self, lanes: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        piece = lanes[:, start:stop]
        if not self.batch_first:
            piece = piece.transpose(0, 1)
        piece = piece.contiguous()
        if self.device is not None:
            piece = piece.to(self.device, non_blocking=True)
        return piece

    def __iter__(self) -> Iterator[StreamChunk]:
        for start in range(0, self.total_steps, self.k1):
            stop = min(start + self.k1, self.total_steps)
            yield StreamChunk(
                inputs=self._layout(self._inputs, start, stop),
                reset=self._layout(self._reset, start, stop),
                targets=None if self._targets is None else self._layout(self._targets, start, stop),
                valid=self._layout(self._valid, start, stop),
            )

    def __repr__(self) -> str:
        return (f"SequenceStream({self.num_sequences} sequences, k1={self.k1}, batch_size={self.batch_size}, "
                f"steps per lane={self.total_steps}, chunks={len(self)}, "
                f"padding={100 * self.padding_fraction:.2f}%)")


# ----------------------------------------------------------------------------------------
# domain-specific: ACF / PACF


def _as_series(series, name: str = "series") -> np.ndarray:
    if isinstance(series, torch.Tensor):
        series = series.detach().cpu().numpy()
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one univariate series [T] (or [T, 1]), got shape {arr.shape}")
    if arr.shape[0] < 8:
        raise ValueError(f"{name} must have at least 8 steps to estimate correlations, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if np.ptp(arr) == 0:
        raise ValueError(f"{name} is constant: its autocorrelation is undefined")
    return arr


def autocorrelation(series, max_lag: int) -> np.ndarray:
    """Sample autocorrelation r_0..r_max_lag of a series [T] (biased estimator, as R/statsmodels)."""
    x = _as_series(series)
    max_lag = _check_positive_int(max_lag, "max_lag")
    if max_lag >= x.shape[0]:
        raise ValueError(f"max_lag ({max_lag}) must be < the series length ({x.shape[0]})")
    x = x - x.mean()
    n = x.shape[0]
    size = 1 << int(np.ceil(np.log2(2 * n - 1)))
    spectrum = np.fft.rfft(x, size)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), size)[: max_lag + 1] / n
    return acov / acov[0]


def partial_autocorrelation(series=None, max_lag: int = 1, acf: Optional[np.ndarray] = None) -> np.ndarray:
    """Partial autocorrelation phi_00..phi_max_lag,max_lag by the Durbin-Levinson recursion.

    Pass either ``series`` [T] or its autocorrelation ``acf`` [>= max_lag + 1].
    """
    if acf is None:
        acf = autocorrelation(series, max_lag)
    r = np.asarray(acf, dtype=np.float64)
    max_lag = _check_positive_int(max_lag, "max_lag")
    if r.shape[0] < max_lag + 1:
        raise ValueError(f"acf must hold lags 0..max_lag ({max_lag + 1} values), got {r.shape[0]}")
    pacf = np.zeros(max_lag + 1)
    pacf[0] = 1.0
    phi = np.zeros(max_lag + 1)
    variance = 1.0
    for k in range(1, max_lag + 1):
        num = r[k] - np.dot(phi[1:k], r[k - 1:0:-1])
        phi_kk = num / variance if variance > 1e-12 else 0.0
        new_phi = phi.copy()
        new_phi[k] = phi_kk
        new_phi[1:k] = phi[1:k] - phi_kk * phi[k - 1:0:-1]
        phi = new_phi
        variance *= max(1.0 - phi_kk * phi_kk, 1e-12)
        pacf[k] = phi_kk
    return pacf


def bartlett_band(acf: np.ndarray, num_steps: int, z: float) -> np.ndarray:
    """Half-width of the ACF band per lag by Bartlett's formula: z * sqrt((1 + 2 sum_{j<k} r_j^2) / T).

    Under the hypothesis that the autocorrelation is zero beyond lag k-1, r_k has that standard
    error (the band of statsmodels' plot_acf); for white noise it is z / sqrt(T).
    """
    acf = np.asarray(acf, dtype=np.float64)
    cumulative = np.concatenate([[0.0, 0.0], np.cumsum(acf[1:-1] ** 2)])  # [k]: sum_{1<=j<k} r_j^2
    band = z * np.sqrt((1.0 + 2.0 * cumulative) / num_steps)
    band[0] = 0.0
    return band


def _last_significant_lag(values: np.ndarray, band) -> Tuple[int, np.ndarray]:
    """Last lag (>= 1) that counts as outside the band (scalar or per lag); 0 if none.

    A lag counts when it belongs to the initial run of lags outside the band (lags 1..m all
    outside: the correlation decaying into the band) or lies outside by more than twice the
    half-width (p ~ 1e-4 by chance: a genuine later peak, e.g. a season). Marginal excursions
    after the correlation has entered the band — 1 lag in 20 by chance at 95%, and in runs,
    because sample autocorrelations at neighbouring lags are correlated — are ignored.
    Returns (cutoff, bool mask of the lags that counted).
    """
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    outside = magnitude > band
    outside[0] = False
    strong = outside & (magnitude > 2.0 * band)
    inside_lags = np.nonzero(~outside[1:])[0]
    first_inside = int(inside_lags[0]) + 1 if inside_lags.size else len(values)
    significant = strong.copy()
    significant[1:first_inside] = True
    lags = np.nonzero(significant)[0]
    return (int(lags[-1]) if lags.size else 0), significant


@dataclass
class SuggestedK:
    """Evidence behind :func:`suggest_k`.

    k: suggested truncation length (>= 1): the lag after which both the ACF and the PACF stay
       inside their bands. Use it as k2 (how far the gradient must reach); k1 <= k2.
    acf, pacf: [max_lag + 1] coefficients for lags 0..max_lag.
    band: half-width of the PACF band, z / sqrt(T) (also the ACF band of white noise).
    acf_band: [max_lag + 1] half-width of the ACF band per lag (Bartlett's formula).
    acf_cutoff, pacf_cutoff: the last significant lag of each (0: none).
    acf_significant, pacf_significant: bool [max_lag + 1], lags that counted as outside.
    """

    k: int
    acf: np.ndarray
    pacf: np.ndarray
    band: float
    acf_band: np.ndarray
    acf_cutoff: int
    pacf_cutoff: int
    acf_significant: np.ndarray
    pacf_significant: np.ndarray
    max_lag: int
    num_steps: int
    plot_path: Optional[str] = None

    @property
    def reached_max_lag(self) -> bool:
        """True when a correlation was still significant at max_lag: raise max_lag."""
        return max(self.acf_cutoff, self.pacf_cutoff) >= self.max_lag

    def summary(self) -> str:
        text = (f"suggested k = {self.k} (ACF inside its band after lag {self.acf_cutoff}, "
                f"PACF after lag {self.pacf_cutoff}; PACF band +-{self.band:.4f}, T = {self.num_steps}, "
                f"lags 1..{self.max_lag})")
        if self.reached_max_lag:
            text += " — still significant at max_lag: try a larger max_lag"
        return text


def suggest_k(series, max_lag: Optional[int] = None, confidence: float = 0.95,
              plot: Union[bool, str, None] = None) -> SuggestedK:
    """Suggest the truncation length k from the ACF and PACF of a series (numpy only).

    k is the lag after which both the autocorrelation and the partial autocorrelation stay
    inside their ``confidence`` bands: +-z/sqrt(T) for the PACF, and for the ACF Bartlett's
    band z*sqrt((1 + 2 sum_{j<k} r_j^2)/T), which widens with the correlation already seen (the
    bands of statsmodels' plot_acf / plot_pacf; for white noise both are +-z/sqrt(T)).
    A lag counts when it is one of the first lags, all outside, before the correlation enters
    its band, or when it lies outside by more than twice the half-width (a later genuine
    peak, e.g. a season); marginal excursions after the correlation entered the band, which
    chance produces (1 lag in 20 at 95%, and in runs: sample autocorrelations of neighbouring
    lags are correlated), are ignored. For an AR(p) process the PACF cutoff is p and the ACF decays
    geometrically, so k >= p: the gradient should reach at least k steps back (k2 >= k).

    Args:
        series: [T] (or [T, 1]) numpy array, tensor or list; T >= 8.
        max_lag: largest lag examined (default min(T // 4, 10 * log10(T) + 40)); < T.
        confidence: band level in (0, 1), default 0.95.
        plot: True to draw the evidence into ``suggest_k.png`` in the working folder, or a
            file path; needs matplotlib.

    Returns:
        :class:`SuggestedK` with k and the evidence (acf, pacf, band, cutoffs).
    """
    x = _as_series(series)
    n = x.shape[0]
    if max_lag is None:
        max_lag = max(1, min(n // 4, int(10 * math.log10(n)) + 40))
    max_lag = _check_positive_int(max_lag, "max_lag")
    if max_lag >= n:
        raise ValueError(f"max_lag ({max_lag}) must be < the series length ({n})")
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2.0, dtype=torch.float64)))
    band = z / math.sqrt(n)
    acf = autocorrelation(x, max_lag)
    pacf = partial_autocorrelation(acf=acf, max_lag=max_lag)
    acf_band = bartlett_band(acf, n, z)
    acf_cut, acf_sig = _last_significant_lag(acf, acf_band)
    pacf_cut, pacf_sig = _last_significant_lag(pacf, band)
    result = SuggestedK(k=max(1, acf_cut, pacf_cut), acf=acf, pacf=pacf, band=band, acf_band=acf_band,
                        acf_cutoff=acf_cut, pacf_cutoff=pacf_cut, acf_significant=acf_sig,
                        pacf_significant=pacf_sig, max_lag=max_lag, num_steps=n)
    if plot:
        path = "suggest_k.png" if plot is True else str(plot)
        result.plot_path = plot_suggest_k(result, path)
    return result


def _require_matplotlib():
    """Import matplotlib with a non-interactive backend, or raise a clear error."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib, which is optional and not installed: "
            "pip install matplotlib (tables and results work without it)"
        ) from None
    return plt


def plot_suggest_k(evidence: SuggestedK, path: str) -> str:
    """Draw ACF and PACF stems with the band and the suggested k into ``path`` (PNG); returns it."""
    plt = _require_matplotlib()
    lags = np.arange(evidence.max_lag + 1)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for ax, values, sig, name, cut, band in (
        (axes[0], evidence.acf, evidence.acf_significant, "ACF", evidence.acf_cutoff, evidence.acf_band),
        (axes[1], evidence.pacf, evidence.pacf_significant, "PACF", evidence.pacf_cutoff,
         np.full(evidence.max_lag + 1, evidence.band)),
    ):
        ax.vlines(lags[1:], 0, values[1:], color="tab:blue", lw=1.2)
        ax.scatter(lags[1:][sig[1:]], values[1:][sig[1:]], color="tab:red", s=12, zorder=3,
                   label="counted as outside")
        ax.fill_between(lags[1:], -band[1:], band[1:], color="tab:gray", alpha=0.25, step="mid",
                        label="95% band")
        ax.axhline(0, color="black", lw=0.6)
        ax.axvline(evidence.k + 0.5, color="tab:green", ls="--", lw=1, label=f"k = {evidence.k}")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: last significant lag {cut}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    axes[1].set_xlabel("lag")
    fig.suptitle(f"suggest_k: k = {evidence.k} (T = {evidence.num_steps})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------
# systematic: grid search over (k1, k2)


@dataclass
class GridPoint:
    """One (k1, k2) setting of :func:`grid_search_k`.

    final_loss: mean training loss of the last ``tail`` updates; eval_loss: loss on held-out
    data when an ``evaluate`` callable was given (else None); seconds_per_update: median wall
    time of one chunk (forward, backward, optimizer step); microseconds_per_step: that divided
    by k1 (time per timestep of the stream); history_nbytes: bytes held by the history ring(s).
    """

    k1: int
    k2: int
    final_loss: float
    eval_loss: Optional[float]
    seconds_per_update: float
    microseconds_per_step: float
    history_nbytes: int
    updates: int
    losses: List[float] = field(default_factory=list, repr=False)


@dataclass
class GridSearchResult:
    """Rows of :func:`grid_search_k`, best (lowest eval or final loss) first in :meth:`best`."""

    points: List[GridPoint]

    def best(self) -> GridPoint:
        return min(self.points, key=lambda p: p.eval_loss if p.eval_loss is not None else p.final_loss)

    def table(self) -> str:
        """Markdown table, one row per (k1, k2)."""
        has_eval = any(p.eval_loss is not None for p in self.points)
        head = "| k1 | k2 | final loss |" + (" eval loss |" if has_eval else "") + \
            " ms / update | µs / step | history bytes |"
        rule = "|---:|---:|---:|" + ("---:|" if has_eval else "") + "---:|---:|---:|"
        rows = [head, rule]
        for p in self.points:
            ev = (f" {p.eval_loss:.4f} |" if p.eval_loss is not None else " - |") if has_eval else ""
            rows.append(f"| {p.k1} | {p.k2} | {p.final_loss:.4f} |{ev} {1e3 * p.seconds_per_update:.2f} | "
                        f"{p.microseconds_per_step:.1f} | {p.history_nbytes:,} |")
        return "\n".join(rows)

    def plot(self, path: str) -> str:
        """Loss, time per step and history memory against (k1, k2), into ``path`` (PNG)."""
        plt = _require_matplotlib()
        labels = [f"({p.k1},{p.k2})" for p in self.points]
        xs = np.arange(len(self.points))
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        loss = [p.eval_loss if p.eval_loss is not None else p.final_loss for p in self.points]
        axes[0].bar(xs, loss, color="tab:blue")
        axes[0].set_title("eval loss" if self.points[0].eval_loss is not None else "final training loss")
        axes[1].bar(xs, [p.microseconds_per_step for p in self.points], color="tab:orange")
        axes[1].set_title("µs per timestep (fwd+bwd+step)")
        axes[2].bar(xs, [p.history_nbytes / 1024 for p in self.points], color="tab:green")
        axes[2].set_title("history KiB")
        for ax in axes:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
            ax.set_xlabel("(k1, k2)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _truncated_lstms(model: torch.nn.Module):
    from .module import TruncatedGRU, TruncatedLSTM

    found = [m for m in model.modules() if isinstance(m, (TruncatedLSTM, TruncatedGRU))]
    if not found:
        raise TypeError("model must contain at least one TruncatedLSTM or TruncatedGRU (from "
                        "tbptt_cuda import TruncatedLSTM)")
    return found


def grid_search_k(build_model: Callable[[], torch.nn.Module],
                  build_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                  make_chunks: Callable[[int], Iterable],
                  loss_fn: Callable,
                  pairs: Sequence[Tuple[int, int]],
                  updates: int = 50,
                  tail: int = 10,
                  evaluate: Optional[Callable[[torch.nn.Module], float]] = None,
                  seed: int = 0,
                  clip_grad_norm: Optional[float] = 1.0) -> GridSearchResult:
    """Run one short training per (k1, k2) pair and collect loss, time per step and memory.

    Every pair starts from the same initial weights (``build_model`` under ``torch.manual_seed
    (seed)``) and the same data order, and runs ``updates`` chunks of TBPTT(k1, k2) through
    :func:`tbptt_cuda.train.train_tbptt`.

    Args:
        build_model: () -> model containing TruncatedLSTM; ``model(inputs, state, reset=...)``
            returns (outputs, state) (see :mod:`tbptt_cuda.train`). Its k2 is set per pair.
        build_optimizer: parameters -> optimizer.
        make_chunks: k1 -> iterable of :class:`StreamChunk` (e.g. ``lambda k1:
            SequenceStream(seqs, k1, 8, targets=tgts)``); cycled if shorter than ``updates``.
        loss_fn: (outputs [n, ...], targets [n, ...]) -> scalar, on valid steps only.
        pairs: (k1, k2) with 1 <= k1 <= k2.
        updates: optimizer steps per pair (>= 1).
        tail: final_loss averages the last ``tail`` updates.
        evaluate: optional model -> held-out loss, called after each training.

    Returns:
        :class:`GridSearchResult`; ``.table()`` (markdown), ``.plot(path)`` (PNG).
    """
    from .train import train_tbptt

    updates = _check_positive_int(updates, "updates")
    tail = _check_positive_int(tail, "tail")
    if not pairs:
        raise ValueError("pairs must hold at least one (k1, k2) pair")
    checked = []
    for i, pair in enumerate(pairs):
        try:
            k1, k2 = pair
        except (TypeError, ValueError):
            raise ValueError(f"pairs[{i}] must be a (k1, k2) pair, got {pair!r}") from None
        k1 = _check_positive_int(k1, f"pairs[{i}][0] (k1)")
        k2 = _check_positive_int(k2, f"pairs[{i}][1] (k2)")
        if k1 > k2:
            raise ValueError(f"pairs[{i}] = ({k1}, {k2}) breaks the rule k1 <= k2 (a chunk must fit in the window)")
        checked.append((k1, k2))

    points = []
    for k1, k2 in checked:
        torch.manual_seed(seed)
        model = build_model()
        _truncated_lstms(model)
        optimizer = build_optimizer(model.parameters())
        torch.manual_seed(seed + 1)
        run = train_tbptt(model, optimizer, loss_fn, make_chunks(k1), k2=k2, max_updates=updates,
                          clip_grad_norm=clip_grad_norm, cycle=True, progress=False)
        eval_loss = float(evaluate(model)) if evaluate is not None else None
        spu = float(np.median(run.update_seconds[1:] if len(run.update_seconds) > 1 else run.update_seconds))
        points.append(GridPoint(
            k1=k1, k2=k2, final_loss=float(np.mean(run.losses[-tail:])), eval_loss=eval_loss,
            seconds_per_update=spu, microseconds_per_step=1e6 * spu / k1,
            history_nbytes=run.history_nbytes, updates=run.updates, losses=list(run.losses)))
    return GridSearchResult(points)
