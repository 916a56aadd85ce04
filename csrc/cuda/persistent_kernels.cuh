// Persistent kernels: one cooperative launch runs a layer's whole chunk forward, or a span's
// whole backward, with W_hh resident in shared memory and one grid barrier per step (the
// partition: tbptt/persistent.h; the plan and launchers: persistent_launch.h). Device code
// only, against the device layer (tbptt/simt.h); nvcc builds it for the GPU, g++ for the SIMT
// emulator. The pointwise math is lstm_math.h's, element by element, as in the stepwise path;
// the ring is written through window.h's set_record_targets and read through
// set_backward_sources, so the two paths read each other's history.
//
// Products: FFMA in acc_t (float; double for float64) over operands stored as T in shared
// memory, each thread a register tile (tbptt/persistent.h), the k slices summed in a fixed
// order: no atomics, so every schedule gives the same bits.
#pragma once

#include "tbptt/lstm_math.h"
#include "tbptt/persistent.h"
#include "tbptt/simt.h"

namespace tbptt {
namespace SIMT_NS {

constexpr int kPersistentMaxThreads = 256;

template <typename T>
SIMT_DEVICE const T* offset_rows(const void* base, int64_t rows, int64_t row_elems) {
  return static_cast<const T*>(base) + rows * row_elems;
}
template <typename T>
SIMT_DEVICE T* offset_rows(void* base, int64_t rows, int64_t row_elems) {
  return static_cast<T*>(base) + rows * row_elems;
}

SIMT_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Where a thread works in a tiled product (see PersistentPartition): slice `slice` of the
// reduction, rows 4 q .. 4 q + rows - 1 of the tile, local unit `unit`; `active` false for
// threads with nothing to do in this tile.
struct ProductTile {
  int64_t slice, item, group, unit, rows;
  bool active;
};

SIMT_DEVICE ProductTile product_tile(const PersistentPartition& part, int64_t units,
                                     int64_t tile_rows) {
  const int64_t items = thread_items(part.batch_tile, part.units);
  const int64_t tid = simt::thread_idx().x;
  ProductTile t;
  t.slice = tid / items;
  t.item = tid % items;
  t.group = t.item / units;
  t.unit = t.item % units;
  t.rows = min64(kRowsPerThread, tile_rows - kRowsPerThread * t.group);
  t.active = t.slice < part.k_split && t.item < (tile_rows + kRowsPerThread - 1) / kRowsPerThread * units;
  return t;
}

// Sums the k slices' partial sums acc[0 .. n) of every active thread into slice 0's, in slice
// order (so the bits do not depend on the schedule), through `partial` [k_split - 1, items, n].
template <typename acc_t, int n>
SIMT_DEVICE void sum_slices(const PersistentPartition& part, const ProductTile& t,
                            const simt::SharedArray<acc_t>& partial, acc_t (&acc)[n]) {
  if (part.k_split == 1) return;
  const int64_t items = thread_items(part.batch_tile, part.units);
  if (t.active && t.slice > 0) {
    for (int i = 0; i < n; ++i) partial[((t.slice - 1) * items + t.item) * n + i] = acc[i];
  }
  simt::sync_block();
  if (t.active && t.slice == 0) {
    for (int64_t slice = 1; slice < part.k_split; ++slice) {
      for (int i = 0; i < n; ++i) acc[i] += static_cast<acc_t>(partial[((slice - 1) * items + t.item) * n + i]);
    }
  }
}

// params: see PersistentForwardParams. Grid: part.blocks blocks of part.threads threads.
template <typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPersistentMaxThreads, 1)
    persistent_forward_kernel(const PersistentForwardParams p) {
  const PersistentPartition& part = p.part;
  const int64_t H = p.hidden, B = p.batch, G = 4 * H;
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t unit0 = int64_t(simt::block_idx().x) * part.units;
  const int64_t units = min64(part.units, H - unit0);  // >= 1
  const int64_t tile = part.batch_tile;
  const PersistentSharedLayout layout = shared_layout(part, H, false, sizeof(T), sizeof(acc_t));
  const int64_t ws = layout.weight_stride;
  // [4u, ws] T: row 4 jj + g = W_hh row g * H + unit0 + jj (the four gates of a unit together)
  const simt::SharedArray<T> w = simt::shared_array<T>(0, layout.weight_rows * ws, "w_hh rows");
  // [tile, ws] T: rows b0 .. of h_{t-1}
  const simt::SharedArray<T> h_tile =
      simt::shared_array<T>(layout.tile_offset, tile * ws, "h tile");
  // [k_split - 1, items, 16] acc
  const simt::SharedArray<acc_t> partial =
      simt::shared_array<acc_t>(layout.partial_offset, layout.partial_count, "partial sums");

  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t i = tid; i < 4 * units * H; i += threads) {
    const int64_t row = i / H, k = i % H;
    w[row * ws + k] = w_hh[((row % 4) * H + unit0 + row / 4) * H + k];
  }
  simt::sync_block();

