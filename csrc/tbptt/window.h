// The history ring and the parameters of one pointwise step, shared by the CPU loop and the
// CUDA kernels. Framework-free.
//
// Shape glossary (used in every pointer comment below):
//   L  steps in the current chunk          B  batch rows (one stream per row)
//   I  input size of a layer               H  hidden size
//   G  gate units of a product: kGates * H (4H for the LSTM, 3H for the GRU; csrc/tbptt/cells.h)
//   R  values a step records per row: 4H for every cell (LSTM i, f, g, o; GRU r, z, n, hn)
//   S  ring slots = k2 + 1 (the extra slot keeps the state entering the window)
//   T  storage type (float, double, half, bfloat16); acc  accumulation type (float/double),
//      also the type of the cell state a step carries to the next (the ring's record of it,
//      like every record, is T: a 16-bit ring is half a float32 one).
// All buffers are dense row-major; a [B, G] row b starts at b * G. The GRU has no cell state:
// its cell tensors are zero-width ([.., B, 0]) and never touched.
//
// Ring layout (one tensor per kind, allocated by the Python History object):
//   gates  [layers, S, B, R]  T    what each step records of its gates (cells.h)
//   cell   [layers, S, B, H]  T    c_t (rounded to T; the carried state stays acc)
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

// The recurrent cell of a layer (csrc/tbptt/cells.h has each cell's traits and elements); the
// ops take it as an int (tbptt_cuda: 0 "lstm", 1 "lstmp", 2 "gru"). kProjection is internal:
// the lstmp's passes over [B, P] (a step's params say which pass a launch runs).
enum class CellKind : int { kLstm = 0, kLstmp = 1, kGru = 2, kProjection = 3 };

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
  CellKind cell_kind = CellKind::kLstm;  // which cell's element the launch runs
  int64_t batch;               // B
  int64_t hidden;              // H
  const void* gates_x;         // [B, G] T    x_t @ W_ih^T + b_ih + b_hh (GRU: b_ih + (b_hr, b_hz, 0))
  const void* gates_h;         // [B, G] T    h_{t-1} @ W_hh^T
  const void* bias_hn;         // [H] acc     GRU: b_hn, inside r * (W_hn h + b_hn) (zeros without
                               //             bias); unused by the LSTM
  void* cell;                  // [B, H] acc  in: c entering step t (reset applied)
                               //             out: c entering step t+1 (its reset applied)
  const void* hidden_prev;     // [B, H] T    h entering step t (reset applied; the product's
                               //             operand)
  void* hidden_next;           // [B, H] T    out: h entering step t+1 (its reset applied); may be
                               //             hidden_prev (the stepwise path updates it in place)
  void* out;                   // [B, H] T    out: h_t (0 where the row holds)
  void* ring_gates;            // [B, R] T    out: the step's record (cells.h), 0 where the row holds
                               //             (scratch when not recording)
  void* ring_cell;             // [B, H] T    out: c_t (scratch when not recording)
  void* ring_hidden;           // [B, H] T    out: h_t (scratch when not recording)
  const uint8_t* flags;        // [B]         flags of step t (kFlagHold)
  const uint8_t* flags_next;   // [B]         flags of step t+1 (kFlagReset; zeros for none)
};

// Where the forward of one layer records the steps of a chunk: the rule the driver and the
// persistent kernel share. The history modes (csrc/lstm_driver.h): gates, c, h of every step;
// c, h of every step; or c, h only for the state entering every checkpoint_every-th step.
struct ForwardRecord {
  void* gates;                // [S, B, R] T: this layer's gates ring, or nullptr (not kept)
  void* cell;                 // [S or C, B, H] T, or nullptr (not recording, or no cell state)
  void* hidden;               // [S or C, B, O] T
  int64_t hidden_units;       // O: units of the h record (H; P for lstmp)
  int64_t first_step;         // global step of the chunk's first step (step s: first_step + s)
  int64_t slots;              // S: per-step slots (global step t in slot t mod S)
  int64_t checkpoint_every;   // 0: c, h of every step; k > 0: the state entering step m * k
                              // (that is, after step m * k - 1) in slot m mod checkpoint_slots
  int64_t checkpoint_slots;   // C
};

