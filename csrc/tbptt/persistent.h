// Parameters of the persistent kernels (csrc/cuda/persistent_kernels.cuh): one cooperative
// launch per layer for a chunk's forward, and one for a span's backward (a window, or one
// checkpoint segment of it). Framework-free. Shapes as in window.h (L steps, B rows, H units,
// G = kGates H: 4H for the LSTM, 3H for the GRU; R = 4H the record width, cells.h; W window
// steps, T storage, acc accumulation). One body for the LSTM and the GRU (the cell is a
// template parameter of the kernels; `gates` below is its kGates).
//
// The grid splits a layer's H hidden units: block p owns units [p * u, min((p + 1) * u, H)).
// Forward, it keeps the kGates u rows of W_hh that feed them in shared memory (row kGates jj + g
// holds nn.LSTM's / nn.GRU's row g * H + unit0 + jj: the gates of a unit side by side), stages
// h_{t-1} from global memory a batch tile at a time, computes its gates' share of
// h_{t-1} W_hh^T and runs the cell's forward element (cells.h) on its units. Backward, it keeps
// the u columns of W_hh of its units (transposed in shared memory: [u, G]), runs the backward
// element on them, and after the grid barrier computes their share of dL/dh_{t-1} = dG_t W_hh
// from dG_t (the GRU: dGh, the first 3H of each record-wide row) staged in [batch tile, k_chunk]
// pieces. One grid barrier per step; only h (forward) and dG (backward) cross blocks, the cell
// state and the carried gradients (the LSTM's dL/dc and held rows' dL/dh, the GRU's dh z) stay
// with the block that owns the unit.
#pragma once

#include <string>

#include "window.h"

