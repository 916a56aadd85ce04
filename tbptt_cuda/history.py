"""The history a stream carries: a ring of its last steps, on the device, in one of three modes
(csrc/lstm_driver.h, csrc/tbptt/window.h have the layouts; notes/cells.md section 2 per cell):

- "activations": per layer and step, 4H activated gate values (the LSTM's i, f, g, o; the
  GRU's r, z, n and hn = W_hn h + b_hn), the cell state c_t (H; the GRU has none: a zero-width
  record) and the hidden output h_t (O: H, or P = proj_size for the LSTM with projections);
  backward reads them.
- "states": per layer and step only c_t (LSTM) and h_t; backward rebuilds the window's gates
  with two window-wide GEMMs per layer.
- "checkpoints": per step nothing of the layers; the state (c and h; the GRU's h) of every
  layer only for the state entering every s-th step (s = checkpoint_every); backward
  recomputes the window one segment of s steps at a time from its checkpoint.
Every mode keeps, per step, the layer-0 input x_t (I), one byte of step flags per row (reset,
hold), and, where dropout is on between layers, the mask on the input of each upper layer (O).
Every record is in the module's dtype: a float16/bfloat16 ring is half a float32 one. The cell
state a step carries to the next stays float32 (accumulation_dtype); its record is rounded.

Global steps of a stream are numbered from 0 at its start; step t lives in slot t % slots.
A window of up to `capacity` steps (k2, or ARTBP's cap) needs capacity + 1 slots (the extra one
keeps the state entering it), or capacity + s in "checkpoints" (back to the checkpoint before
the window's start).
"""
import math

import torch

MODES = ("activations", "states", "checkpoints")

# The cells a history can belong to, and the module that records each (for messages): "lstmp"
# is TruncatedLSTM(proj_size=P). The ring's layout per cell: gates [layers, S, B, 4H] in
# "activations" for all; the cell state record [.., B, H] for the LSTMs and [.., B, 0]
# (zero-width) for the GRU, which has no c; h (and the dropout masks on the upper layers'
# input) [.., B, O], O = P for "lstmp", H otherwise.
CELLS = {"lstm": "TruncatedLSTM", "lstmp": "TruncatedLSTM", "gru": "TruncatedGRU"}


def cell_width(cell, hidden_size):
    """Units of the cell state c per row: H for the LSTMs, 0 for the GRU (no c)."""
    return 0 if cell == "gru" else hidden_size


def state_sizes(cell, h, c):
    """(H, P) of a stream from its state tensors h [.., O] and c [.., H or 0]: the hidden size
    and the projection size (0 but for "lstmp")."""
    if cell == "lstmp":
        return c.shape[-1], h.shape[-1]
    return h.shape[-1], 0


def _saved_cell(record, who):
    """The cell kind a saved record names; a record saved before the GRU existed has no
    "cell_kind" (the key "cell" is the ring's c record): it is an LSTM's."""
    cell = record.get("cell_kind", "lstm")
    if cell not in CELLS:
        raise ValueError(f"{who} state: unknown cell kind {cell!r}, expected one of "
                         f"{sorted(CELLS)}")
    return cell