  const int64_t k_per_slice = (H + part.k_split - 1) / part.k_split;
  T* gates_h = static_cast<T*>(p.gates_h);
  for (int64_t s = 0; s < p.steps; ++s) {
    const T* h_prev = offset_rows<T>(p.hidden_exchange, (s & 1) * B, H);  // [B, H]
    // gates_h[b, g H + unit0 + jj] = sum_k h_{t-1}[b, k] W_hh[g H + unit0 + jj, k]
    for (int64_t b0 = 0; b0 < B; b0 += tile) {
      const int64_t tile_rows = min64(tile, B - b0);
      for (int64_t i = tid; i < tile_rows * H; i += threads) {
        h_tile[(i / H) * ws + i % H] = h_prev[(b0 + i / H) * H + i % H];
      }
      simt::sync_block();
      const ProductTile t = product_tile(part, units, tile_rows);
      acc_t acc[kRowsPerThread * 4] = {};  // [row r][gate g] at 4 r + g
      if (t.active) {
        const int64_t k_end = min64(H, (t.slice + 1) * k_per_slice);
        for (int64_t k = t.slice * k_per_slice; k < k_end; ++k) {
          acc_t wk[4];
          for (int g = 0; g < 4; ++g) wk[g] = convert<acc_t>(static_cast<T>(w[(4 * t.unit + g) * ws + k]));
          for (int r = 0; r < kRowsPerThread; ++r) {
            if (r < t.rows) {
              const acc_t hk = convert<acc_t>(static_cast<T>(h_tile[(kRowsPerThread * t.group + r) * ws + k]));
              for (int g = 0; g < 4; ++g) acc[4 * r + g] += wk[g] * hk;
            }
          }
        }
      }
      sum_slices(part, t, partial, acc);
      if (t.active && t.slice == 0) {
        for (int r = 0; r < kRowsPerThread; ++r) {
          if (r < t.rows) {
            T* out = gates_h + (b0 + kRowsPerThread * t.group + r) * G + unit0 + t.unit;
            for (int g = 0; g < 4; ++g) out[g * H] = convert<T>(acc[4 * r + g]);
          }
        }
      }
      simt::sync_block();  // the tile and the partial sums are read; the next may overwrite
    }
    // Pointwise on the block's own units (gates_h of its columns, written above).
    ForwardStepParams step;
    step.batch = B;
    step.hidden = H;
    step.gates_x = offset_rows<T>(p.gates_x, s * B, G);
    step.gates_h = gates_h;
    step.cell = p.cell;
    step.hidden_prev = h_prev;
    step.hidden_next = offset_rows<T>(p.hidden_exchange, ((s + 1) & 1) * B, H);
    step.out = offset_rows<T>(p.out, s * B, H);
    set_record_targets(step, p.record, s, sizeof(T), sizeof(acc_t), p.scratch_gates,
                       p.scratch_cell, p.scratch_hidden);
    step.flags = p.flags != nullptr ? p.flags + s * B : p.no_flags;
    step.flags_next = (p.flags != nullptr && s + 1 < p.steps) ? p.flags + (s + 1) * B : p.no_flags;
    for (int64_t i = tid; i < B * units; i += threads) {
      forward_step_element<T, acc_t>(step, i / units, unit0 + i % units);
    }
    // h_t of every unit is in slot (s + 1) & 1 after the barrier. Slot s & 1 is free again:
    // every block finished staging from it before it arrived.
    if (s + 1 < p.steps) simt::sync_grid();
  }
}

