"""TruncatedLSTM and TruncatedGRU: drop-in torch.nn.LSTM and torch.nn.GRU that train with
truncated BPTT(k1, k2).

Feed a long stream in consecutive chunks (the chunk length is k1) and pass the returned state
back in; each chunk's backward reaches k2 steps back through a history ring instead of a graph
that grows with the stream. Both are one class, _TruncatedRNN, which holds the whole forward
(streams, history modes, ARTBP, packed and unbatched input, resets, dropout, state checks);
the subclasses give the cell, the parameters' gate count, the call's state argument and the
state object returned (LSTMState, a tuple (h_n, c_n); GRUState, the tensor h_n). With
proj_size = P > 0 a TruncatedLSTM is nn.LSTM's LSTM with projections (cell "lstmp"): h and
the output are of size P, c of size H.
"""
import math
import numbers

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .artbp import ARTBP
from .function import ChunkPlan, TruncatedRNNFunction
from .history import CELLS, MODES, History, accumulation_dtype, state_sizes

FLAG_RESET, FLAG_HOLD = 1, 2  # step flags, as csrc/tbptt/window.h defines them


class _StreamState:
    """What LSTMState and GRUState carry besides the state's values: the stream's history, its
    position and the window of the chunk that made it."""

    def _carry(self, history, step, window):
        self.history = history  # None: no history recorded (no_grad / eval)
        self.step = step        # the stream step this state follows (history.end when made)
        self.window = window    # steps the backward of the chunk that made it reaches
        return self

    @property
    def history_nbytes(self):
        """Bytes the history ring of this stream holds on its device (0 without history)."""
        return self.history.nbytes if self.history is not None else 0


class LSTMState(_StreamState, tuple):
    """(h_n, c_n), as nn.LSTM returns, plus the stream's history: h_n [num_layers, B, O]
    (O = proj_size if proj_size > 0 else hidden_size), c_n [num_layers, B, hidden_size].

    Pass it back as the next call's state to continue the stream; unpack it like nn.LSTM's.
    A plain (h0, c0) tuple instead starts a fresh window from those tensors.
    """

    def __new__(cls, h, c, history=None, step=0, window=None):
        return tuple.__new__(cls, (h, c))._carry(history, step, window)

    def __reduce__(self):
        """torch.save keeps everything needed to continue the stream exactly: (h_n, c_n), the
        history ring, the steps it holds and the stream's position. torch.load(...) with its
        default weights_only=True reads it back (import tbptt_cuda first: it allowlists
        _restore_state, which builds only tensors and integers, checked)."""
        history = self.history.to_dict() if self.history is not None else None
        return (_restore_state, (self[0].detach(), self[1].detach(), history, self.step,
                                 self.window))


def _restore_state(h, c, history, step, window=None):
    """Rebuilds a pickled LSTMState (see LSTMState.__reduce__)."""
    if not isinstance(h, torch.Tensor) or not isinstance(c, torch.Tensor):
        raise ValueError("TruncatedLSTM state: h and c must be tensors")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"TruncatedLSTM state: step must be an integer >= 0, got {step!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
        raise ValueError(f"TruncatedLSTM state: window must be an integer, got {window!r}")
    # an LSTM's stream or, with proj_size, an "lstmp" one (a GRU's is refused by name)
    cell = "lstmp" if isinstance(history, dict) and history.get("cell_kind") == "lstmp" else "lstm"
    return LSTMState(h, c, History.from_dict(history, cell) if history is not None else None,
                     step, window)


