"""The history a stream carries: a ring of the last k2 + 1 steps' activations on the device.

Global steps of a stream are numbered from 0 at its start; step t lives in slot t % slots.
Per layer and step the ring keeps what backward needs (csrc/tbptt/window.h has the layout):
the activated gates (4H), the cell state c_t (H, float32 for half/bfloat16 storage), the hidden
output h_t (H); for layer 0 the input x_t (I); one byte of step flags per row (reset, hold:
csrc/tbptt/window.h); and, where dropout is on between layers, the mask on the input of each
layer above the first (H).
The extra slot (k2 + 1, not k2) keeps the state entering the oldest window.
"""
import torch


def accumulation_dtype(dtype):
    """The cell state's dtype for a storage dtype (float32 for half/bfloat16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class RingBuffers:
    """One allocation of the ring. A resize makes a new one; the old one is then never written
    again, so a pending backward that holds it stays valid."""

    def __init__(self, slots, num_layers, batch, input_size, hidden_size, dtype, device, with_mask):
        self.slots = slots
        acc = accumulation_dtype(dtype)
        make = dict(device=device)
        self.gates = torch.empty(num_layers, slots, batch, 4 * hidden_size, dtype=dtype, **make)
        self.cell = torch.empty(num_layers, slots, batch, hidden_size, dtype=acc, **make)
        self.hidden = torch.empty(num_layers, slots, batch, hidden_size, dtype=dtype, **make)
        self.input = torch.empty(slots, batch, input_size, dtype=dtype, **make)
        self.flags = torch.zeros(slots, batch, dtype=torch.uint8, **make)  # step flags
        mask_shape = (num_layers - 1, slots, batch, hidden_size) if with_mask else (0,)
        self.mask = torch.empty(mask_shape, dtype=dtype, **make)
        self.with_mask = with_mask
        self.end = 0  # steps [0, end) of the stream have been written

    def tensors(self):
        """In the order of the ops' ring arguments."""
        return (self.gates, self.cell, self.hidden, self.input, self.flags, self.mask)

    def holds(self, first_step, end_step):
        """Whether steps [first_step, end_step) are still in this ring, unoverwritten."""
        return self.end - self.slots <= first_step and end_step <= self.end

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors())

    _TENSORS = ("gates", "cell", "hidden", "input", "flags", "mask")

    def to_dict(self):
        """Everything this ring holds, as plain tensors and ints (for torch.save)."""
        record = {name: getattr(self, name) for name in self._TENSORS}
        record.update(slots=self.slots, end=self.end, with_mask=self.with_mask)
        return record

    @classmethod
    def from_dict(cls, record, h_init, input_size):
        """The ring of to_dict(), checked against the stream's (h_init [layers, B, H])."""
        ring = cls.__new__(cls)
        ring.slots, ring.end, ring.with_mask = (_int(record, "slots"), _int(record, "end"),
                                                bool(record["with_mask"]))
        layers, batch, hidden = h_init.shape
        S = ring.slots
        expected = {
            "gates": (layers, S, batch, 4 * hidden), "cell": (layers, S, batch, hidden),
            "hidden": (layers, S, batch, hidden), "input": (S, batch, input_size),
            "flags": (S, batch),
            "mask": (layers - 1, S, batch, hidden) if ring.with_mask else (0,),
        }
        for name in cls._TENSORS:
            tensor = record[name]
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected[name]:
                raise ValueError(f"TruncatedLSTM state: the saved ring's `{name}` should be a "
                                 f"tensor of shape {expected[name]}, got "
                                 f"{getattr(tensor, 'shape', type(tensor).__name__)}")
            setattr(ring, name, tensor.contiguous())
        return ring

    def copy_steps_from(self, old, first_step, end_step):
        """Copies steps [first_step, end_step) from another ring (a resize)."""
        if end_step <= first_step:
            return
        steps = torch.arange(first_step, end_step, device=self.gates.device)
        src, dst = steps % old.slots, steps % self.slots
        for new_t, old_t in zip(self.tensors(), old.tensors()):
            if new_t.numel() == 0 or old_t.numel() == 0:
                continue
            dim = 0 if new_t is self.input or new_t is self.flags else 1
            new_t.index_copy_(dim, dst, old_t.index_select(dim, src))


