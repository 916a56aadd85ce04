"""A readable, plain-PyTorch definition of TBPTT(k1, k2) (DESIGN.md section 2) for the recurrent
cells of torch.nn: the LSTM, the LSTM with projections (proj_size) and the GRU.

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

The cells (`Cell` below; `cell_of(module)` picks one from a module):

    cell    as                      one layer's state           gates (G rows)   step
    lstm    nn.LSTM                 h [B, H], c [B, H]          i, f, g, o (4H)  lstm_cell
    lstmp   nn.LSTM(proj_size=P)    h [B, P], c [B, H]          i, f, g, o (4H)  lstm_cell, w_hr
    gru     nn.GRU                  h [B, H]                    r, z, n (3H)     gru_cell

"The state" is every state tensor of every layer: a reset zeroes all of them, a hold keeps all
of them, ARTBP's carry scales multiply the gradient of all of them. A layer's output is its h,
which is also the next layer's input (dropout masks apply to it).

Shapes: T steps given to run_steps, L steps in a chunk, B rows, I input size, H hidden size,
P projection size (lstmp only), O the size of h (P for lstmp, H otherwise): a layer's output
size and the input size of the layers above the first.
"""
import torch


# ---------------------------------------------------------------------------------------------
# One step of one layer, per cell.

def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One step of one LSTM layer, as nn.LSTM (gates i, f, g, o).

    x [B, I], h [B, O], c [B, H], w_ih [4H, I], w_hh [4H, O], b_ih/b_hh [4H] or None,
    w_hr [P, H] or None (lstmp: h = (o * tanh(c)) @ w_hr^T, O = P; else O = H)
    -> (h [B, O], c [B, H]).
    """
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:
        h = h @ w_hr.t()  # the projection [B, H] -> [B, P]
    return h, c


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step of one GRU layer, as nn.GRU (gates r, z, n).

    x [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H], b_ih/b_hh [3H] or None -> h [B, H].

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    The input and recurrent products stay apart: r multiplies the recurrent part of the n gate
    only, its bias b_hn included.
    """
    gates_x = x @ w_ih.t()  # [B, 3H]
    gates_h = h @ w_hh.t()  # [B, 3H]
    if b_ih is not None:
        gates_x = gates_x + b_ih
        gates_h = gates_h + b_hh
    x_r, x_z, x_n = gates_x.chunk(3, dim=1)
    h_r, h_z, h_n = gates_h.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def _lstm_step(x, state, weights):
    h, c = state
    return lstm_cell(x, h, c, *weights)


def _gru_step(x, state, weights):
    (h,) = state
    return (gru_cell(x, h, *weights),)


# ---------------------------------------------------------------------------------------------
# The cell description and the weights of a module.