class GRUState(_StreamState, torch.Tensor):
    """h_n [num_layers, B, H] as nn.GRU returns it -- a tensor -- plus the stream's history.

    Pass it back as the next call's hx to continue the stream. It is a torch.Tensor (index it,
    take its shape, use it in a loss, as nn.GRU's h_n); any operation on it gives a plain
    tensor (h_n[-1], h_n.detach(), h_n.to(...)), and a plain tensor passed as hx starts a new
    stream from those values. Its attributes are LSTMState's: history, step, window,
    history_nbytes.
    """

    # Operations on a GRUState run as on a plain tensor and return plain tensors (nn.Parameter's
    # way): only the object the module returned carries the stream.
    __torch_function__ = torch._C._disabled_torch_function_impl

    def __new__(cls, h, history=None, step=0, window=None):
        # the same tensor, still in the autograd graph
        return h.as_subclass(cls)._carry(history, step, window)

    def __reduce_ex__(self, protocol):
        """torch.save keeps everything needed to continue the stream exactly (h_n, the history
        ring, the steps it holds and the stream's position); torch.load(...) with its default
        weights_only=True reads it back (import tbptt_cuda first: it allowlists
        _restore_gru_state, which builds only tensors and integers, checked)."""
        history = self.history.to_dict() if self.history is not None else None
        return (_restore_gru_state, (self.as_subclass(torch.Tensor).detach(), history, self.step,
                                     self.window))

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        import copy

        copied = GRUState(copy.deepcopy(self.as_subclass(torch.Tensor), memo),
                          copy.deepcopy(self.history, memo), self.step, self.window)
        memo[id(self)] = copied
        return copied


def _restore_gru_state(h, history, step, window=None):
    """Rebuilds a pickled GRUState (see GRUState.__reduce_ex__)."""
    if not isinstance(h, torch.Tensor):
        raise ValueError("TruncatedGRU state: h must be a tensor")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"TruncatedGRU state: step must be an integer >= 0, got {step!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
        raise ValueError(f"TruncatedGRU state: window must be an integer, got {window!r}")
    return GRUState(h, History.from_dict(history, "gru") if history is not None else None, step,
                    window)


torch.serialization.add_safe_globals([_restore_state, _restore_gru_state])


def _cpu_autocast_dtype(param):
    """The dtype a float32 module on the CPU runs in under torch.autocast("cpu", dtype=...)
    (bfloat16 or float16), or None (no CPU autocast, or parameters not float32)."""
    if param.device.type != "cpu" or param.dtype != torch.float32 \
            or not torch.is_autocast_enabled("cpu"):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def _positive_int(name, value, who="TruncatedLSTM"):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


