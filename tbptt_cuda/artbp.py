"""Unbiased truncation: Anticipated Reweighted Truncated Backpropagation (ARTBP, Tallec & Ollivier
2017), in the per-update form of shared/research/artbp.md section 2.

Each update (chunk) draws a backward length W in [k2, cap]; the gradient flows W steps back,
and where the adjoint (dh, dc of every layer) crosses from distance j-1 to distance j from the
chunk's last step it is multiplied by rho_j = S(j-1) / S(j), with S(j) = P(W >= j). Step at
distance j then carries weight 1 / S(j), and since it is reached with probability S(j), the
expected gradient is the one of TBPTT with k2 = cap: no bias towards short dependencies up to
cap steps. The chunk's own losses sit at distances <= chunk length <= k2, where S = 1.

Two distributions of the extra length D = W - k2 in {0, ..., M = cap - k2}:
- truncated geometric (c): P(D = d) = c (1 - c)^d for d < M, P(D = M) = (1 - c)^M;
  S(k2 + m) = (1 - c)^m; largest weight (1 - c)^-M.
- the paper's power-law hazard (Eq. 14, capped): h_m = (alpha - 1) / ((alpha - 2) L0 + m) for
  m < M, h_M = 1; S(k2 + m) = prod_{i < m} (1 - h_i), with L0 = mean_length (the mean of D is
  about L0 - 1 / (alpha - 2) when the cap does not bind). Weights grow polynomially.
Default (neither given): the power law with alpha = 4 and mean_length = k2.
"""
import contextlib
import numbers

import torch


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"ARTBP: {name} must be a positive integer, got {value!r}")
    return int(value)


class ARTBP:
    """ARTBP(cap, c=None, alpha=None, mean_length=None, generator=None).

    cap: the longest backward length (the history ring holds cap + 1 steps).
    c: hazard of the truncated geometric distribution, in (0, 1); or
    alpha (> 2) and mean_length (> 0): the power-law hazard of Eq. 14; either may be left out
        (alpha = 4, mean_length = k2).
    generator: a torch.Generator for the draws (reproducible runs), or None (torch's default).
    """

    def __init__(self, cap, c=None, alpha=None, mean_length=None, generator=None):
        self.cap = _positive_int("cap", cap)
        if c is not None and (alpha is not None or mean_length is not None):
            raise ValueError("ARTBP: give either c (truncated geometric) or alpha / mean_length "
                             "(power-law hazard), not both")
        if c is not None and not (isinstance(c, numbers.Real) and 0.0 < c < 1.0):
            raise ValueError(f"ARTBP: c must be in (0, 1), got {c!r}")
        if alpha is not None and not (isinstance(alpha, numbers.Real) and alpha > 2.0):
            raise ValueError(f"ARTBP: alpha must be a number > 2, got {alpha!r}")
        if mean_length is not None and not (isinstance(mean_length, numbers.Real) and mean_length > 0):
            raise ValueError(f"ARTBP: mean_length must be a number > 0, got {mean_length!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"ARTBP: generator must be a torch.Generator, got {type(generator).__name__}")
        self.c = None if c is None else float(c)
        self.alpha = None if c is not None else float(4.0 if alpha is None else alpha)
        self.mean_length = None if mean_length is None else float(mean_length)
        self.generator = generator
        self._forced = None
        self._tables = {}  # k2 -> (survival S(j) for j = 0..cap + 1, as float64)

    def __repr__(self):
        law = f"c={self.c}" if self.c is not None else \
            f"alpha={self.alpha}, mean_length={self.mean_length if self.mean_length else 'k2'}"
        return f"ARTBP(cap={self.cap}, {law})"

    # ---- the distribution ---------------------------------------------------------------------
    def _check_k2(self, k2):
        k2 = _positive_int("k2", k2)
        if k2 > self.cap:
            raise ValueError(f"ARTBP: k2={k2} (the shortest backward length) must be <= cap={self.cap}")
        return k2

    def _survival_table(self, k2):
        """S(j) = P(W >= j) for j = 0, 1, ..., cap + 1 (float64 tensor)."""
        k2 = self._check_k2(k2)
        table = self._tables.get(k2)
        if table is None:
            extra = self.cap - k2
            s = [1.0] * (k2 + 1)  # j = 0..k2
            if self.c is not None:
                s += [(1.0 - self.c) ** m for m in range(1, extra + 1)]
            else:
                l0 = self.mean_length if self.mean_length is not None else float(k2)
                alive = 1.0
                for m in range(extra):  # S(k2 + m + 1) = S(k2 + m) (1 - h_m)
                    hazard = (self.alpha - 1.0) / ((self.alpha - 2.0) * l0 + m)
                    alive *= max(0.0, 1.0 - min(hazard, 1.0))
                    s.append(alive)
            s.append(0.0)  # j = cap + 1
            table = torch.tensor(s, dtype=torch.float64)
            if not (table[1:self.cap + 1] > 0).all():
                raise ValueError(f"{self}: P(W >= j) reaches 0 before cap; lower alpha or raise "
                                 "mean_length")
            self._tables[k2] = table
        return table

    def survival(self, j, k2):
        """S(j) = P(W >= j) for backward length W drawn with minimum k2 (1 for j <= k2, 0 above
        cap). j: an int (returns a float) or an integer tensor (returns a float64 tensor)."""
        table = self._survival_table(k2)
        if isinstance(j, torch.Tensor):
            return table[j.clamp(0, self.cap + 1)]
        if isinstance(j, bool) or not isinstance(j, numbers.Integral):
            raise TypeError(f"ARTBP.survival: j must be an integer, got {j!r}")
        return float(table[min(max(int(j), 0), self.cap + 1)])

    def probabilities(self, k2):
        """P(W = w) for w = k2, ..., cap (float64 tensor of cap - k2 + 1 entries)."""
        table = self._survival_table(k2)
        return table[k2:self.cap + 1] - table[k2 + 1:self.cap + 2]

    def mean_window(self, k2):
        """E[W]: the mean backward steps per update."""
        return float(self._survival_table(k2)[1:self.cap + 1].sum())

    def carry_scales(self, window, k2):
        """The factors rho_j = S(j-1) / S(j) for distances j = window, window - 1, ..., 1: the
        per-step scale of the carried gradients, in the order of the window's steps (oldest
        first), as the backward kernels take them."""
        table = self._survival_table(k2)
        j = torch.arange(window, 0, -1)
        return (table[j - 1] / table[j]).tolist()

    # ---- drawing ------------------------------------------------------------------------------
    def sample(self, k2):
        """One backward length W in [k2, cap] (an int), or the forced one (see force)."""
        if self._forced is not None:
            return self._forced
        u = torch.rand((), dtype=torch.float64, generator=self.generator).item()
        # inverse CDF: W = the largest w with S(w) > u (S(k2) = 1 > u always)
        table = self._survival_table(k2)
        return int(torch.searchsorted(-table[k2:self.cap + 1], torch.tensor(-u, dtype=torch.float64),
                                      right=False).item()) + k2 - 1

    @contextlib.contextmanager
    def force(self, window):
        """Within the block every draw returns `window` (tests: the exact expectation)."""
        window = _positive_int("window", window)
        if window > self.cap:
            raise ValueError(f"ARTBP.force: window={window} must be <= cap={self.cap}")
        previous, self._forced = self._forced, window
        try:
            yield self
        finally:
            self._forced = previous

    def largest_weight(self, k2):
        """1 / S(cap): the largest compensation any step gets."""
        return 1.0 / float(self._survival_table(k2)[self.cap])
