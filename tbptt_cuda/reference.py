"""A readable, plain-PyTorch definition of TBPTT(k1, k2) for TruncatedLSTM (DESIGN.md section 2).

Slow on purpose: every chunk recomputes its whole window from the stream's start. It imports
nothing of this package, so the tests can hold the fused code to it.

For a chunk covering global steps [a, b) of a stream, the window is [w, b) with
w = max(b - k2, 0) (w = a when k2 is None). The gradient is that of the chunk's loss through
the window recomputed with the current parameters, starting from the detached true state
before step w. A reset of row r at step t replaces that row's state (all layers) by zeros
before step t (a select: NaN or Inf in the old state does not survive it), so no gradient
crosses it: a window step of row r that lies before the chunk and before a reset of row r at
or before the chunk's first step receives no gradient, and is left out exactly (its
activations, NaN included, cannot enter a gradient as 0 * NaN). A hold of row r at step t (a
packed chunk, past that row's sequence) leaves its state unchanged and outputs zero.

Shapes: L steps in a chunk, B rows, I input size, H hidden size, G = 4H.
"""
import torch


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step of one layer. x [B, I], h/c [B, H], w_ih [G, I], w_hh [G, H] -> (h, c) [B, H]."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def layer_weights(module):
    """[(w_ih, w_hh, b_ih, b_hh) per layer] of an nn.LSTM-named module (biases None if absent)."""
    out = []
    for layer in range(module.num_layers):
        out.append((
            getattr(module, f"weight_ih_l{layer}"),
            getattr(module, f"weight_hh_l{layer}"),
            getattr(module, f"bias_ih_l{layer}", None),
            getattr(module, f"bias_hh_l{layer}", None),
        ))
    return out


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient passing back through it by `factor`."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def run_steps(x, h, c, weights, resets=None, masks=None, holds=None, cuts=None,
              carry_scales=None):
    """Plain multi-layer LSTM over consecutive steps.

    x [T, B, I]; h, c [layers, B, H] entering the first step; weights from layer_weights();
    resets [T, B] bool or None; masks [layers-1, T, B, H] dropout masks on the input of layers
    1.. or None; holds [T, B] bool or None (rows that hold still at that step); cuts [T, B]
    bool or None (rows whose step no gradient reaches: computed from zeros instead, which a
    later reset discards); carry_scales: None or T factors, one per step, on the gradient
    that step's state receives from the next step (ARTBP's compensation). Returns out
    [T, B, H] (top layer) and (h, c) [layers, B, H] after the last step.
    """
    h = list(h.unbind(0))
    c = list(c.unbind(0))
    outputs = []
    for t in range(x.shape[0]):
        if carry_scales is not None and t > 0 and carry_scales[t - 1] != 1.0:
            h = [_ScaleGradient.apply(state, carry_scales[t - 1]) for state in h]
            c = [_ScaleGradient.apply(state, carry_scales[t - 1]) for state in c]
        step_input = x[t]
        if cuts is not None:
            cut = cuts[t].unsqueeze(1)  # [B, 1]
            step_input = torch.where(cut, torch.zeros_like(step_input), step_input)
            h = [torch.where(cut, torch.zeros_like(state), state) for state in h]
            c = [torch.where(cut, torch.zeros_like(state), state) for state in c]
        if resets is not None:
            reset = resets[t].unsqueeze(1)  # [B, 1]
            h = [torch.where(reset, torch.zeros_like(state), state) for state in h]
            c = [torch.where(reset, torch.zeros_like(state), state) for state in c]
        hold = None if holds is None else holds[t].unsqueeze(1)  # [B, 1]
        layer_input = step_input
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            if layer > 0 and masks is not None:
                layer_input = layer_input * masks[layer - 1, t]
            h_new, c_new = lstm_cell(layer_input, h[layer], c[layer], w_ih, w_hh, b_ih, b_hh)
            if hold is not None:
                h_new = torch.where(hold, h[layer], h_new)
                c_new = torch.where(hold, c[layer], c_new)
            h[layer], c[layer] = h_new, c_new
            layer_input = h_new
        outputs.append(layer_input if hold is None else
                       torch.where(hold, torch.zeros_like(layer_input), layer_input))
    return torch.stack(outputs), (torch.stack(h), torch.stack(c))