def accumulation_dtype(dtype):
    """The cell state's dtype for a storage dtype (float32 for half/bfloat16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def step_slots(capacity, mode, every):
    """Per-step slots for windows of up to `capacity` steps."""
    return capacity + (every if mode == "checkpoints" else 1)


def checkpoint_slots(slots, every):
    """Checkpoints kept by a "checkpoints" ring of `slots` per-step slots: every checkpoint of a
    step whose input is still held."""
    return math.ceil(slots / every) + 1


class RingBuffers:
    """One allocation of the ring. A resize makes a new one; the old one is then never written
    again, so a pending backward that holds it stays valid."""

    _TENSORS = ("gates", "cell", "hidden", "input", "flags", "mask")

    def __init__(self, slots, num_layers, batch, input_size, hidden_size, dtype, device, with_mask,
                 mode="activations", every=1, cell="lstm", proj_size=0):
        if cell not in CELLS:
            raise ValueError(f"RingBuffers: cell must be one of {sorted(CELLS)}, got {cell!r}")
        if (proj_size > 0) != (cell == "lstmp"):
            raise ValueError(f"RingBuffers: proj_size={proj_size} for cell {cell!r} (a projection "
                             "is the \"lstmp\" cell's and only its)")
        self.slots, self.mode, self.every, self.with_mask = slots, mode, every, with_mask
        self.cell_kind = cell
        make = dict(device=device)
        out = proj_size or hidden_size  # O: the width of h
        layered = checkpoint_slots(slots, every) if mode == "checkpoints" else slots
        gates = (num_layers, slots, batch, 4 * hidden_size) if mode == "activations" else (0,)
        self.gates = torch.empty(gates, dtype=dtype, **make)
        self.cell = torch.empty(num_layers, layered, batch, cell_width(cell, hidden_size),
                                dtype=dtype, **make)
        self.hidden = torch.empty(num_layers, layered, batch, out, dtype=dtype, **make)
        self.input = torch.empty(slots, batch, input_size, dtype=dtype, **make)
        self.flags = torch.zeros(slots, batch, dtype=torch.uint8, **make)  # step flags
        mask_shape = (num_layers - 1, slots, batch, out) if with_mask else (0,)
        self.mask = torch.empty(mask_shape, dtype=dtype, **make)
        self.end = 0  # steps [0, end) of the stream have been written

    @property
    def mode_code(self):
        """The mode as the ops take it (csrc/lstm_driver.h HistoryMode)."""
        return MODES.index(self.mode)

    def tensors(self):
        """In the order of the ops' ring arguments."""
        return (self.gates, self.cell, self.hidden, self.input, self.flags, self.mask)

    def first_needed(self, window_start):
        """The first step whose per-step data a backward over a window from `window_start`
        reads: the one before (its state enters the window), or, in "checkpoints", the
        checkpoint the recompute starts from."""
        if self.mode == "checkpoints":
            return window_start // self.every * self.every
        return max(window_start - 1, 0)

    def earliest_window_start(self, first_kept):
        """The earliest window start whose backward finds everything in this ring, when steps
        before `first_kept` are gone."""
        if first_kept == 0:
            return 0
        if self.mode == "checkpoints":
            return -(-first_kept // self.every) * self.every
        return first_kept + 1

    def holds(self, first_step, end_step):
        """Whether steps [first_step, end_step) are still in this ring, unoverwritten."""
        return self.end - self.slots <= first_step and end_step <= self.end

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to_dict(self):
        """Everything this ring holds, as plain tensors and ints (for torch.save)."""
        record = {name: getattr(self, name) for name in self._TENSORS}
        record.update(slots=self.slots, end=self.end, with_mask=self.with_mask, mode=self.mode,
                      every=self.every, cell_kind=self.cell_kind)
        return record

    @classmethod
    def from_dict(cls, record, h_init, input_size, cell="lstm", hidden_size=None):
        """The ring of to_dict(), checked against the stream's (h_init [layers, B, O], its cell
        kind, its hidden size H: None for O, which it is but for "lstmp")."""
        who = CELLS[cell]
        ring = cls.__new__(cls)
        saved = _saved_cell(record, who)
        if saved != cell:
            raise ValueError(f"{who} state: the saved ring is of cell {saved!r}, its stream of "
                             f"cell {cell!r}")
        ring.cell_kind = cell
        ring.slots, ring.end, ring.with_mask = (_int(record, "slots", who), _int(record, "end", who),
                                                bool(record["with_mask"]))
        ring.mode = record.get("mode", "activations")
        if ring.mode not in MODES:
            raise ValueError(f"{who} state: unknown history mode {ring.mode!r}")
        ring.every = _int(record, "every", who) if "every" in record else 1
        layers, batch, out = h_init.shape
        hidden = out if hidden_size is None else hidden_size
        S = ring.slots
        layered = checkpoint_slots(S, ring.every) if ring.mode == "checkpoints" else S
        expected = {
            "gates": (layers, S, batch, 4 * hidden) if ring.mode == "activations" else (0,),
            "cell": (layers, layered, batch, cell_width(cell, hidden)),
            "hidden": (layers, layered, batch, out),
            "input": (S, batch, input_size), "flags": (S, batch),
            "mask": (layers - 1, S, batch, out) if ring.with_mask else (0,),
        }
        dtype = h_init.dtype
        for name in cls._TENSORS:
            tensor = record[name]
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected[name]:
                raise ValueError(f"{who} state: the saved ring's `{name}` should be a "
                                 f"tensor of shape {expected[name]}, got "
                                 f"{getattr(tensor, 'shape', type(tensor).__name__)}")
            wanted = torch.uint8 if name == "flags" else dtype
            if name == "cell" and tensor.dtype == accumulation_dtype(dtype):
                # Saved before c's record took the storage dtype (16-bit streams kept it float32):
                # round it as the ring now records it.
                tensor = tensor.to(dtype)
            if tensor.dtype != wanted:
                raise ValueError(f"{who} state: the saved ring's `{name}` should be "
                                 f"{wanted}, got {tensor.dtype}")
            setattr(ring, name, tensor.contiguous())
        return ring

    def copy_steps_from(self, old, first_step, end_step):
        """Copies steps [first_step, end_step) from another ring of the same mode (a resize)."""
        if end_step <= first_step:
            return
        device = self.flags.device
        steps = torch.arange(first_step, end_step, device=device)
        src, dst = steps % old.slots, steps % self.slots
        per_step = [("input", 0), ("flags", 0), ("mask", 1)]
        if self.mode != "checkpoints":
            per_step += [("cell", 1), ("hidden", 1)] + ([("gates", 1)] if self.mode == "activations" else [])
        for name, dim in per_step:
            new_t, old_t = getattr(self, name), getattr(old, name)
            if new_t.numel() and old_t.numel():
                new_t.index_copy_(dim, dst, old_t.index_select(dim, src))
        if self.mode == "checkpoints":  # the checkpoints of the kept steps
            first = -(-first_step // self.every)
            ks = torch.arange(first, end_step // self.every + 1, device=device)
            if ks.numel():
                src, dst = ks % old.cell.shape[1], ks % self.cell.shape[1]
                for name in ("cell", "hidden"):
                    getattr(self, name).index_copy_(1, dst, getattr(old, name).index_select(1, src))


class History:
    """What a stream keeps of its earlier steps so that backward can reach k2 steps back.

    h_init [layers, B, O], c_init [layers, B, H] (LSTMs) or [layers, B, 0] (GRU): the
    (detached) state at the stream's start (O = P for "lstmp", else H); cell: "lstm",
    "lstmp" (TruncatedLSTM with proj_size) or "gru".
    """

    def __init__(self, h_init, c_init, input_size, cell="lstm"):
        if cell not in CELLS:
            raise ValueError(f"History: cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.cell_kind = cell
        self.h_init = h_init.detach().clone()
        self.c_init = c_init.detach().to(accumulation_dtype(h_init.dtype)).clone()
        self.input_size = input_size
        self.ring = None
        self.end = 0    # steps of the stream so far
        self.floor = 0  # the earliest step a window may start at (older ones were dropped)

    @property
    def batch(self):
        return self.h_init.shape[1]

    def ring_for(self, chunk_len, capacity, with_mask, mode="activations", every=1):
        """The ring to record a chunk of `chunk_len` steps into, resized if the capacity (the
        longest window: k2, or ARTBP's cap), the mode or the checkpoint interval changed.

        capacity None keeps room for windows of the chunk itself.
        """
        needed = step_slots(chunk_len if capacity is None else capacity, mode, every)
        ring = self.ring
        same_layout = ring is not None and ring.mode == mode and ring.every == every
        if capacity is None and same_layout:
            needed = max(needed, ring.slots)
        if same_layout and ring.slots == needed and ring.with_mask == with_mask:
            return ring
        layers, batch, _ = self.h_init.shape
        hidden, proj = state_sizes(self.cell_kind, self.h_init, self.c_init)
        new = RingBuffers(needed, layers, batch, self.input_size, hidden, self.h_init.dtype,
                          self.h_init.device, with_mask, mode, every, self.cell_kind, proj)
        if ring is not None:
            if same_layout and ring.with_mask == with_mask:
                # Keep what fits; at least the newest step, whose state the next chunk enters from.
                kept = min(self.end, ring.slots, needed)
                first = self.end - kept
                new.copy_steps_from(ring, first, self.end)
                floor = new.earliest_window_start(first)
            else:
                floor = self.end  # what the old ring kept is not there in the new layout
            new.end = self.end
            self.floor = min(max(self.floor, floor), self.end)
        self.ring = new
        return new

    def window_start(self, chunk_end, chunk_start, window):
        """First step of the backward window of `window` steps (None: the chunk itself) of the
        chunk [chunk_start, chunk_end), no earlier than the stream's start or what the ring
        still holds."""
        if window is None:
            return chunk_start
        return max(chunk_end - window, self.floor)

    def to_dict(self):
        """Everything needed to continue the stream exactly, as plain tensors and ints: what
        torch.save of a returned state writes (LSTMState.__reduce__, GRUState.__reduce_ex__)."""
        return {"format": 1, "cell_kind": self.cell_kind, "h_init": self.h_init,
                "c_init": self.c_init, "input_size": self.input_size, "end": self.end, "floor": self.floor,
                "ring": self.ring.to_dict() if self.ring is not None else None}

    @classmethod
    def from_dict(cls, record, cell=None):
        """The history of to_dict(); cell (None: any) is the kind the caller expects."""
        expected = CELLS.get(cell, "TruncatedLSTM")
        if not isinstance(record, dict) or record.get("format") != 1:
            raise ValueError(f"{expected} state: not a saved stream history (format 1)")
        saved = _saved_cell(record, expected)
        who = CELLS[saved]
        if cell is not None and saved != cell:
            raise ValueError(f"{expected} state: the saved history is a {who}'s stream "
                             f"(cell {saved!r}), not a {expected}'s (cell {cell!r})")
        history = cls.__new__(cls)
        history.cell_kind = saved
        history.h_init, history.c_init = record["h_init"], record["c_init"]
        h_init, c_init = history.h_init, history.c_init
        if saved == "lstmp":  # h [layers, B, P], c [layers, B, H], 0 < P < H
            fits = (isinstance(h_init, torch.Tensor) and isinstance(c_init, torch.Tensor)
                    and h_init.dim() == 3 and c_init.dim() == 3
                    and c_init.shape[:2] == h_init.shape[:2]
                    and 0 < h_init.shape[2] < c_init.shape[2])
            shapes = "h [layers, B, P] and c [layers, B, H] tensors (0 < P < H)"
        else:
            fits = (isinstance(h_init, torch.Tensor) and isinstance(c_init, torch.Tensor)
                    and h_init.dim() == 3
                    and c_init.shape == (*h_init.shape[:2], cell_width(saved, h_init.shape[2])))
            shapes = f"h [layers, B, H] and c [layers, B, {'H' if saved == 'lstm' else '0'}] tensors"
        if not fits:
            raise ValueError(f"{who} state: the saved initial state must be {shapes}")
        history.input_size = _int(record, "input_size", who)
        history.end, history.floor = _int(record, "end", who), _int(record, "floor", who)
        ring = record["ring"]
        hidden, _ = state_sizes(saved, h_init, c_init)
        history.ring = None if ring is None else RingBuffers.from_dict(
            ring, history.h_init, history.input_size, saved, hidden)
        if history.ring is not None and history.ring.end != history.end:
            raise ValueError(f"{who} state: the saved ring and stream disagree on the step")
        return history

    @property
    def nbytes(self):
        ring_bytes = self.ring.nbytes if self.ring is not None else 0
        init = self.h_init.numel() * self.h_init.element_size()
        init += self.c_init.numel() * self.c_init.element_size()
        return ring_bytes + init


def _int(record, key, who="TruncatedLSTM"):
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{who} state: saved `{key}` must be an integer >= 0, got {value!r}")
    return value
