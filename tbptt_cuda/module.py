"""TruncatedLSTM: a drop-in torch.nn.LSTM that trains with truncated BPTT(k1, k2).

Feed a long stream in consecutive chunks (the chunk length is k1) and pass the returned state
back in; each chunk's backward reaches k2 steps back through a history ring instead of a graph
that grows with the stream.
"""
import math
import numbers

import torch
from torch import nn

from . import _backend
from .function import ChunkPlan, TruncatedLSTMFunction
from .history import History


class LSTMState(tuple):
    """(h_n, c_n), each [num_layers, B, H], as nn.LSTM returns, plus the stream's history.

    Pass it back as the next call's state to continue the stream; unpack it like nn.LSTM's.
    A plain (h0, c0) tuple instead starts a fresh window from those tensors.
    """

    def __new__(cls, h, c, history=None, step=0):
        state = super().__new__(cls, (h, c))
        state.history = history  # None: no history recorded (no_grad / eval)
        state.step = step        # the stream step this state follows (history.end when made)
        return state

    @property
    def history_nbytes(self):
        """Bytes the history ring of this stream holds on its device (0 without history)."""
        return self.history.nbytes if self.history is not None else 0

    def __reduce__(self):  # pickling keeps the values, not the history
        return (tuple, ((self[0], self[1]),))


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"TruncatedLSTM: {name} must be a positive integer, got {value!r}")
    return int(value)