class Cell:
    """What the reference knows of a cell.

    name:   "lstm", "lstmp" or "gru".
    gates:  gate blocks of H rows in w_ih / w_hh (4: i, f, g, o; 3: r, z, n).
    states: the names of one layer's state tensors, in order; the first is h, the output.
    step:   step(x [B, I], state (tensors [B, size] in `states` order), weights (one layer's
            tuple from layer_weights)) -> the state after the step (same structure).
    """

    def __init__(self, name, gates, states, step, projected=False):
        self.name, self.gates, self.states, self.step = name, gates, states, step
        self.projected = projected  # one layer's weights end with w_hr [P, H]

    def sizes(self, weights):
        """The sizes of one layer's state tensors, from its weights: h has the size w_hh
        multiplies (O), c the hidden size H = gate rows / gates."""
        w_hh = weights[1]  # [gates * H, O]
        size = {"h": w_hh.shape[1], "c": w_hh.shape[0] // self.gates}
        return tuple(size[name] for name in self.states)

    def __repr__(self):
        return f"Cell({self.name!r})"


LSTM = Cell("lstm", 4, ("h", "c"), _lstm_step)
LSTMP = Cell("lstmp", 4, ("h", "c"), _lstm_step, projected=True)
GRU = Cell("gru", 3, ("h",), _gru_step)
CELLS = {cell.name: cell for cell in (LSTM, LSTMP, GRU)}


def layer_weights(module):
    """Per layer, the weights of a module with torch.nn's parameter names (biases None if
    absent): (w_ih, w_hh, b_ih, b_hh) for nn.LSTM and nn.GRU, and with proj_size > 0 (the
    module has weight_hr_l{k}) the 5-tuple (w_ih, w_hh, b_ih, b_hh, w_hr)."""
    out = []
    for layer in range(module.num_layers):
        weights = (
            getattr(module, f"weight_ih_l{layer}"),
            getattr(module, f"weight_hh_l{layer}"),
            getattr(module, f"bias_ih_l{layer}", None),
            getattr(module, f"bias_hh_l{layer}", None),
        )
        w_hr = getattr(module, f"weight_hr_l{layer}", None)
        out.append(weights if w_hr is None else weights + (w_hr,))
    return out


def cell_of_weights(weights):
    """The cell whose weights these are (layer_weights' list): w_hr present -> lstmp;
    w_hh with 3 rows per column (nn.GRU's [3H, H]) -> gru; 4 rows per column -> lstm."""
    first = weights[0]
    if len(first) == 5:
        return LSTMP
    rows, columns = first[1].shape
    if rows == 3 * columns:
        return GRU
    if rows == 4 * columns:
        return LSTM
    raise ValueError(f"weight_hh_l0 is [{rows}, {columns}]: neither a GRU's [3H, H] nor an "
                     f"LSTM's [4H, H] (with proj_size, weight_hr_l0 must be present)")


def cell_of(module):
    """The cell of a module with torch.nn's parameter names. The rule: the parameters decide,
    as cell_of_weights (weight_hr_l0 present: lstmp; weight_hh_l0 [3H, H]: gru; [4H, H]: lstm),
    which tells nn.LSTM, nn.LSTM(proj_size=P), nn.GRU and the modules named like them apart; a
    module may also name its cell in a `cell` attribute (a Cell or its name), which must then
    agree with the parameters (else ValueError)."""
    weights = layer_weights(module)
    found = cell_of_weights(weights)
    cell = getattr(module, "cell", None)
    if cell is None:
        return found
    if not isinstance(cell, Cell):
        if cell not in CELLS:
            raise ValueError(f"cell {cell!r}: expected one of {sorted(CELLS)}")
        cell = CELLS[cell]
    if cell is not found:
        raise ValueError(f"the module says cell {cell.name!r} but its weights are a "
                         f"{found.name!r}'s")
    return cell


# ---------------------------------------------------------------------------------------------
# Steps of a multi-layer stack, and a stream fed chunk by chunk.

class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient passing back through it by `factor`."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _each(state, fn):
    """fn applied to every state tensor of every layer. state: per layer, a tuple of tensors."""
    return [tuple(fn(tensor) for tensor in layer_state) for layer_state in state]


def run_cell(cell, x, state, weights, resets=None, masks=None, holds=None, cuts=None,
             carry_scales=None):
    """A plain multi-layer `cell` over consecutive steps.

    x [T, B, I]; state entering the first step: a tuple of [layers, B, size] tensors in
    cell.states order ((h [layers, B, O], c [layers, B, H]) or (h [layers, B, H],));
    weights from layer_weights(); resets [T, B] bool or None; masks [layers-1, T, B, O]
    dropout masks on the input of layers 1.. or None; holds [T, B] bool or None (rows that
    hold still at that step); cuts [T, B] bool or None (rows whose step no gradient reaches:
    computed from zeros instead, which a later reset discards); carry_scales: None or T
    factors, one per step, on the gradient that step's state receives from the next step
    (ARTBP's compensation).

    Returns out [T, B, O] (top layer's h) and the state after the last step (same structure).
    """
    # state[layer]: the tuple of that layer's state tensors, [B, size] each
    state = [tuple(tensor[layer] for tensor in state) for layer in range(len(weights))]
    outputs = []
    for t in range(x.shape[0]):
        if carry_scales is not None and t > 0 and carry_scales[t - 1] != 1.0:
            state = _each(state, lambda s: _ScaleGradient.apply(s, carry_scales[t - 1]))
        step_input = x[t]
        if cuts is not None:
            cut = cuts[t].unsqueeze(1)  # [B, 1]
            step_input = torch.where(cut, torch.zeros_like(step_input), step_input)
            state = _each(state, lambda s: torch.where(cut, torch.zeros_like(s), s))
        if resets is not None:
            reset = resets[t].unsqueeze(1)  # [B, 1]
            state = _each(state, lambda s: torch.where(reset, torch.zeros_like(s), s))
        hold = None if holds is None else holds[t].unsqueeze(1)  # [B, 1]
        layer_input = step_input
        for layer, layer_w in enumerate(weights):
            if layer > 0 and masks is not None:
                layer_input = layer_input * masks[layer - 1, t]
            new = cell.step(layer_input, state[layer], layer_w)
            if hold is not None:
                new = tuple(torch.where(hold, old, s) for old, s in zip(state[layer], new))
            state[layer] = new
            layer_input = new[0]  # h
        outputs.append(layer_input if hold is None else
                       torch.where(hold, torch.zeros_like(layer_input), layer_input))
    final = tuple(torch.stack([layer_state[i] for layer_state in state])
                  for i in range(len(cell.states)))
    return torch.stack(outputs), final


def nn_state(state):
    """A state tuple as torch.nn returns it: (h, c) for an LSTM, the tensor h for a GRU."""
    return state if len(state) > 1 else state[0]


def run_steps(x, h, c, weights, resets=None, masks=None, holds=None, cuts=None,
              carry_scales=None, cell=None):
    """run_cell with torch.nn's state convention: h [layers, B, O] and c [layers, B, H] (c None
    for a GRU); cell None: cell_of_weights(weights). Returns out [T, B, O] and (h, c) for an
    LSTM (lstm, lstmp), h for a GRU."""
    cell = cell_of_weights(weights) if cell is None else cell
    out, state = run_cell(cell, x, (h, c)[:len(cell.states)], weights, resets, masks, holds,
                          cuts, carry_scales)
    return out, nn_state(state)


class ReferenceStream:
    """One stream fed chunk by chunk, with the gradient of DESIGN.md section 2.

    module: anything with torch.nn's parameter names and num_layers (nn.LSTM, with or without
    proj_size, nn.GRU, and the modules named like them); its cell is cell_of(module) and its
    current parameters are used at every chunk. The explicit initial state, as torch.nn takes
    it: h0 [layers, B, O] and c0 [layers, B, H] for an LSTM (either may be None for zeros), h0
    [layers, B, H] for a GRU (c0 must be None); like any input, it gets gradient from the
    chunk it is given with (the first) only.
    """

    def __init__(self, module, h0=None, c0=None):
        self.module = module
        self.cell = cell_of(module)
        if len(self.cell.states) == 1 and c0 is not None:
            raise ValueError(f"a {self.cell.name} has no cell state: pass h0 only")
        self.h0, self.c0 = h0, c0
        self.inputs = []   # [1, B, I] per step, detached
        self.resets = []   # [B] bool per step
        self.masks = []    # [layers-1, 1, B, O] per step, or None
        self.holds = []    # [B] bool per step

    def chunk(self, x, k2, reset=None, masks=None, hold=None, window=None, carry_scales=None):
        """x [L, B, I] (may require grad); reset [L, B] bool or None; masks [layers-1, L, B, O];
        hold [L, B] bool or None (rows that hold still: a packed chunk past their length).
        ARTBP: window, the backward length drawn (instead of k2), and carry_scales, one factor
        per window step, oldest first, on the gradient it receives from the next step.

        Returns out [L, B, O] and the final state as torch.nn does ((h_n, c_n) for an LSTM,
        h_n for a GRU), differentiable through the window.
        """
        L, B, _ = x.shape
        a = len(self.inputs)
        b = a + L
        w = a if k2 is None else max(b - (k2 if window is None else window), 0)
        if w > a:
            raise ValueError(f"a chunk of {L} steps needs k2 (or window) >= {L}")
        weights = layer_weights(self.module)
        cell = self.cell
        layers = len(weights)
        if reset is None:
            reset = torch.zeros(L, B, dtype=torch.bool, device=x.device)
        if hold is None:
            hold = torch.zeros(L, B, dtype=torch.bool, device=x.device)
        # The initial state: (h0, c0) or (h0,), zeros where not given.
        start = tuple(given if given is not None else x.new_zeros(layers, B, size)
                      for given, size in zip((self.h0, self.c0), cell.sizes(weights[0])))
        if a > 0:  # the initial state is an input of the first chunk only
            start = tuple(tensor.detach() for tensor in start)

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
                _, state_w = run_cell(cell, all_x[:w], start, weights, all_resets[:w],
                                      masks_of(0, w), all_holds[:w])
        else:
            state_w = start
        window_x = torch.cat([all_x[w:a], x]) if a > w else x
        # Steps before the chunk that precede a reset at or before its first step: no gradient
        # reaches them (the reset cuts it), so they are left out, exactly.
        later_reset = all_resets[w + 1:a + 1].flip(0).cumsum(0).flip(0) > 0  # [a - w, B]
        cuts = torch.cat([later_reset, torch.zeros(L, B, dtype=torch.bool, device=x.device)])
        if carry_scales is not None and len(carry_scales) != b - w:
            raise ValueError(f"carry_scales: {len(carry_scales)} factors for a window of {b - w} steps")
        out, final = run_cell(cell, window_x, state_w, weights, all_resets[w:b], masks_of(w, b),
                              all_holds[w:b], cuts, carry_scales)

        self.inputs += list(x.detach().split(1))
        self.resets += list(reset.unbind(0))
        self.holds += list(hold.unbind(0))
        if masks is not None:
            self.masks += list(masks.detach().split(1, dim=1))
        return out[a - w:], nn_state(final)