class _TruncatedRNN(nn.Module):
    """The machinery TruncatedLSTM and TruncatedGRU share (see TruncatedLSTM's docstring for
    what each argument does). A subclass sets:

        cell            "lstm" or "gru": the ops' cell, what tbptt_cuda.reference.cell_of reads
                        (a TruncatedLSTM with proj_size > 0 sets "lstmp" on the instance)
        _gates          gate blocks of H rows in weight_ih / weight_hh (4 or 3)
        _state_type     the state class it returns (LSTMState, GRUState)
        _split_state    the call's state argument -> its tensors and the stream it continues
        _make_state     (h_n, c_n, history, step, window) -> the state object returned
    """

    cell = None
    _gates = None
    _state_type = None
    _plain_state_hint = None  # how a stale-state message says to start a new stream

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, k2=None, artbp=None, history="activations",
                 checkpoint_every=None, device=None, dtype=None, proj_size=0):
        super().__init__()
        who = self._who
        if bidirectional:
            raise ValueError(
                f"{who}: bidirectional=True is not supported: a stream is consumed "
                "forward in time, chunk by chunk, so a backward-in-time direction would need "
                "the future of the stream.")
        self.input_size = _positive_int("input_size", input_size, who)
        self.hidden_size = _positive_int("hidden_size", hidden_size, who)
        self.num_layers = _positive_int("num_layers", num_layers, who)
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) \
                or proj_size < 0:
            raise ValueError(f"{who}: proj_size must be an integer >= 0 (0: no projection), got "
                             f"{proj_size!r}")
        if proj_size >= self.hidden_size:
            raise ValueError(f"{who}: proj_size must be smaller than hidden_size (nn.LSTM's "
                             f"rule), got proj_size={proj_size}, hidden_size={self.hidden_size}")
        self.proj_size = int(proj_size)
        if self.proj_size:
            self.cell = "lstmp"  # h = (o * tanh(c)) W_hr^T: the ops' cell 1
        if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{who}: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = False
        self.k2 = k2
        self.artbp = artbp
        self.history = history
        self.checkpoint_every = checkpoint_every
        self.last_dropout_masks = None  # [layers-1, L, B, O] of the last training call (tests)
        factory = dict(device=device, dtype=dtype)
        gates = self._gates * self.hidden_size
        out = self._out_size
        # nn.LSTM's (nn.GRU's) names, shapes and order: per layer w_ih, w_hh, b_ih, b_hh, w_hr
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else out
            self.register_parameter(f"weight_ih_l{layer}",
                                    nn.Parameter(torch.empty(gates, layer_input, **factory)))
            self.register_parameter(f"weight_hh_l{layer}",
                                    nn.Parameter(torch.empty(gates, out, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{layer}",
                                        nn.Parameter(torch.empty(gates, **factory)))
                self.register_parameter(f"bias_hh_l{layer}",
                                        nn.Parameter(torch.empty(gates, **factory)))
            if self.proj_size:
                self.register_parameter(f"weight_hr_l{layer}", nn.Parameter(
                    torch.empty(self.proj_size, self.hidden_size, **factory)))
        self.reset_parameters()

    @property
    def _out_size(self):
        """O, the size of h and of the output: proj_size if > 0, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def _who(self):
        """The module's name in messages: TruncatedLSTM or TruncatedGRU."""
        return CELLS[self.cell]

    @property
    def k2(self):
        return self._k2

    @k2.setter
    def k2(self, value):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{self._who}: k2 must be None or an integer >= 1, got {value!r}")
            value = int(value)
        self._k2 = value

    @property
    def artbp(self):
        return self._artbp

    @artbp.setter
    def artbp(self, value):
        if value is not None and not isinstance(value, ARTBP):
            raise TypeError(f"{self._who}: artbp must be None or a tbptt_cuda.ARTBP, got "
                            f"{type(value).__name__}")
        self._artbp = value

    @property
    def history(self):
        return self._history

    @history.setter
    def history(self, value):
        if value not in MODES:
            raise ValueError(f"{self._who}: history must be one of {MODES}, got {value!r}")
        self._history = value

    @property
    def checkpoint_every(self):
        return self._checkpoint_every

    @checkpoint_every.setter
    def checkpoint_every(self, value):
        if value is not None:
            value = _positive_int("checkpoint_every", value, self._who)
        self._checkpoint_every = value

    def reset_parameters(self):
        """nn.LSTM's and nn.GRU's initialisation: uniform(-1/sqrt(H), 1/sqrt(H)), weight_hr
        included."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def _flat_weights(self):
        names = ["weight_ih_l{}", "weight_hh_l{}"] + (["bias_ih_l{}", "bias_hh_l{}"] if self.bias else [])
        names += ["weight_hr_l{}"] if self.proj_size else []  # the ops' order (nn.LSTM's)
        return [getattr(self, n.format(layer)) for layer in range(self.num_layers) for n in names]

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        text += f", k2={self.k2}"
        if self.artbp is not None:
            text += f", artbp={self.artbp}"
        if self.history != "activations":
            text += f", history={self.history!r}"
            if self.history == "checkpoints" and self.checkpoint_every is not None:
                text += f", checkpoint_every={self.checkpoint_every}"
        return text

    def flatten_parameters(self):
        """As nn.LSTM's and nn.GRU's on the CPU: nothing to do (our kernels read the parameters
        where they are), returns None. Scripts call it after .to(device) or under
        DataParallel."""
        return None

    # ----------------------------------------------------------------------------------------
    # What the subclasses give.

    def _split_state(self, state):
        """The call's state -> (pairs, stream): pairs, [(name, tensor)] of the state's values
        with h first (h [num_layers, B, O], c [num_layers, B, H]; [num_layers, O] and
        [num_layers, H] unbatched), or None for no state;
        stream, the returned state object that `state` is (it may continue its stream), or
        None for plain tensors (a new stream from their values, which get gradient)."""
        raise NotImplementedError

    def _make_state(self, h_n, c_n, history, step, window):
        """The state object a call returns."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------
    def _forward(self, input, state, reset):  # noqa: A002  (torch.nn's names)
        """out, state for input: a tensor [L, B, I] ([B, L, I] with batch_first), an unbatched
        [L, I] (state [num_layers, O]), or a PackedSequence (output packed the same way)."""
        who = self._who
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, state, reset)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{who}: input must be a tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        run = self._run_for(state)
        if input.dim() == 2:  # one unbatched sequence [L, I], as torch.nn takes it
            flags = self._step_flags(reset, input.shape[0], 1, unbatched=True)
            out, new_state = run(input.unsqueeze(1), state, flags, input, unbatched=True)
            return out.squeeze(1), new_state
        if input.dim() != 3:
            layout = "[B, L, input_size]" if self.batch_first else "[L, B, input_size]"
            raise ValueError(f"{who}: input must be 3-D {layout} or 2-D [L, input_size] "
                             f"(unbatched), got shape {tuple(input.shape)}")
        x = input.transpose(0, 1) if self.batch_first else input  # [L, B, I]
        flags = self._step_flags(reset, x.shape[0], x.shape[1])
        out, new_state = run(x, state, flags, input)
        return (out.transpose(0, 1) if self.batch_first else out), new_state

    def _run_for(self, state):
        """_run, or, for a chunk that continues a stream, _run outside torch.compile's graph:
        the stream's position is Python state that changes every chunk (traced, it would be a
        new symbolic integer each call, which Inductor cannot yet write back). A fresh chunk is
        traced whole (fullgraph=True works)."""
        if isinstance(state, self._state_type) and state.history is not None:
            return self._run_eager
        return self._run

    def _forward_packed(self, packed, state, reset):
        """A PackedSequence is one chunk of the stream, padded to its longest sequence: a row
        whose sequence is shorter holds still (its state unchanged, no output) for the steps
        past its length, which still count as steps of the stream (for k2). Rows are in the
        original (unsorted) order, as torch.nn's state is."""
        who = self._who
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        if data.dim() != 2:
            raise ValueError(f"{who}: a PackedSequence's data must be 2-D [N, input_size], "
                             f"got shape {tuple(data.shape)}")
        if reset is not None and (not isinstance(reset, torch.Tensor) or reset.dim() != 1):
            raise ValueError(f"{who}: with a PackedSequence input, reset must be a bool [B] "
                             "tensor (new sequences at the chunk's first step, in the original "
                             "batch order); per-step resets need a padded tensor input")
        steps, batch = batch_sizes.numel(), int(batch_sizes[0])
        device = data.device
        # (step, row) of every packed element: row = the original batch index.
        step_of = torch.arange(steps).repeat_interleave(batch_sizes)
        offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
        rank = torch.arange(data.shape[0]) - offsets[step_of]
        row_of = rank.to(device) if sorted_indices is None else sorted_indices[rank.to(device)]
        step_of = step_of.to(device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device).index_add_(
            0, row_of, torch.ones_like(row_of))
        hold = torch.arange(steps, device=device).unsqueeze(1) >= lengths.unsqueeze(0)  # [L, B]
        flags = self._step_flags(reset, steps, batch, hold=hold)
        padded = data.new_zeros(steps, batch, data.shape[1]).index_put((step_of, row_of), data)
        out, new_state = self._run_for(state)(padded, state, flags, data)
        return PackedSequence(out[step_of, row_of], batch_sizes, sorted_indices,
                              unsorted_indices), new_state

    def _run(self, x, state, flags, input, unbatched=False):  # noqa: A002
        """The chunk x [L, B, I] (time-major), flags [L, B] uint8 or None -> out [L, B, O] and the
        new state ([num_layers, O] and [num_layers, H] tensors when unbatched)."""
        who = self._who
        weights = self._flat_weights
        param = weights[0]
        L, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"{who}: input has {I} features, expected input_size={self.input_size}")
        if L == 0:
            raise ValueError(f"{who}: input has no timesteps (L = 0); a chunk needs L >= 1")
        if B == 0:
            raise ValueError(f"{who}: input has batch size 0")
        cast = _cpu_autocast_dtype(param)
        if cast is not None:
            # torch.autocast("cpu", dtype=bfloat16/float16) on a float32 module: the chunk runs
            # in that dtype on copies of the parameters (the casts are part of the graph, so
            # their float32 gradients reach the parameters), as torch.nn does under autocast.
            weights = [w.to(cast) for w in weights]
            param = weights[0]
            x = x.to(cast)
        elif input.dtype != param.dtype and torch.is_autocast_enabled(input.device.type):
            x = x.to(param.dtype)  # under CUDA autocast the RNN runs in its parameters' dtype
        if x.dtype != param.dtype:
            raise TypeError(f"{who}: input dtype {input.dtype} does not match the "
                            f"parameters' {param.dtype} (convert one with .to())")
        if input.device != param.device:
            raise ValueError(f"{who}: input is on {input.device}, the parameters on "
                             f"{param.device}; move one with .to()")
        k2, artbp = self.k2, self.artbp
        if k2 is not None and L > k2:
            raise ValueError(
                f"{who}: the chunk has L={L} steps but k2={k2}: TBPTT(k1, k2) needs "
                "1 <= L <= k2. Feed shorter chunks or raise k2.")
        if artbp is not None and (k2 is None or k2 > artbp.cap):
            raise ValueError(
                f"{who}: artbp needs k2, the shortest backward length, set and in "
                f"[chunk length, cap] = [{L}, {artbp.cap}], got k2={k2}: every loss of the chunk "
                "must lie where ARTBP does not reweight")
        h0, c0, history, explicit = self._resolve_state(state, B, param, unbatched, cast)
        training = self.training
        use_ring = torch.is_grad_enabled()
        if use_ring and not training:
            # eval with autograd on: a private ring for this chunk only, carried nowhere
            history, k2, artbp = History(h0, c0, self.input_size, self.cell), None, None
        elif use_ring and history is None:
            history = History(h0, c0, self.input_size, self.cell)
        if use_ring and history.batch != B:
            raise ValueError(f"{who}: state has batch size {history.batch}, input has {B}")

        masks = None
        if training and self.dropout > 0 and self.num_layers > 1:
            keep = 1.0 - self.dropout
            masks = torch.empty(self.num_layers - 1, L, B, self._out_size,
                                dtype=param.dtype, device=param.device).bernoulli_(keep).div_(keep)
            self.last_dropout_masks = masks

        if use_ring:
            a = history.end
            capacity = artbp.cap if artbp is not None else k2
            mode = self.history if training else "activations"
            every = 1
            if mode == "checkpoints":
                # the automatic interval is chosen once per stream: a new one would drop the
                # history (the checkpoints kept are at multiples of the old one)
                kept = history.ring if history.ring is not None and history.ring.mode == mode else None
                every = self.checkpoint_every or (kept.every if kept is not None else
                                                  math.ceil(math.sqrt(capacity or L)))
            ring = history.ring_for(L, capacity, with_mask=masks is not None, mode=mode, every=every)
            window = artbp.sample(k2) if artbp is not None else k2  # the backward length
            w = history.window_start(a + L, a, window)
            scales = artbp.carry_scales(a + L - w, k2) if artbp is not None else None
            plan = ChunkPlan(history, ring, a, a + L, w, flags, masks, self.bias,
                             param.new_empty(0), scales, self.cell)
        else:
            plan = ChunkPlan(None, None, 0, L, 0, flags, masks, self.bias, param.new_empty(0),
                             cell=self.cell)
        if not explicit:
            h0, c0 = h0.detach(), c0.detach()
        out, h_n, c_n = TruncatedRNNFunction.apply(plan, x, h0, c0, *weights)
        carried = history if (use_ring and training) else None
        if unbatched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return out, self._make_state(h_n, c_n, carried, carried.end if carried is not None else 0,
                                     plan.chunk_end - plan.window_start)

    _run_eager = torch.compiler.disable(_run)

    def _step_flags(self, reset, L, B, hold=None, unbatched=False):
        """reset (and the hold mask [L, B] bool of a packed chunk) -> step flags [L, B] uint8
        (bit 0 reset, bit 1 hold: csrc/tbptt/window.h), or None when there are none."""
        who = self._who
        resets = None
        if reset is not None:
            if not isinstance(reset, torch.Tensor) or reset.dtype != torch.bool:
                raise TypeError(f"{who}: reset must be a bool tensor, got "
                                f"{getattr(reset, 'dtype', type(reset).__name__)}")
            one_step, per_step = ((), (L,)) if unbatched else ((B,), (B, L) if self.batch_first else (L, B))
            names = ("[]", "[L]") if unbatched else ("[B]", "[B, L]" if self.batch_first else "[L, B]")
            if tuple(reset.shape) == one_step:
                resets = torch.zeros(L, B, dtype=torch.bool, device=reset.device)
                resets[0] = reset
            elif tuple(reset.shape) == per_step:
                resets = reset.reshape(L, 1) if unbatched else (reset.t() if self.batch_first else reset)
            elif reset.dim() == 1 and not unbatched:
                raise ValueError(f"{who}: reset of shape [B] must have B={B} entries, "
                                 f"got {tuple(reset.shape)}")
            else:
                raise ValueError(f"{who}: reset must be {names[0]} or {names[1]} = "
                                 f"{one_step} or {per_step}, got {tuple(reset.shape)}")
        if resets is None and hold is None:
            return None
        device = self._flat_weights[0].device
        flags = torch.zeros(L, B, dtype=torch.uint8, device=device)
        if resets is not None:
            flags |= resets.to(device=device, dtype=torch.uint8) * FLAG_RESET
        if hold is not None:
            flags |= hold.to(device=device, dtype=torch.uint8) * FLAG_HOLD
        return flags.contiguous()

    def _resolve_state(self, state, B, param, unbatched=False, cast=None):
        """-> (h0 [layers, B, O], c0 (the LSTMs' [layers, B, H]; the GRU's zero-width
        [layers, B, 0] of the accumulation dtype), history or None, explicit: gradient may
        reach the given state tensors)."""
        who = self._who
        has_cell = self.cell != "gru"
        # per state tensor (h first, then the LSTMs' c): its last size and that size's name
        sizes = [(self._out_size, "proj_size" if self.proj_size else "hidden_size"),
                 (self.hidden_size, "hidden_size")][:2 if has_cell else 1]
        pairs, stream = self._split_state(state)
        if pairs is None:
            pairs = [(name, torch.zeros(self.num_layers, B, size, dtype=param.dtype,
                                        device=param.device))
                     for name, (size, _) in zip(("h0", "c0"), sizes)]
            unbatched = False  # made batched
            explicit = False
        else:
            explicit = stream is None
        if cast is not None and stream is None:
            # under CPU autocast a float32 module runs in the autocast dtype: so does its state
            pairs = [(name, t.to(cast) if isinstance(t, torch.Tensor) and t.dtype == torch.float32
                      else t) for name, t in pairs]
        rank = 2 if unbatched else 3
        for (name, t), (size, size_name) in zip(pairs, sizes):
            layout = f"[num_layers, {size_name}]" if unbatched else f"[num_layers, B, {size_name}]"
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{who}: state {name} must be a tensor")
            if t.dim() != rank:
                raise ValueError(
                    f"{who}: for {'an unbatched 2-D' if unbatched else 'a batched 3-D'} "
                    f"input the state {name} must be {rank}-D {layout}, "
                    f"got {t.dim()}-D {list(t.shape)}")
            expected = (self.num_layers, size) if unbatched else (self.num_layers, B, size)
            if tuple(t.shape) != expected:
                raise ValueError(f"{who}: state {name} must be {layout} = "
                                 f"{list(expected)}, got {list(t.shape)}")
            if t.dtype != param.dtype:
                raise TypeError(f"{who}: state {name} dtype {t.dtype} does not match the "
                                f"parameters' {param.dtype}")
            if t.device != param.device:
                raise ValueError(f"{who}: state {name} is on {t.device}, the parameters "
                                 f"on {param.device}")
        tensors = [t.unsqueeze(1) if unbatched else t for _, t in pairs]
        h0 = tensors[0]
        if has_cell:
            c0 = tensors[1]
        else:  # no cell state: a zero-width one keeps the ops' (h, c) schema (notes/cells.md §2)
            c0 = h0.new_empty(self.num_layers, B, 0, dtype=accumulation_dtype(h0.dtype))
        history = None
        if stream is not None:
            history = stream.history
            if history is not None:
                self._check_history(history, B, param)
                if history.end != stream.step:
                    raise ValueError(
                        f"{who}: this state is stale: its stream has advanced "
                        f"{history.end - stream.step} steps past it. Pass the latest state, or "
                        f"{self._plain_state_hint} to start a new stream from these values.")
        return h0, c0, history, explicit

    def _check_history(self, history, B, param):
        """A state's history (e.g. from a checkpoint) must come from a module of this shape."""
        who = self._who
        layers = history.h_init.shape[0]
        hidden, proj = state_sizes(history.cell_kind, history.h_init, history.c_init)
        if (history.cell_kind, layers, hidden, proj, history.input_size) != (
                self.cell, self.num_layers, self.hidden_size, self.proj_size, self.input_size):
            def described(num_layers, hidden_size, proj_size, input_size):
                projection = f", proj_size={proj_size}" if proj_size else ""
                return (f"num_layers={num_layers}, hidden_size={hidden_size}{projection}, "
                        f"input_size={input_size}")

            raise ValueError(
                f"{who}: state: its history was recorded by a {CELLS[history.cell_kind]} with "
                f"{described(layers, hidden, proj, history.input_size)}; this module has "
                f"{described(self.num_layers, self.hidden_size, self.proj_size, self.input_size)}")
        if history.h_init.dtype != param.dtype or history.h_init.device != param.device:
            raise ValueError(
                f"{who}: state: its history is {history.h_init.dtype} on "
                f"{history.h_init.device}, the parameters {param.dtype} on {param.device} (load the "
                "checkpoint with map_location, or move the module)")