class TruncatedLSTM(nn.Module):
    """Multi-layer LSTM trained with TBPTT(k1, k2); arguments and parameters as nn.LSTM's.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout: as torch.nn.LSTM.
        k2: how many steps, ending at a chunk's last step, its gradient flows back through
            (into earlier chunks of the stream via the history). None: truncate at the chunk's
            start (BPTT(k, k)). A chunk may not be longer than k2. May change between calls.

    Call: ``out, state = lstm(x, state=None, reset=None)``
        x: [L, B, input_size] ([B, L, input_size] with batch_first).
        state: None (zero state, new stream), the state returned by the previous call
            (continue the stream; never detach it), or a plain tuple (h0, c0) of
            [num_layers, B, hidden_size] tensors (a new stream from those values; gradient
            reaches them as in nn.LSTM).
        reset: bool [B] (reset at the chunk's first step) or [L, B] ([B, L] with batch_first):
            where True, that row's state (all layers) is zeroed before that step, which also
            stops the gradient there.
        Returns out [L, B, H] ([B, L, H]) and an LSTMState (h_n, c_n).

    Gradient: of the chunk's loss through the window of its last k2 steps, with the current
    parameters; it reaches every parameter from all window steps and this chunk's x, not the
    inputs of earlier chunks. Steps of earlier chunks were recorded with the parameters of
    their time: after an optimizer step the window mixes old activations with current
    recurrent weights (the usual online TBPTT approximation). Under torch.no_grad() or in
    eval mode nothing is written to the history.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, k2=None, device=None,
                 dtype=None):
        super().__init__()
        if bidirectional:
            raise ValueError(
                "TruncatedLSTM: bidirectional=True is not supported: a stream is consumed "
                "forward in time, chunk by chunk, so a backward-in-time direction would need "
                "the future of the stream.")
        if proj_size:
            raise ValueError("TruncatedLSTM: proj_size is not supported (the history and the "
                             "kernels keep h at hidden_size); use proj_size=0.")
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"TruncatedLSTM: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = False
        self.proj_size = 0
        self.k2 = k2
        self.last_dropout_masks = None  # [layers-1, L, B, H] of the last training call (tests)
        factory = dict(device=device, dtype=dtype)
        gates = 4 * self.hidden_size
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size
            self.register_parameter(f"weight_ih_l{layer}",
                                    nn.Parameter(torch.empty(gates, layer_input, **factory)))
            self.register_parameter(f"weight_hh_l{layer}",
                                    nn.Parameter(torch.empty(gates, self.hidden_size, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{layer}",
                                        nn.Parameter(torch.empty(gates, **factory)))
                self.register_parameter(f"bias_hh_l{layer}",
                                        nn.Parameter(torch.empty(gates, **factory)))
        self.reset_parameters()

    @property
    def k2(self):
        return self._k2

    @k2.setter
    def k2(self, value):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"TruncatedLSTM: k2 must be None or an integer >= 1, got {value!r}")
            value = int(value)
        self._k2 = value

    def reset_parameters(self):
        """nn.LSTM's initialisation: uniform(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def _flat_weights(self):
        names = ["weight_ih_l{}", "weight_hh_l{}"] + (["bias_ih_l{}", "bias_hh_l{}"] if self.bias else [])
        return [getattr(self, n.format(layer)) for layer in range(self.num_layers) for n in names]

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        return text + f", k2={self.k2}"

    # ----------------------------------------------------------------------------------------
    def forward(self, input, state=None, reset=None):  # noqa: A002  (nn.LSTM's argument name)
        weights = self._flat_weights
        param = weights[0]
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"TruncatedLSTM: input must be a tensor, got {type(input).__name__}")
        if input.dim() != 3:
            layout = "[B, L, input_size]" if self.batch_first else "[L, B, input_size]"
            raise ValueError(
                f"TruncatedLSTM: input must be 3-D {layout}, got shape {tuple(input.shape)} "
                "(for one unbatched sequence add a batch dimension of 1)")
        x = input.transpose(0, 1) if self.batch_first else input  # [L, B, I]
        L, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"TruncatedLSTM: input has {I} features, expected input_size={self.input_size}")
        if L == 0:
            raise ValueError("TruncatedLSTM: input has no timesteps (L = 0); a chunk needs L >= 1")
        if B == 0:
            raise ValueError("TruncatedLSTM: input has batch size 0")
        if input.dtype != param.dtype and torch.is_autocast_enabled(input.device.type):
            x = x.to(param.dtype)  # under autocast the LSTM runs in its parameters' dtype
        if x.dtype != param.dtype:
            raise TypeError(f"TruncatedLSTM: input dtype {input.dtype} does not match the "
                            f"parameters' {param.dtype} (convert one with .to())")
        if param.device.type == "cpu" and param.dtype not in (torch.float32, torch.float64) \
                and not (param.dtype in (torch.float16, torch.bfloat16)
                         and _backend.emulation_active()):
            raise TypeError(f"TruncatedLSTM: on the CPU the dtype must be float32 or float64, "
                            f"got {param.dtype} (float16/bfloat16 run on CUDA, or on CPU "
                            "tensors under tbptt_cuda.emulate_cuda())")
        if input.device != param.device:
            raise ValueError(f"TruncatedLSTM: input is on {input.device}, the parameters on "
                             f"{param.device}; move one with .to()")
        k2 = self.k2
        if k2 is not None and L > k2:
            raise ValueError(
                f"TruncatedLSTM: the chunk has L={L} steps but k2={k2}: TBPTT(k1, k2) needs "
                "1 <= L <= k2. Feed shorter chunks or raise k2.")
        reset_steps = self._reset_steps(reset, L, B, param.device)

        h0, c0, history, explicit = self._resolve_state(state, B, param)
        training = self.training
        use_ring = torch.is_grad_enabled()
        if use_ring and not training:
            # eval with autograd on: a private ring for this chunk only, carried nowhere
            history, k2 = History(h0, c0, self.input_size), None
        elif use_ring and history is None:
            history = History(h0, c0, self.input_size)
        if use_ring and history.batch != B:
            raise ValueError(f"TruncatedLSTM: state has batch size {history.batch}, input has {B}")

        masks = None
        if training and self.dropout > 0 and self.num_layers > 1:
            keep = 1.0 - self.dropout
            masks = torch.empty(self.num_layers - 1, L, B, self.hidden_size,
                                dtype=param.dtype, device=param.device).bernoulli_(keep).div_(keep)
            self.last_dropout_masks = masks

        if use_ring:
            a = history.end
            ring = history.ring_for(L, k2, with_mask=masks is not None)
            plan = ChunkPlan(history, ring, a, a + L, history.window_start(a + L, a, k2),
                             reset_steps, masks, self.bias, param.new_empty(0))
        else:
            plan = ChunkPlan(None, None, 0, L, 0, reset_steps, masks, self.bias, param.new_empty(0))
        if not explicit:
            h0, c0 = h0.detach(), c0.detach()
        out, h_n, c_n = TruncatedLSTMFunction.apply(plan, x, h0, c0, *weights)
        if self.batch_first:
            out = out.transpose(0, 1)
        carried = history if (use_ring and training) else None
        return out, LSTMState(h_n, c_n, carried, carried.end if carried is not None else 0)

    def _reset_steps(self, reset, L, B, device):
        """reset -> [L, B] uint8 on the device, or None."""
        if reset is None:
            return None
        if not isinstance(reset, torch.Tensor) or reset.dtype != torch.bool:
            raise TypeError(f"TruncatedLSTM: reset must be a bool tensor, got "
                            f"{getattr(reset, 'dtype', type(reset).__name__)}")
        if reset.dim() == 1:
            if reset.shape[0] != B:
                raise ValueError(f"TruncatedLSTM: reset of shape [B] must have B={B} entries, "
                                 f"got {tuple(reset.shape)}")
            steps = torch.zeros(L, B, dtype=torch.bool, device=reset.device)
            steps[0] = reset
        elif reset.dim() == 2:
            expected = (B, L) if self.batch_first else (L, B)
            if tuple(reset.shape) != expected:
                layout = "[B, L]" if self.batch_first else "[L, B]"
                raise ValueError(f"TruncatedLSTM: reset must be [B] or {layout} = {expected}, "
                                 f"got {tuple(reset.shape)}")
            steps = reset.t() if self.batch_first else reset
        else:
            raise ValueError(f"TruncatedLSTM: reset must be [B] or [L, B], got {tuple(reset.shape)}")
        return steps.to(device=device, dtype=torch.uint8).contiguous()

    def _resolve_state(self, state, B, param):
        """-> (h0, c0, history or None, explicit: gradient may reach h0/c0)."""
        shape = (self.num_layers, B, self.hidden_size)
        if state is None:
            zeros = torch.zeros(shape, dtype=param.dtype, device=param.device)
            return zeros, zeros, None, False
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("TruncatedLSTM: state must be None, the state returned by the "
                            "previous call, or a tuple (h0, c0)")
        h0, c0 = state
        for name, t in (("h0", h0), ("c0", c0)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"TruncatedLSTM: state {name} must be a tensor")
            if tuple(t.shape) != shape:
                raise ValueError(f"TruncatedLSTM: state {name} must be [num_layers, B, hidden_size] "
                                 f"= {list(shape)}, got {list(t.shape)}")
            if t.dtype != param.dtype:
                raise TypeError(f"TruncatedLSTM: state {name} dtype {t.dtype} does not match the "
                                f"parameters' {param.dtype}")
            if t.device != param.device:
                raise ValueError(f"TruncatedLSTM: state {name} is on {t.device}, the parameters "
                                 f"on {param.device}")
        if isinstance(state, LSTMState):
            history = state.history
            if history is not None and history.end != state.step:
                raise ValueError(
                    "TruncatedLSTM: this state is stale: its stream has advanced "
                    f"{history.end - state.step} steps past it. Pass the latest state, or a "
                    "plain tuple (h, c) to start a new stream from these values.")
            return h0, c0, history, False
        return h0, c0, None, True
