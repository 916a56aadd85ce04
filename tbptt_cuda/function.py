"""The one autograd Function: forward over a chunk, backward over its TBPTT window.

The chunk covers global steps [a, b) of a stream; its backward window is [w, b) with
w = max(b - k2, floor) (w = a when k2 is None), read from the history ring. See DESIGN.md
section 2 and tbptt_cuda/reference.py for the definition this computes.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import _backend
from .history import CELLS, History, RingBuffers

# The ops, loaded (or built just in time) once at import: nothing below loads anything, so
# torch.compile can trace through the Function.
_OPS = _backend.ops()

# The ops' `cell` argument (csrc/ops.cpp): which recurrent cell the chunk runs.
CELL_CODES = {"lstm": 0, "lstmp": 1, "gru": 2}


@dataclass
class ChunkPlan:
    """Everything about one chunk that is not a differentiable tensor."""

    history: Optional[History]       # None: nothing recorded (no gradient possible)
    ring: Optional[RingBuffers]
    chunk_start: int                 # a
    chunk_end: int                   # b
    window_start: int                # w
    flags: Optional[torch.Tensor]    # [L, B] uint8 step flags (reset, hold), or None
    dropout_masks: Optional[torch.Tensor]  # [layers-1, L, B, O] (O: the size of h)
    has_bias: bool
    empty: torch.Tensor              # a 0-element tensor on the device, for unused ring args
    carry_scales: Optional[list] = None  # ARTBP: per window step, oldest first (None: all 1)
    cell: str = "lstm"               # "lstm", "lstmp" or "gru" (CELL_CODES)


class TruncatedRNNFunction(torch.autograd.Function):
    """apply(plan, x [L,B,I], h0 [layers,B,O], c0, *weights) -> y [L,B,O], h_n [layers,B,O],
    c_n, for the cell plan.cell: c0 and c_n [layers,B,H] for the LSTMs; for the GRU, which has
    no cell state, zero-width [layers,B,0] (c0 of the accumulation dtype). O, the size of h:
    proj_size P for "lstmp", else H. Weights per layer in torch.nn's order: w_ih, w_hh
    (, b_ih, b_hh) (, w_hr [P, H] for "lstmp")."""

    @staticmethod
    def forward(ctx, plan, x, h0, c0, *weights):
        record = plan.ring is not None
        if record:
            ring_args = plan.ring.tensors()
            layout = (plan.ring.mode_code, plan.ring.every)
        else:
            ring_args = tuple(plan.empty.clone() for _ in range(6))
            layout = (0, 1)
        y, h_n, c_n = _OPS.chunk_forward(
            x, h0, c0, plan.flags, list(weights), plan.has_bias, plan.dropout_masks,
            *ring_args, plan.chunk_start, record, *layout, CELL_CODES[plan.cell])
        if record:
            plan.ring.end = plan.chunk_end
            plan.history.end = plan.chunk_end
        ctx.plan = plan
        ctx.save_for_backward(*weights)
        ctx.c0_dtype = c0.dtype
        return y, h_n, c_n.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_h_n, grad_c_n):
        plan = ctx.plan
        if plan.ring is None:
            raise RuntimeError(
                f"{CELLS[plan.cell]}: this chunk was run without recording history (under "
                "no_grad), so it has no backward.")
        weights = ctx.saved_tensors
        ring, history = plan.ring, plan.history
        w, b = plan.window_start, plan.chunk_end
        first_needed = ring.first_needed(w)
        if not ring.holds(first_needed, b):
            raise RuntimeError(
                f"{CELLS[plan.cell]}: the history this backward needs (steps "
                f"{first_needed}..{b - 1} of the stream) was overwritten by a later forward (the ring now holds steps "
                f"{max(ring.end - ring.slots, 0)}..{ring.end - 1}). Call backward() on each "
                "chunk's loss before running the next chunk's forward, or make k2 larger than "
                "the steps that pass between a forward and its backward.")
        grad_x, grad_h0, grad_c0, grad_weights = _OPS.window_backward(
            grad_y, grad_h_n, grad_c_n, list(weights), plan.has_bias, *ring.tensors(),
            history.h_init, history.c_init, b - w, b - 1, plan.carry_scales, ring.mode_code,
            ring.every, ctx.needs_input_grad[1], CELL_CODES[plan.cell])
        needs = ctx.needs_input_grad
        return (
            None,
            grad_x if needs[1] else None,
            grad_h0 if needs[2] else None,
            grad_c0.to(ctx.c0_dtype) if needs[3] else None,
            *grad_weights,
        )


TruncatedLSTMFunction = TruncatedRNNFunction  # the name before the GRU (one Function for all)