class History:
    """What a stream keeps of its earlier steps so that backward can reach k2 steps back.

    h_init, c_init [layers, B, H]: the (detached) state at the stream's start.
    """

    def __init__(self, h_init, c_init, input_size):
        self.h_init = h_init.detach().clone()
        self.c_init = c_init.detach().to(accumulation_dtype(h_init.dtype)).clone()
        self.input_size = input_size
        self.ring = None
        self.end = 0    # steps of the stream so far
        self.floor = 0  # the earliest step a window may start at (older ones were dropped)

    @property
    def batch(self):
        return self.h_init.shape[1]

    def ring_for(self, chunk_len, capacity, with_mask):
        """The ring to record a chunk of `chunk_len` steps into, resized if the capacity (the
        longest window: k2, or ARTBP's cap) changed.

        capacity None keeps chunk_len + 1 slots (the window is the chunk itself).
        """
        if capacity is None:
            slots = max(chunk_len + 1, self.ring.slots if self.ring is not None else 0)
        else:
            slots = capacity + 1
        ring = self.ring
        if ring is not None and ring.slots == slots and ring.with_mask == with_mask:
            return ring
        layers, batch, hidden = self.h_init.shape
        new = RingBuffers(slots, layers, batch, self.input_size, hidden, self.h_init.dtype,
                          self.h_init.device, with_mask)
        if ring is not None:
            # Keep what fits; at least the newest step, whose state the next chunk enters from.
            kept = min(self.end, ring.slots, slots)
            first = self.end - kept
            new.copy_steps_from(ring, first, self.end)
            new.end = self.end
            # A window may start at `first` only if the state entering it is there too.
            floor = 0 if first == 0 else first + 1
            if ring.with_mask != with_mask:
                floor = self.end  # dropout switched on or off: older layer inputs are not kept
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

    def state_before(self, ring, step):
        """(h, c) [layers, B, H] entering global step `step`, as stored (no reset applied)."""
        if step == 0:
            return self.h_init, self.c_init
        slot = (step - 1) % ring.slots
        return ring.hidden[:, slot], ring.cell[:, slot]

    def to_dict(self):
        """Everything needed to continue the stream exactly, as plain tensors and ints: what
        torch.save of a returned state writes (LSTMState.__reduce__)."""
        return {"format": 1, "h_init": self.h_init, "c_init": self.c_init,
                "input_size": self.input_size, "end": self.end, "floor": self.floor,
                "ring": self.ring.to_dict() if self.ring is not None else None}

    @classmethod
    def from_dict(cls, record):
        if not isinstance(record, dict) or record.get("format") != 1:
            raise ValueError("TruncatedLSTM state: not a saved stream history (format 1)")
        history = cls.__new__(cls)
        history.h_init, history.c_init = record["h_init"], record["c_init"]
        if not (isinstance(history.h_init, torch.Tensor) and isinstance(history.c_init, torch.Tensor)
                and history.h_init.dim() == 3 and history.c_init.shape == history.h_init.shape):
            raise ValueError("TruncatedLSTM state: the saved initial state must be two "
                             "[layers, B, H] tensors")
        history.input_size = _int(record, "input_size")
        history.end, history.floor = _int(record, "end"), _int(record, "floor")
        ring = record["ring"]
        history.ring = None if ring is None else RingBuffers.from_dict(ring, history.h_init,
                                                                       history.input_size)
        if history.ring is not None and history.ring.end != history.end:
            raise ValueError("TruncatedLSTM state: the saved ring and stream disagree on the step")
        return history

    @property
    def nbytes(self):
        ring_bytes = self.ring.nbytes if self.ring is not None else 0
        init = self.h_init.numel() * self.h_init.element_size()
        init += self.c_init.numel() * self.c_init.element_size()
        return ring_bytes + init


def _int(record, key):
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"TruncatedLSTM state: saved `{key}` must be an integer >= 0, got {value!r}")
    return value