// Points p.ring_gates / ring_cell / ring_hidden at where step s of the chunk is recorded, or at
// scratch ([B, R], [B, H], [B, H] of the same type) where it is not. storage_bytes: sizeof(T).
// Whether step s records its state is r.hidden's to say (the GRU has no cell ring).
TBPTT_HD void set_record_targets(ForwardStepParams& p, const ForwardRecord& r, int64_t s,
                                 int64_t storage_bytes, void* scratch_gates,
                                 void* scratch_cell, void* scratch_hidden) {
  const int64_t step = r.first_step + s;
  const int64_t gates_bytes = p.batch * 4 * p.hidden * storage_bytes;
  const int64_t cell_bytes = p.batch * p.hidden * storage_bytes;
  const int64_t hidden_bytes = p.batch * r.hidden_units * storage_bytes;
  const int64_t slot = ring_slot(step, r.slots);
  p.ring_gates = r.gates ? static_cast<char*>(r.gates) + slot * gates_bytes : scratch_gates;
  int64_t state_slot = -1;
  if (r.hidden != nullptr) {
    if (r.checkpoint_every == 0) {
      state_slot = slot;
    } else if ((step + 1) % r.checkpoint_every == 0) {
      state_slot = ring_slot((step + 1) / r.checkpoint_every, r.checkpoint_slots);
    }
  }
  p.ring_cell = state_slot >= 0 && r.cell != nullptr
                    ? static_cast<char*>(r.cell) + state_slot * cell_bytes
                    : scratch_cell;
  p.ring_hidden =
      state_slot >= 0 ? static_cast<char*>(r.hidden) + state_slot * hidden_bytes : scratch_hidden;
}

// One backward step of one layer over all B rows.
struct BackwardStepParams {
  CellKind cell_kind = CellKind::kLstm;  // which cell's element the launch runs
  int64_t batch;                 // B
  int64_t hidden;                // H
  const void* gates;             // [B, R] T    the record of step t (ring), or, where
                                 //             gates_are_pre_activations, [B, R] acc: the
                                 //             pre-activations (history "states" rebuilds them)
  bool gates_are_pre_activations;
  const void* cell;              // [B, H] T    c_t (ring; nullptr for the GRU)
  const void* cell_prev;         // [B, H] T    c_{t-1} as stored (no reset applied)
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
  void* grad_hidden_held;        // [B, H] acc  in: dL/dh_t carried past W_hh by step t+1 (where
                                 //             it held the row; GRU: also dh * z); out: the
                                 //             same for step t-1
  void* grad_cell;               // [B, H] acc  in: dL/dc_t from step t+1; out: dL/dc_{t-1} (LSTM)
  void* grad_gates;              // [B, R] T    out: dL/d(pre-activations), 0 where the row holds
                                 //             (GRU: dA_r, dA_z, dA_hn, dA_n; cells.h)
  void* hidden_prev_seen;        // [B, H] T    out: h_{t-1} as the step saw it (reset applied),
                                 //             the right operand of the dW_hh GEMM
};

// Where a backward step of one layer reads its activations: a ring of activations layout (the
// history, or a checkpoint segment's recompute), its gates stored or rebuilt. The rule the
// driver's span and the persistent kernel share.
struct BackwardSource {
  const void* gates;          // [S, B, R] T gates ring of this layer, or, where
                              // gates_are_pre_activations, [W, B, R] acc indexed by window step
  bool gates_are_pre_activations;
  const void* cell;           // [S, B, H] T cell ring of this layer (nullptr: no cell state)
  const void* hidden;         // [S, B, O] T hidden ring of this layer
  int64_t hidden_units;       // O: units of the h record (H; P for lstmp)
  int64_t first_slot;         // slot of window step 0
  int64_t slots;              // S
  const void* h_before;       // [B, O] T the state entering window step 0, as stored
  const void* c_before;       // [B, H] T
};

// Points p.gates, cell, cell_prev, hidden_prev at window step j's (p.hidden = H: gates and c
// are H-sized rows; h rows are src.hidden_units). Element sizes in bytes (acc_bytes: the rebuilt
// pre-activations' only).
TBPTT_HD void set_backward_sources(BackwardStepParams& p, const BackwardSource& src, int64_t j,
                                   int64_t storage_bytes, int64_t acc_bytes) {
  const int64_t BH = p.batch * p.hidden;
  const int64_t slot = ring_slot(src.first_slot + j, src.slots);
  const int64_t prev = ring_slot(src.first_slot + j - 1, src.slots);
  p.gates_are_pre_activations = src.gates_are_pre_activations;
  p.gates = src.gates_are_pre_activations
                ? static_cast<const char*>(src.gates) + j * 4 * BH * acc_bytes
                : static_cast<const char*>(src.gates) + slot * 4 * BH * storage_bytes;
  if (src.cell != nullptr) {
    p.cell = static_cast<const char*>(src.cell) + slot * BH * storage_bytes;
    p.cell_prev = j > 0 ? static_cast<const char*>(src.cell) + prev * BH * storage_bytes : src.c_before;
  } else {
    p.cell = p.cell_prev = nullptr;
  }
  p.hidden_prev = j > 0 ? static_cast<const char*>(src.hidden) + prev * p.batch * src.hidden_units * storage_bytes
                        : src.h_before;
}

}  // namespace tbptt

namespace tbptt {

// Storage type of a pointwise launch, decided by the glue; kernels switch on it.
enum class StorageType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace tbptt
