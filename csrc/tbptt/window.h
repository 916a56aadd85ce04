// The history ring and the parameters of one pointwise step, shared by the CPU loop and the
// CUDA kernels. Framework-free.
//
// Shape glossary (used in every pointer comment below):
//   L  steps in the current chunk          B  batch rows (one stream per row)
//   I  input size of a layer               H  hidden size          G = 4H gate units
//   S  ring slots = k2 + 1 (the extra slot keeps the state entering the window)
//   T  storage type (float, double, half, bfloat16); acc  accumulation type (float/double),
//      also the type of the cell state.
// All buffers are dense row-major; a [B, G] row b starts at b * G.
//
// Ring layout (one tensor per kind, allocated by the Python History object):
//   gates  [layers, S, B, G]  T    activated gates i, f, g, o of each step
//   cell   [layers, S, B, H]  acc  c_t
//   hidden [layers, S, B, H]  T    h_t (the layer's output, before any dropout)
//   input  [S, B, I]          T    layer-0 input x_t
//   flags  [S, B]             u8   step flags of the row (kFlagReset, kFlagHold below)
//   mask   [layers-1, S, B, H] T   dropout mask (0 or 1/(1-p)) on the input of layer l >= 1
// Global step t of a stream lives in slot t mod S.
#pragma once

#include <cstdint>

#include "numeric.h"  // TBPTT_HD

namespace tbptt {

// Step flags, one byte per row and step (chunk flags [L, B], ring flags [S, B]):
// kFlagReset: the row's state (every layer) is replaced by zeros before this step: a select,
//   so NaN or Inf in the old state cannot survive it; no gradient crosses it.
// kFlagHold: the row holds still at this step (h_t = h_{t-1}, c_t = c_{t-1}, output 0): the
//   steps past a sequence's length in a packed chunk. Gradient passes through it unchanged and
//   reaches no parameter.
// kFlagCut (set by the backward driver in its copy of the window's flags, never in the ring):
//   no gradient reaches this row at this step, which lies before the chunk and before a reset
//   at or before the chunk's first step. The step is left out of every gradient exactly, so
//   that its activations, NaN or Inf from a bad record included, cannot leak in as 0 * NaN.
constexpr uint8_t kFlagReset = 1;
constexpr uint8_t kFlagHold = 2;
constexpr uint8_t kFlagCut = 4;

}  // namespace tbptt

namespace tbptt {

// Slot of global step `step` (may be negative when counting back; result in [0, slots)).
TBPTT_HD int64_t ring_slot(int64_t step, int64_t slots) {
  const int64_t r = step % slots;
  return r < 0 ? r + slots : r;
}

// A run of consecutive slots.
struct SlotRange {
  int64_t first_slot;
  int64_t length;
};

// Splits `length` consecutive steps starting at slot `first_slot` into at most two runs of
// consecutive slots (two where the window wraps past the ring's end). Returns the count.
inline int split_at_wrap(int64_t first_slot, int64_t length, int64_t slots, SlotRange out[2]) {
  const int64_t until_end = slots - first_slot;
  if (length <= until_end) {
    out[0] = SlotRange{first_slot, length};
    return 1;
  }
  out[0] = SlotRange{first_slot, until_end};
  out[1] = SlotRange{0, length - until_end};
  return 2;
}

// Every pointer below is valid (no nullptr): the driver passes zeros or scratch buffers where
// a step has nothing to read or keep, so that the element loops have no branches and the
// CPU loop vectorises.

// One forward step of one layer over all B rows: everything the pointwise pass reads and writes.
struct ForwardStepParams {
  int64_t batch;               // B
  int64_t hidden;              // H
  const void* gates_x;         // [B, G] T    x_t @ W_ih^T + b_ih + b_hh
  const void* gates_h;         // [B, G] T    h_{t-1} @ W_hh^T
  void* cell;                  // [B, H] acc  in: c entering step t (reset applied)
                               //             out: c entering step t+1 (its reset applied)
  void* hidden_next;           // [B, H] T    in: h entering step t (reset applied; the GEMM's
                               //             operand); out: h entering step t+1 (its reset applied)
  void* out;                   // [B, H] T    out: h_t (0 where the row holds)
  void* ring_gates;            // [B, G] T    out: activated gates, 0 where the row holds
                               //             (scratch when not recording)
  void* ring_cell;             // [B, H] acc  out: c_t (scratch when not recording)
  void* ring_hidden;           // [B, H] T    out: h_t (scratch when not recording)
  const uint8_t* flags;        // [B]         flags of step t (kFlagHold)
  const uint8_t* flags_next;   // [B]         flags of step t+1 (kFlagReset; zeros for none)
};

// One backward step of one layer over all B rows.
struct BackwardStepParams {
  int64_t batch;                 // B
  int64_t hidden;                // H
  const void* gates;             // [B, G] T    activated gates of step t (ring), or, where
                                 //             gates_are_pre_activations, [B, G] acc: the
                                 //             pre-activations (history "states" rebuilds them)
  bool gates_are_pre_activations;
  const void* cell;              // [B, H] acc  c_t (ring)
  const void* cell_prev;         // [B, H] acc  c_{t-1} as stored (no reset applied)
  const void* hidden_prev;       // [B, H] T    h_{t-1} as stored (no reset applied)
  const uint8_t* flags;          // [B]  flags of step t (kFlagReset: the state it saw was zero;
                                 //      kFlagHold; kFlagCut)
  const uint8_t* flags_after;    // [B]  flags of step t+1 (zeros at the window's end): where
                                 //      kFlagReset, the gradients arriving from step t+1 are dropped
  double carry_scale;            // factor on the gradients arriving from step t+1 (ARTBP's
                                 // S(j-1)/S(j) at distance j from the chunk's end; 1 otherwise)
  const void* grad_out;          // [B, H] T    dL/dh_t from the output or the layer above (zeros
                                 //             for window steps before the chunk)
  const void* grad_hidden_next;  // [B, H] T    dL/dh_t through step t+1 (dG_{t+1} @ W_hh); at
                                 //             the window's last step, dL/dh_n
  void* grad_hidden_held;        // [B, H] acc  in: dL/dh_t carried through step t+1 where that
                                 //             step held the row; out: the same for step t-1
  void* grad_cell;               // [B, H] acc  in: dL/dc_t from step t+1; out: dL/dc_{t-1}
  void* grad_gates;              // [B, G] T    out: dL/d(pre-activations), 0 where the row holds
  void* hidden_prev_seen;        // [B, H] T    out: h_{t-1} as the step saw it (reset applied),
                                 //             the right operand of the dW_hh GEMM
};

}  // namespace tbptt

namespace tbptt {

// Storage type of a pointwise launch, decided by the glue; kernels switch on it.
enum class StorageType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace tbptt