class TruncatedLSTM(_TruncatedRNN):
    """Multi-layer LSTM trained with TBPTT(k1, k2); arguments and parameters as nn.LSTM's.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout: as torch.nn.LSTM.
        proj_size: as torch.nn.LSTM's (LSTM with projections): 0 (default) for none, or
            0 < P < hidden_size: each layer's h is (o * tanh(c)) W_hr^T of size P, with
            parameters weight_hr_l{k} [P, hidden_size] after the biases (nn.LSTM's names, order
            and initialisation; state_dict loads from and into nn.LSTM(proj_size=P)); h, the
            output and the upper layers' input are of size P, c stays hidden_size.
        k2: how many steps, ending at a chunk's last step, its gradient flows back through
            (into earlier chunks of the stream via the history). None: truncate at the chunk's
            start (BPTT(k, k)). A chunk may not be longer than k2. May change between calls.
        artbp: None, or a tbptt_cuda.ARTBP(cap, ...): unbiased truncation. Each update draws
            its backward length W in [k2, cap] and reweights the gradient so that its
            expectation is TBPTT's with k2 = cap (k2 is then the shortest window; the history
            holds cap + 1 steps). May change between calls.
        history: what the history stores, trading memory for recomputation in backward:
            "activations" (gates, c, h per step and layer: the default; with proj_size h is
            P wide), "states" (c, h per
            step and layer; backward rebuilds the gates with two GEMMs per layer) or
            "checkpoints" (per step only the input; c, h of every layer every checkpoint_every
            steps; backward recomputes the window a segment at a time). The same gradient in
            every mode (to rounding). May change between calls; the next window then starts at
            the change.
        checkpoint_every: s for "checkpoints" (None: ceil(sqrt(the longest window)), chosen at
            the stream's start).

    Call: ``out, state = lstm(x, state=None, reset=None)``
        x: [L, B, input_size] ([B, L, input_size] with batch_first).
        state: None (zero state, new stream), the state returned by the previous call
            (continue the stream; never detach it), or a plain tuple (h0, c0): h0
            [num_layers, B, O] and c0 [num_layers, B, hidden_size], O = proj_size if > 0 else
            hidden_size (a new stream from those values; gradient reaches them as in nn.LSTM).
        reset: bool [B] (reset at the chunk's first step) or [L, B] ([B, L] with batch_first):
            where True, that row's state (all layers) is zeroed before that step, which also
            stops the gradient there.
        Returns out [L, B, O] ([B, L, O]) and an LSTMState (h_n, c_n); its `window` is the
        number of steps this chunk's backward reaches.

    Gradient: of the chunk's loss through the window of its last k2 steps, with the current
    parameters; it reaches every parameter from all window steps and this chunk's x, not the
    inputs of earlier chunks. Steps of earlier chunks were recorded with the parameters of
    their time: after an optimizer step the window mixes old activations with current
    recurrent weights (the usual online TBPTT approximation). Under torch.no_grad() or in
    eval mode nothing is written to the history.
    """

    cell = "lstm"  # "lstmp" on an instance with proj_size > 0
    _gates = 4  # i, f, g, o
    _state_type = LSTMState
    _plain_state_hint = "a plain tuple (h, c)"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, k2=None, artbp=None,
                 history="activations", checkpoint_every=None, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, k2, artbp, history, checkpoint_every, device, dtype,
                         proj_size)

    def forward(self, input, state=None, reset=None, *, hx=None):  # noqa: A002  (nn.LSTM's names)
        """out, state = lstm(input, state=None, reset=None); `hx=` is accepted as nn.LSTM's name
        for the state. input: a tensor [L, B, I] ([B, L, I] with batch_first), an unbatched
        [L, I] (state h [num_layers, O], c [num_layers, H]), or a PackedSequence (output
        packed the same way)."""
        if hx is not None:
            if state is not None:
                raise TypeError("TruncatedLSTM: pass the state once, as `state` or as `hx`")
            state = hx
        return self._forward(input, state, reset)

    def _split_state(self, state):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("TruncatedLSTM: state must be None, the state returned by the "
                            "previous call, or a tuple (h0, c0)")
        stream = state if isinstance(state, LSTMState) else None
        return [("h0", state[0]), ("c0", state[1])], stream

    def _make_state(self, h_n, c_n, history, step, window):
        return LSTMState(h_n, c_n, history, step, window)