namespace tbptt {

// How one kernel splits the work; the plan (csrc/cuda/persistent_launch.h) fills it, the
// kernel reads it. Shared-memory rows are padded (padded_row) against bank conflicts.
//
// FFMA (float32, float64): a thread accumulates the outputs of up to kRowsPerThread batch
// rows of one unit (forward: its four gates; backward: dL/dh), over one of k_split equal
// slices of the reduction, in registers; the slices are then summed in a fixed order through
// shared memory.
// Tensor cores (float16, bfloat16; tensor_cores): a warp accumulates one m16n8 tile of mma
// m16n8k16 products in fp32 over one of k_split slices of the 16-wide k steps, summed the same
// way; with k_split 1 a warp takes tiles in turn. Forward the tile is 16 gate rows (the W_hh
// slice, A) by 8 batch rows (h_{t-1}, B); backward 16 batch rows (dG_t, A) by 8 units (W_hh
// columns, B). Operands are zero-padded in shared memory to whole tiles.
constexpr int64_t kRowsPerThread = 4;
constexpr int64_t kMaxWarpTiles = 4;  // backward, k_split 1: accumulator tiles per warp

struct PersistentPartition {
  int64_t blocks = 0;        // P = ceil(H / units): the grid
  int64_t units = 0;         // u: hidden units per block
  int64_t threads = 0;       // per block, a multiple of 32
  int64_t batch_tile = 0;    // rows of h_{t-1} (forward) or dG_t (backward) staged at once
  int64_t k_split = 1;       // slices of the reduction (H forward, each k_chunk backward)
  int64_t k_chunk = 0;       // backward: columns of dG_t staged at once (of G); forward: H
  int64_t shared_bytes = 0;  // dynamic shared memory per block
  bool tensor_cores = false; // 16-bit storage: mma products
};

// FFMA: threads of one k slice, one per (group of kRowsPerThread batch rows, unit).
TBPTT_HD int64_t thread_items(int64_t batch_tile, int64_t units) {
  return (batch_tile + kRowsPerThread - 1) / kRowsPerThread * units;
}

TBPTT_HD int64_t round_up_to(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Tensor cores: the m16n8 output tiles of a product over a batch tile of `rows` rows, for a
// cell of `gates` gate blocks.
TBPTT_HD int64_t mma_tiles(int64_t rows, int64_t units, int64_t gates, bool backward) {
  return backward ? round_up_to(rows, 16) / 16 * (round_up_to(units, 8) / 8)
                  : round_up_to(gates * units, 16) / 16 * (round_up_to(rows, 8) / 8);
}

// Elements per shared-memory row holding n values of `elem_bytes` bytes: n, padded so that a
// row spans an odd number of 4-byte banks (8-byte elements: an odd count), so that the threads
// of a warp reading the same column of different rows hit different banks.
TBPTT_HD int64_t padded_row(int64_t n, int64_t elem_bytes) {
  if (elem_bytes >= 4) return n | 1;
  const int64_t even = (n + 1) / 2 * 2;  // 16-bit: an even count of elements, 2 per bank
  return even % 4 == 0 ? even + 2 : even;
}

TBPTT_HD int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Byte offsets of a persistent kernel's shared arrays for one product (the one rule the plan
// and the kernels share), from byte `base` on; `k`: the product's reduction length (forward:
// h's width, H, or P with a projection; backward: W_hh's G = gates H rows, or P for the
// projection's dh_eff W_hr), `gates`: the gate blocks of its output rows (the cell's kGates;
// 1 for the projection). Forward: weights [gates u, padded_row(k)] T, the h tile
// [batch_tile, padded_row(k)] T, the partial sums [k_split - 1, thread_items,
// kRowsPerThread * gates] acc. Backward: weights [u, padded_row(k)] T, the dG tile
// [batch_tile, padded_row(k_chunk)] T, the partial sums [k_split - 1, thread_items,
// kRowsPerThread] acc. Tensor cores: rows and k padded to whole tiles (forward weights
// [round16(gates u), .. round16(k)], h tile [round8(batch_tile), ..];
// backward weights [round8(u), .. round16(k)], dG tile [round16(batch_tile), ..]) and partial
// sums [k_split - 1, tiles, 32 lanes, 4] float. The LSTM with projections' kernels hold two
// products' arrays, the second from the first's `bytes` on.
struct PersistentSharedLayout {
  int64_t weight_offset, weight_rows, weight_stride;
  int64_t tile_rows, tile_offset, tile_stride;
  int64_t partial_offset, partial_count;
  int64_t bytes;
};

TBPTT_HD PersistentSharedLayout shared_layout(const PersistentPartition& part, int64_t k,
                                              int64_t gates, bool backward, int64_t elem_bytes,
                                              int64_t acc_bytes, int64_t base = 0) {
  PersistentSharedLayout s;
  const bool tc = part.tensor_cores;
  if (backward) {
    s.weight_rows = tc ? round_up_to(part.units, 8) : part.units;
    s.tile_rows = tc ? round_up_to(part.batch_tile, 16) : part.batch_tile;
  } else {
    s.weight_rows = tc ? round_up_to(gates * part.units, 16) : gates * part.units;
    s.tile_rows = tc ? round_up_to(part.batch_tile, 8) : part.batch_tile;
  }
  s.weight_offset = align16(base);
  s.weight_stride = padded_row(tc ? round_up_to(k, 16) : k, elem_bytes);
  s.tile_offset = s.weight_offset + align16(s.weight_rows * s.weight_stride * elem_bytes);
  s.tile_stride = backward ? padded_row(part.k_chunk, elem_bytes) : s.weight_stride;
  s.partial_offset = s.tile_offset + align16(s.tile_rows * s.tile_stride * elem_bytes);
  s.partial_count = tc ? (part.k_split - 1) * mma_tiles(part.batch_tile, part.units, gates, backward) * 32 * 4
                       : (part.k_split - 1) * thread_items(part.batch_tile, part.units) *
                             kRowsPerThread * (backward ? 1 : gates);
  s.bytes = s.partial_offset + align16(s.partial_count * (tc ? 4 : acc_bytes));
  return s;
}

// What the plan decided for one (device, cell, storage type, H, B). Forward: the recurrent
// product h_{t-1} W_hh^T over the block's H units; backward: dG_t W_hh over the block's units
// of h (H units; the projection's P columns). The LSTM with projections adds a second product
// each way (forward_projection: m W_hr^T over the block's P columns; backward_projection:
// dh_eff W_hr over its H units); a kernel launches with the larger thread count of its two
// partitions and the shared bytes of both (each partition's shared_bytes holds that total).
struct PersistentPlan {
  bool usable = false;        // both kernels fit; else `reason` says why not
  std::string reason;
  int64_t sms = 0;            // SMs the device reported when planned
  int64_t capability = 0;     // its compute capability, major * 10 + minor (90: H100)
  PersistentPartition forward, backward;
  PersistentPartition forward_projection, backward_projection;  // lstmp only (blocks 0 else)
};

// One layer's forward over a chunk of L steps.
struct PersistentForwardParams {
  CellKind cell_kind = CellKind::kLstm;  // kLstm or kGru: which kernels the launcher runs
  int64_t steps;               // L
  int64_t batch;               // B
  int64_t hidden;              // H
  PersistentPartition part;
  PersistentPartition part_projection;  // lstmp: m W_hr^T's partition (PersistentPlan)
  const void* gates_x;         // [L, B, G] T   x_t W_ih^T + b_ih + b_hh (GRU: ForwardStepParams')
  const void* w_hh;            // [G, H] T      nn.LSTM's / nn.GRU's layout
  const void* bias_hn;         // [H] acc       GRU: b_hn (ForwardStepParams); unused by the LSTM
  void* hidden_exchange;       // [2, B, H] T   h entering step s in slot s & 1; slot 0 holds h
                               //               entering the chunk (its first reset applied); on
                               //               return slot L & 1 holds h_n (as the stepwise path)
  void* cell;                  // [B, H] acc    in: c entering the chunk (reset applied); out: c
                               //               after its last step (each block its own units);
                               //               the GRU has none (not read)
  void* gates_h;               // [B, G] T      scratch: the step's h_{t-1} W_hh^T, each block its
                               //               own gate columns
  void* out;                   // [L, B, H] T   h_t (0 where the row holds)
  const uint8_t* flags;        // [L, B] u8     step flags, or nullptr: none
  const uint8_t* no_flags;     // [B] u8 zeros
  ForwardRecord record;        // where this layer's steps are recorded
  void* scratch_gates;         // [B, R] T      where a step's gates go when not recorded
  void* scratch_cell;          // [B, H] T
  void* scratch_hidden;        // [B, O] T
  // The LSTM with projections (lstmp_math.h): h is P wide, so hidden_exchange is [2, B, P],
  // out [L, B, P] and the h record P wide.
  int64_t projection = 0;      // P; 0: no projection (h is H wide)
  const void* w_hr = nullptr;  // [P, H] T      nn.LSTM's weight_hr
  void* hidden_m = nullptr;    // [B, H] T      scratch: m_t = o tanh(c_t)
  void* projected = nullptr;   // [B, P] T      scratch: m_t W_hr^T
};

// One layer's backward over a span of W steps, newest first.
struct PersistentBackwardParams {
  CellKind cell_kind = CellKind::kLstm;  // kLstm or kGru
  int64_t steps;               // W
  int64_t batch;               // B
  int64_t hidden;              // H
  PersistentPartition part;
  PersistentPartition part_projection;  // lstmp: dh_eff W_hr's partition (PersistentPlan)
  const void* w_hh;            // [G, O] T
  BackwardSource source;       // the span's activations (window.h)
  const uint8_t* flags;        // [W, B] u8     the span's step flags (with kFlagCut)
  const uint8_t* no_flags;     // [B] u8 zeros
  const double* carry_scales;  // [W] or nullptr (all 1): ARTBP's factors, oldest step first
  const void* grad_out;        // [W - grad_out_first, B, H] T  dL/dh_t of steps j >= grad_out_first
  int64_t grad_out_first;      // window step of grad_out's first row (W: none)
  const void* no_grad_out;     // [B, H] T zeros
  const void* grad_h_n;        // [B, H] T      dL/dh after the span's last step
  void* grad_hidden;           // [B, H] T      scratch, dL/dh_t through step t+1 (each block its
                               //               own units); out: after step 0, dG_0 W_hh
  void* grad_held;             // [B, H] acc    in: zeros; out: the gradient carried past W_hh
                               //               (held rows; the GRU's dh z)
  void* grad_cell;             // [B, H] acc    in: dL/dc after the last step; out: entering
                               //               (the GRU has none)
  void* grad_gates;            // [W, B, R] T   out: dL/d(pre-activations) (cells.h's layout; the
                               //               GRU's dGh is the first G = 3H of a row)
  void* hidden_prev_seen;      // [W, B, O] T   out: h_{t-1} as each step saw it
  // The LSTM with projections: grad_out, grad_h_n, grad_hidden, grad_held and
  // hidden_prev_seen are P wide (O = P).
  int64_t projection = 0;      // P; 0: none
  const void* w_hr = nullptr;  // [P, H] T
  void* grad_projected = nullptr;  // [W, B, P] T  out: dh_eff of each step (lstmp_math.h)
  void* grad_m = nullptr;      // [B, H] T      scratch: dm = dh_eff W_hr
  const void* zeros_h = nullptr;  // [B, H] T   zeros: the LSTM element's h inputs
  void* scratch_h = nullptr;   // [B, H] T      the LSTM element's h_{t-1} output (unread)
  void* held_h = nullptr;      // [B, H] acc    zeros: nothing is carried in h over [B, H]
};

}  // namespace tbptt