class ReferenceStream:
    """One stream fed chunk by chunk, with the gradient of DESIGN.md section 2.

    module: anything with nn.LSTM's parameter names and num_layers (its current parameters
    are used at every chunk). h0, c0 [layers, B, H]: the explicit initial state, or None for
    zeros; like any input, it gets gradient from the chunk it is given with (the first) only.
    """

    def __init__(self, module, h0=None, c0=None):
        self.module = module
        self.h0, self.c0 = h0, c0
        self.inputs = []   # [1, B, I] per step, detached
        self.resets = []   # [B] bool per step
        self.masks = []    # [layers-1, 1, B, H] per step, or None
        self.holds = []    # [B] bool per step

    def chunk(self, x, k2, reset=None, masks=None, hold=None, window=None, carry_scales=None):
        """x [L, B, I] (may require grad); reset [L, B] bool or None; masks [layers-1, L, B, H];
        hold [L, B] bool or None (rows that hold still: a packed chunk past their length).
        ARTBP: window, the backward length drawn (instead of k2), and carry_scales, one factor
        per window step, oldest first, on the gradient it receives from the next step.

        Returns out [L, B, H] and (h_n, c_n) [layers, B, H], differentiable through the window.
        """
        L, B, _ = x.shape
        a = len(self.inputs)
        b = a + L
        w = a if k2 is None else max(b - (k2 if window is None else window), 0)
        weights = layer_weights(self.module)
        layers = len(weights)
        H = weights[0][1].shape[1]
        if reset is None:
            reset = torch.zeros(L, B, dtype=torch.bool, device=x.device)
        if hold is None:
            hold = torch.zeros(L, B, dtype=torch.bool, device=x.device)
        h_start = self.h0 if self.h0 is not None else x.new_zeros(layers, B, H)
        c_start = self.c0 if self.c0 is not None else x.new_zeros(layers, B, H)
        if a > 0:  # the initial state is an input of the first chunk only
            h_start, c_start = h_start.detach(), c_start.detach()

        all_x = torch.cat(self.inputs + [x.detach()]) if self.inputs else x.detach()
        all_resets = torch.stack(self.resets + list(reset.unbind(0)))
        all_holds = torch.stack(self.holds + list(hold.unbind(0)))
        all_masks = None
        if masks is not None:
            all_masks = torch.cat([m for m in self.masks] + [masks], dim=1)

        def masks_of(start, end):
            return None if all_masks is None else all_masks[:, start:end]

        # The true state before w, detached (for w = 0: the initial state, with its gradient).
        if w > 0:
            with torch.no_grad():
                _, (h_w, c_w) = run_steps(all_x[:w], h_start, c_start, weights,
                                          all_resets[:w], masks_of(0, w), all_holds[:w])
        else:
            h_w, c_w = h_start, c_start
        window_x = torch.cat([all_x[w:a], x]) if a > w else x
        # Steps before the chunk that precede a reset at or before its first step: no gradient
        # reaches them (the reset cuts it), so they are left out, exactly.
        later_reset = all_resets[w + 1:a + 1].flip(0).cumsum(0).flip(0) > 0  # [a - w, B]
        cuts = torch.cat([later_reset, torch.zeros(L, B, dtype=torch.bool, device=x.device)])
        if carry_scales is not None and len(carry_scales) != b - w:
            raise ValueError(f"carry_scales: {len(carry_scales)} factors for a window of {b - w} steps")
        out, (h_n, c_n) = run_steps(window_x, h_w, c_w, weights, all_resets[w:b], masks_of(w, b),
                                    all_holds[w:b], cuts, carry_scales)

        self.inputs += list(x.detach().split(1))
        self.resets += list(reset.unbind(0))
        self.holds += list(hold.unbind(0))
        if masks is not None:
            self.masks += list(masks.detach().split(1, dim=1))
        return out[a - w:], (h_n, c_n)