template <typename T, typename acc_t, bool kPreActivations>
SIMT_DEVICE void persistent_backward_body(const PersistentBackwardParams& p) {
  const PersistentPartition& part = p.part;
  const int64_t H = p.hidden, B = p.batch, G = 4 * H, W = p.steps;
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t unit0 = int64_t(simt::block_idx().x) * part.units;
  const int64_t units = min64(part.units, H - unit0);  // >= 1
  const int64_t tile = part.batch_tile, chunk = part.k_chunk;
  const PersistentSharedLayout layout = shared_layout(part, H, true, sizeof(T), sizeof(acc_t));
  const int64_t ws = layout.weight_stride, ts = layout.tile_stride;
  // [u, ws] T: row jj = column unit0 + jj of W_hh (its G entries)
  const simt::SharedArray<T> w = simt::shared_array<T>(0, layout.weight_rows * ws, "w_hh columns");
  // [tile, ts] T: rows b0 .. of dG_t, columns k0 .. k0 + chunk
  const simt::SharedArray<T> dg_tile = simt::shared_array<T>(layout.tile_offset, tile * ts, "dG tile");
  // [k_split - 1, items, 4] acc
  const simt::SharedArray<acc_t> partial =
      simt::shared_array<acc_t>(layout.partial_offset, layout.partial_count, "partial sums");

  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t i = tid; i < units * G; i += threads) {
    const int64_t jj = i % units, k = i / units;  // consecutive threads: consecutive columns
    w[jj * ws + k] = w_hh[k * H + unit0 + jj];
  }
  simt::sync_block();

  T* grad_hidden = static_cast<T*>(p.grad_hidden);
  for (int64_t j = W - 1; j >= 0; --j) {
    BackwardStepParams step;
    step.batch = B;
    step.hidden = H;
    set_backward_sources(step, p.source, j, sizeof(T), sizeof(acc_t));
    step.flags = p.flags + j * B;
    step.flags_after = j < W - 1 ? p.flags + (j + 1) * B : p.no_flags;
    step.carry_scale = p.carry_scales != nullptr ? p.carry_scales[j] : 1.0;
    step.grad_out = j >= p.grad_out_first ? offset_rows<T>(p.grad_out, (j - p.grad_out_first) * B, H)
                                          : static_cast<const T*>(p.no_grad_out);
    step.grad_hidden_next = j == W - 1 ? p.grad_h_n : grad_hidden;
    step.grad_hidden_held = p.grad_held;
    step.grad_cell = p.grad_cell;
    step.grad_gates = offset_rows<T>(p.grad_gates, j * B, G);
    step.hidden_prev_seen = offset_rows<T>(p.hidden_prev_seen, j * B, H);
    for (int64_t i = tid; i < B * units; i += threads) {
      backward_step_element<T, acc_t, kPreActivations>(step, i / units, unit0 + i % units);
    }
    // dG_t of every unit is written after the barrier. Rows of the window buffer are written
    // once each, so the next step's writes cannot meet this step's reads: one barrier.
    simt::sync_grid();
    // grad_hidden[b, unit0 + jj] = sum_k dG_t[b, k] W_hh[k, unit0 + jj]: dL/dh_{t-1}, own units
    const T* dg = static_cast<const T*>(step.grad_gates);  // [B, G]
    for (int64_t b0 = 0; b0 < B; b0 += tile) {
      const int64_t tile_rows = min64(tile, B - b0);
      const ProductTile t = product_tile(part, units, tile_rows);
      acc_t acc[kRowsPerThread] = {};
      for (int64_t k0 = 0; k0 < G; k0 += chunk) {
        const int64_t cols = min64(chunk, G - k0);
        for (int64_t i = tid; i < tile_rows * cols; i += threads) {
          dg_tile[(i / cols) * ts + i % cols] = dg[(b0 + i / cols) * G + k0 + i % cols];
        }
        simt::sync_block();
        if (t.active) {
          const int64_t k_per_slice = (cols + part.k_split - 1) / part.k_split;
          const int64_t k_end = min64(cols, (t.slice + 1) * k_per_slice);
          for (int64_t k = t.slice * k_per_slice; k < k_end; ++k) {
            const acc_t wk = convert<acc_t>(static_cast<T>(w[t.unit * ws + k0 + k]));
            for (int r = 0; r < kRowsPerThread; ++r) {
              if (r < t.rows) {
                acc[r] += convert<acc_t>(static_cast<T>(dg_tile[(kRowsPerThread * t.group + r) * ts + k])) * wk;
              }
            }
          }
        }
        simt::sync_block();  // the tile is read; the next may overwrite it
      }
      sum_slices(part, t, partial, acc);
      if (t.active && t.slice == 0) {
        for (int r = 0; r < kRowsPerThread; ++r) {
          if (r < t.rows) {
            grad_hidden[(b0 + kRowsPerThread * t.group + r) * H + unit0 + t.unit] = convert<T>(acc[r]);
          }
        }
      }
      simt::sync_block();  // partial sums read; and the next step's elements read grad_hidden
    }
  }
}

// params: see PersistentBackwardParams. Grid: part.blocks blocks of part.threads threads.
template <typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPersistentMaxThreads, 1)
    persistent_backward_kernel(const PersistentBackwardParams p) {
  if (p.source.gates_are_pre_activations) {  // uniform over the launch
    persistent_backward_body<T, acc_t, true>(p);
  } else {
    persistent_backward_body<T, acc_t, false>(p);
  }
}

}  // namespace SIMT_NS
}  // namespace tbptt