class TruncatedGRU(_TruncatedRNN):
    """Multi-layer GRU trained with TBPTT(k1, k2); arguments and parameters as nn.GRU's.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout: as torch.nn.GRU
            (gates r, z, n: weight_ih_l{k} [3H, I], weight_hh_l{k} [3H, H], bias_ih_l{k} and
            bias_hh_l{k} [3H]; state_dict loads from and into nn.GRU). bidirectional=True is
            refused (a stream is consumed forward in time).
        k2, artbp, history, checkpoint_every: as TruncatedLSTM's. The GRU has no cell state:
            "activations" keeps r, z, n and W_hn h + b_hn (4H) and h per step and layer,
            "states" h only, "checkpoints" h every checkpoint_every steps.

    Call: ``out, h_n = gru(x, hx=None, reset=None)``
        x: [L, B, input_size] ([B, L, input_size] with batch_first), an unbatched
            [L, input_size], or a PackedSequence, as nn.GRU takes them.
        hx: None (zero state, new stream), the h_n returned by the previous call (continue
            the stream; never detach it), or a plain tensor h0 [num_layers, B, hidden_size]
            ([num_layers, hidden_size] unbatched): a new stream from those values; gradient
            reaches it as in nn.GRU.
        reset: as TruncatedLSTM's.
        Returns out [L, B, H] ([B, L, H]) and h_n, a GRUState: the tensor
        [num_layers, B, hidden_size] nn.GRU returns, which also carries the stream (its
        `window` is the number of steps this chunk's backward reaches).

    Gradient: as TruncatedLSTM's.
    """

    cell = "gru"
    _gates = 3  # r, z, n
    _state_type = GRUState
    _plain_state_hint = "a plain tensor (h_n.detach(), or any other)"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, k2=None, artbp=None, history="activations",
                 checkpoint_every=None, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, k2, artbp, history, checkpoint_every, device, dtype)

    def forward(self, input, hx=None, reset=None):  # noqa: A002  (nn.GRU's names)
        """out, h_n = gru(input, hx=None, reset=None). input: a tensor [L, B, I] ([B, L, I]
        with batch_first), an unbatched [L, I] (hx [num_layers, H]), or a PackedSequence
        (output packed the same way)."""
        return self._forward(input, hx, reset)

    def _split_state(self, hx):
        if hx is None:
            return None, None
        if not isinstance(hx, torch.Tensor):
            raise TypeError("TruncatedGRU: hx must be None, the h_n returned by the previous "
                            f"call, or a tensor [num_layers, B, hidden_size], got "
                            f"{type(hx).__name__}")
        return [("hx", hx)], (hx if isinstance(hx, GRUState) else None)

    def _make_state(self, h_n, c_n, history, step, window):
        return GRUState(h_n, history, step, window)
