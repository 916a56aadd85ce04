// Persistent kernels: one cooperative launch runs a layer's whole chunk forward, or a span's
// whole backward, with W_hh resident in shared memory and one grid barrier per step (the
// partition: tbptt/persistent.h; the plan and launchers: persistent_launch.h). Device code
// only, against the device layer (tbptt/simt.h); nvcc builds it for the GPU, g++ for the SIMT
// emulator. One body for the LSTM and the GRU: the kernels take the cell (cells.h) as a
// template parameter, as the stepwise kernels do. The pointwise math is the cell's element
// functions (lstm_math.h, gru_math.h), element by element, as in the stepwise path;
// the ring is written through window.h's set_record_targets and read through
// set_backward_sources, so the two paths read each other's history.
//
// Products, one templated body per kernel: FFMA in acc_t (float; double for float64) for 32-
// and 64-bit storage, each thread a register tile; mma.sync m16n8k16 with fp32 accumulation
// for float16 / bfloat16, each warp an m16n8 tile. Either way the k slices are summed in a
// fixed order: no atomics, so every schedule gives the same bits. The cell state, the
// carried gradients and the gate math stay in acc_t.
#pragma once

#include <type_traits>

#include "tbptt/cells.h"
#include "tbptt/persistent.h"
#include "tbptt/simt.h"

namespace tbptt {
namespace SIMT_NS {

constexpr int kPersistentMaxThreads = 256;

// Whether storage type T multiplies on tensor cores (16-bit operands).
template <typename T>
constexpr bool kTensorCores =
    std::is_same<T, simt::float16>::value || std::is_same<T, simt::bfloat16>::value;

template <typename T>
SIMT_DEVICE const T* offset_rows(const void* base, int64_t rows, int64_t row_elems) {
  return static_cast<const T*>(base) + rows * row_elems;
}
template <typename T>
SIMT_DEVICE T* offset_rows(void* base, int64_t rows, int64_t row_elems) {
  return static_cast<T*>(base) + rows * row_elems;
}

SIMT_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- staging global rows into shared memory -------------------------------------------------

// 16 bytes of T: one vector load (LDG.128 under nvcc where the address is 16-byte aligned).
template <typename T>
struct alignas(16) Pack16 {
  T value[16 / sizeof(T)];
};

constexpr int kLoadsInFlight = 4;  // independent loads a thread issues before it stores

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols: every thread of the
// block takes part (the caller synchronises after). 16-byte loads where src's rows allow them,
// kLoadsInFlight of them in flight per thread (the L2 latency is paid once per group, not per
// element), 32-bit index math.
template <typename T>
SIMT_DEVICE void stage_rows(const simt::SharedArray<T>& dst, int64_t dst_stride, const T* src,
                            int64_t src_stride, int64_t rows, int64_t cols) {
  constexpr int kLanes = static_cast<int>(16 / sizeof(T));
  const int threads = static_cast<int>(simt::block_dim().x);
  const bool vector = cols % kLanes == 0 && src_stride % kLanes == 0 &&
                      reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const int width = static_cast<int>(vector ? cols / kLanes : cols);  // loads per row
  const int lanes = vector ? kLanes : 1;
  // This thread's next load is at (row, column); a step of `threads` loads moves it on
  // without a division.
  int row = static_cast<int>(simt::thread_idx().x) / width;
  int column = static_cast<int>(simt::thread_idx().x) % width;
  while (row < rows) {
    Pack16<T> loaded[kLoadsInFlight];
    int at_row[kLoadsInFlight], at_column[kLoadsInFlight];
    int count = 0;
    for (; count < kLoadsInFlight && row < rows; ++count) {
      const T* from = src + row * src_stride + column * lanes;
      if (vector) {
        loaded[count] = *reinterpret_cast<const Pack16<T>*>(from);
      } else {
        loaded[count].value[0] = *from;
      }
      at_row[count] = row;
      at_column[count] = column;
      for (column += threads; column >= width; column -= width) ++row;
    }
    for (int i = 0; i < count; ++i) {
      const int64_t to = at_row[i] * dst_stride + at_column[i] * lanes;
      for (int lane = 0; lane < lanes; ++lane) dst[to + lane] = loaded[i].value[lane];
    }
  }
}

// ---- FFMA products ------------------------------------------------------------------------

// Where a thread works in an FFMA product (see PersistentPartition): slice `slice` of the
// reduction, rows kRowsPerThread * group .. + rows - 1 of the tile, local unit `unit`;
// `active` false for threads with nothing to do in this tile.
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
  t.active = t.slice < part.k_split &&
             t.item < (tile_rows + kRowsPerThread - 1) / kRowsPerThread * units;
  return t;
}

// Sums the partial sums acc[0 .. n) of the k slices into slice 0's, in slice order, through
// `partial` [k_split - 1, slots, n]; `slot` is the caller's place among the `slots` of a slice.
// Every thread of the block calls it (it holds a block barrier when k_split > 1).
template <typename acc_t, int n>
SIMT_DEVICE void sum_slices(int64_t k_split, int64_t slice, int64_t slot, int64_t slots,
                            bool active, const simt::SharedArray<acc_t>& partial,
                            acc_t (&acc)[n]) {
  if (k_split == 1) return;
  if (active && slice > 0) {
    for (int i = 0; i < n; ++i) partial[((slice - 1) * slots + slot) * n + i] = acc[i];
  }
  simt::sync_block();
  if (active && slice == 0) {
    for (int64_t other = 1; other < k_split; ++other) {
      for (int i = 0; i < n; ++i) acc[i] += static_cast<acc_t>(partial[((other - 1) * slots + slot) * n + i]);
    }
  }
}

// Forward, one batch tile: gates_h[b0 + b, g H + unit0 + jj] = sum_k h_tile[b, k]
// w[kGates jj + g, k] (gates_h [B, kGates H]).
template <int kGates, typename T, typename acc_t>
SIMT_DEVICE void forward_product_ffma(const PersistentPartition& part, int64_t H, int64_t units,
                                      int64_t unit0, int64_t b0, int64_t tile_rows, int64_t ws,
                                      const simt::SharedArray<T>& w,
                                      const simt::SharedArray<T>& h_tile,
                                      const simt::SharedArray<acc_t>& partial, T* gates_h) {
  const ProductTile t = product_tile(part, units, tile_rows);
  const int64_t k_per_slice = (H + part.k_split - 1) / part.k_split;
  acc_t acc[kRowsPerThread * kGates] = {};  // [row r][gate g] at kGates r + g
  if (t.active) {
    const int64_t k_end = min64(H, (t.slice + 1) * k_per_slice);
    for (int64_t k = t.slice * k_per_slice; k < k_end; ++k) {
      acc_t wk[kGates];
      for (int g = 0; g < kGates; ++g) wk[g] = convert<acc_t>(static_cast<T>(w[(kGates * t.unit + g) * ws + k]));
      for (int r = 0; r < kRowsPerThread; ++r) {
        if (r < t.rows) {
          const acc_t hk = convert<acc_t>(static_cast<T>(h_tile[(kRowsPerThread * t.group + r) * ws + k]));
          for (int g = 0; g < kGates; ++g) acc[kGates * r + g] += wk[g] * hk;
        }
      }
    }
  }
  sum_slices(part.k_split, t.slice, t.item, thread_items(part.batch_tile, part.units), t.active,
             partial, acc);
  if (t.active && t.slice == 0) {
    for (int r = 0; r < t.rows; ++r) {
      T* out = gates_h + (b0 + kRowsPerThread * t.group + r) * kGates * H + unit0 + t.unit;
      for (int g = 0; g < kGates; ++g) out[g * H] = convert<T>(acc[kGates * r + g]);
    }
  }
}

// ---- tensor-core products -----------------------------------------------------------------

// d += A B over k in [0, k_len) (a multiple of 16) on tensor cores, for one warp (all 32
// lanes call it): A element (m, k) = a[(a_row0 + m) * a_stride + a_col0 + k], m < 16; B element
// (k, n) = b[(b_row0 + n) * b_stride + b_col0 + k], n < 8 (B stored n-major, as both products
// keep it). Fragments as simt::mma_layout.
template <typename T>
SIMT_DEVICE void mma_accumulate(float (&d)[4], const simt::SharedArray<T>& a, int64_t a_row0,
                                int64_t a_stride, int64_t a_col0, const simt::SharedArray<T>& b,
                                int64_t b_row0, int64_t b_stride, int64_t b_col0, int64_t k_len) {
  namespace layout = simt::mma_layout;
  const int lane = static_cast<int>(simt::lane_id());
  for (int64_t k0 = 0; k0 < k_len; k0 += 16) {
    uint32_t ra[4], rb[2];
    for (int j = 0; j < 4; ++j) {
      const int i = 2 * j;
      ra[j] = simt::pack_pair(
          static_cast<T>(a[(a_row0 + layout::a_row(lane, i)) * a_stride + a_col0 + k0 + layout::a_col(lane, i)]),
          static_cast<T>(a[(a_row0 + layout::a_row(lane, i + 1)) * a_stride + a_col0 + k0 + layout::a_col(lane, i + 1)]));
    }
    for (int j = 0; j < 2; ++j) {
      const int i = 2 * j;
      rb[j] = simt::pack_pair(
          static_cast<T>(b[(b_row0 + layout::b_col(lane, i)) * b_stride + b_col0 + k0 + layout::b_row(lane, i)]),
          static_cast<T>(b[(b_row0 + layout::b_col(lane, i + 1)) * b_stride + b_col0 + k0 + layout::b_row(lane, i + 1)]));
    }
    simt::mma_m16n8k16<T>(d, ra, rb, d);
  }
}

// Where a warp works in a tensor-core product: with k_split 1 it takes tiles warp, warp +
// warps, ...; else exactly one (tile, slice) of the plan's `tiles` tiles per batch tile.
struct WarpTile {
  int64_t warp, warps, slice, first_tile, tile_step;
};

SIMT_DEVICE WarpTile warp_tile(const PersistentPartition& part, int64_t plan_tiles) {
  WarpTile w;
  w.warp = simt::thread_idx().x / simt::kWarpSize;
  w.warps = simt::block_dim().x / simt::kWarpSize;
  w.slice = part.k_split == 1 ? 0 : w.warp / plan_tiles;
  w.first_tile = part.k_split == 1 ? w.warp : w.warp % plan_tiles;
  w.tile_step = part.k_split == 1 ? w.warps : plan_tiles;
  return w;
}

// Forward, one batch tile, on tensor cores: the output tile (mt, nt) is gate rows 16 mt ..
// (W_hh slice rows kGates jj + g) by batch rows 8 nt .. of the tile.
template <int kGates, typename T>
SIMT_DEVICE void forward_product_mma(const PersistentPartition& part, int64_t H, int64_t units,
                                     int64_t unit0, int64_t b0, int64_t tile_rows, int64_t ws,
                                     const simt::SharedArray<T>& w,
                                     const simt::SharedArray<T>& h_tile,
                                     const simt::SharedArray<float>& partial, T* gates_h) {
  const int64_t m_tiles = round_up_to(kGates * part.units, 16) / 16;
  const int64_t tiles = m_tiles * (round_up_to(tile_rows, 8) / 8);
  const int64_t plan_tiles = mma_tiles(part.batch_tile, part.units, kGates, false);
  const int64_t k_steps = round_up_to(H, 16) / 16;
  const int64_t steps_per_slice = (k_steps + part.k_split - 1) / part.k_split;
  const WarpTile wt = warp_tile(part, plan_tiles);
  const int lane = static_cast<int>(simt::lane_id());
  // With k_split > 1 every warp runs this loop once (tile < plan_tiles), so the block barrier
  // in sum_slices is reached by all; with k_split 1 there is none.
  for (int64_t tile = wt.first_tile; tile < (part.k_split == 1 ? tiles : wt.first_tile + 1);
       tile += wt.tile_step) {
    const bool active = tile < tiles && wt.slice < part.k_split;
    const int64_t mt = tile % m_tiles, nt = tile / m_tiles;
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    const int64_t k_begin = min64(k_steps, wt.slice * steps_per_slice) * 16;
    const int64_t k_end = min64(k_steps, (wt.slice + 1) * steps_per_slice) * 16;
    if (active) mma_accumulate(d, w, 16 * mt, ws, k_begin, h_tile, 8 * nt, ws, k_begin, k_end - k_begin);
    sum_slices(part.k_split, wt.slice, tile * 32 + lane, plan_tiles * 32, active, partial, d);
    if (active && wt.slice == 0) {
      for (int i = 0; i < 4; ++i) {
        const int64_t row = 16 * mt + simt::mma_layout::c_row(lane, i);  // kGates jj + g
        const int64_t b = 8 * nt + simt::mma_layout::c_col(lane, i);
        if (row < kGates * units && b < tile_rows) {
          gates_h[(b0 + b) * kGates * H + (row % kGates) * H + unit0 + row / kGates] = convert<T>(d[i]);
        }
      }
    }
  }
}

// ---- the forward kernel ---------------------------------------------------------------------

// params: see PersistentForwardParams. Grid: part.blocks blocks of part.threads threads.
// Cell: LstmCell or GruCell (cells.h).
template <typename Cell, typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPersistentMaxThreads, 1)
    persistent_forward_kernel(const PersistentForwardParams p) {
  using partial_t = typename std::conditional<kTensorCores<T>, float, acc_t>::type;
  constexpr int kGates = Cell::kGates;
  const PersistentPartition& part = p.part;
  const int64_t H = p.hidden, B = p.batch, G = kGates * H;
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t unit0 = int64_t(simt::block_idx().x) * part.units;
  const int64_t units = min64(part.units, H - unit0);  // >= 1
  const int64_t tile = part.batch_tile;
  const PersistentSharedLayout layout =
      shared_layout(part, H, kGates, false, sizeof(T), sizeof(acc_t));
  const int64_t ws = layout.weight_stride;
  const int64_t k_padded = kTensorCores<T> ? round_up_to(H, 16) : H;
  // [weight_rows, ws] T: row kGates jj + g = W_hh row g * H + unit0 + jj (a unit's gates
  // together); zero past the block's units and past H (tensor cores: whole tiles)
  const simt::SharedArray<T> w = simt::shared_array<T>(0, layout.weight_rows * ws, "w_hh rows");
  // [tile_rows, ws] T: rows b0 .. of h_{t-1}
  const simt::SharedArray<T> h_tile =
      simt::shared_array<T>(layout.tile_offset, layout.tile_rows * ws, "h tile");
  const simt::SharedArray<partial_t> partial =
      simt::shared_array<partial_t>(layout.partial_offset, layout.partial_count, "partial sums");

  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t i = tid; i < layout.weight_rows * k_padded; i += threads) {
    const int64_t row = i / k_padded, k = i % k_padded;
    w[row * ws + k] = (row < kGates * units && k < H)
                          ? w_hh[((row % kGates) * H + unit0 + row / kGates) * H + k]
                          : convert<T>(acc_t(0));
  }
  if (kTensorCores<T>) {  // padding rows and columns of the h tile: read, never staged
    for (int64_t i = tid; i < layout.tile_rows * k_padded; i += threads) {
      h_tile[(i / k_padded) * ws + i % k_padded] = convert<T>(acc_t(0));
    }
  }
  simt::sync_block();

  T* gates_h = static_cast<T*>(p.gates_h);
  for (int64_t s = 0; s < p.steps; ++s) {
    const T* h_prev = offset_rows<T>(p.hidden_exchange, (s & 1) * B, H);  // [B, H]
    // gates_h[b, g H + unit0 + jj] = sum_k h_{t-1}[b, k] W_hh[g H + unit0 + jj, k]
    for (int64_t b0 = 0; b0 < B; b0 += tile) {
      const int64_t tile_rows = min64(tile, B - b0);
      stage_rows(h_tile, ws, h_prev + b0 * H, H, tile_rows, H);
      simt::sync_block();
      if constexpr (kTensorCores<T>) {
        forward_product_mma<kGates, T>(part, H, units, unit0, b0, tile_rows, ws, w, h_tile,
                                       partial, gates_h);
      } else {
        forward_product_ffma<kGates, T, acc_t>(part, H, units, unit0, b0, tile_rows, ws, w, h_tile,
                                               partial, gates_h);
      }
      simt::sync_block();  // the tile and the partial sums are read; the next may overwrite
    }
    // Pointwise on the block's own units (gates_h of its columns, written above).
    ForwardStepParams step;
    step.cell_kind = Cell::kKind;
    step.batch = B;
    step.hidden = H;
    step.gates_x = offset_rows<T>(p.gates_x, s * B, G);
    step.gates_h = gates_h;
    step.bias_hn = p.bias_hn;
    step.cell = p.cell;
    step.hidden_prev = h_prev;
    step.hidden_next = offset_rows<T>(p.hidden_exchange, ((s + 1) & 1) * B, H);
    step.out = offset_rows<T>(p.out, s * B, H);
    set_record_targets(step, p.record, s, sizeof(T), p.scratch_gates, p.scratch_cell,
                       p.scratch_hidden);
    step.flags = p.flags != nullptr ? p.flags + s * B : p.no_flags;
    step.flags_next = (p.flags != nullptr && s + 1 < p.steps) ? p.flags + (s + 1) * B : p.no_flags;
    for (int64_t i = tid; i < B * units; i += threads) {
      Cell::template forward<T, acc_t>(step, i / units, unit0 + i % units);
    }
    // h_t of every unit is in slot (s + 1) & 1 after the barrier. Slot s & 1 is free again:
    // every block finished staging from it before it arrived.
    if (s + 1 < p.steps) simt::sync_grid();
  }
}

// ---- the backward kernel --------------------------------------------------------------------

// Backward, one batch tile, FFMA: acc[r] = sum over the staged columns of dg_tile[b, k]
// w[jj, k0 + k] for the thread's rows b; called per staged chunk, summed over slices after.
template <typename T, typename acc_t>
SIMT_DEVICE void backward_chunk_ffma(const PersistentPartition& part, const ProductTile& t,
                                     int64_t k0, int64_t cols, int64_t ws, int64_t ts,
                                     const simt::SharedArray<T>& w,
                                     const simt::SharedArray<T>& dg_tile,
                                     acc_t (&acc)[kRowsPerThread]) {
  if (!t.active) return;
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

template <typename Cell, typename T, typename acc_t, bool kPreActivations>
SIMT_DEVICE void persistent_backward_body(const PersistentBackwardParams& p) {
  using partial_t = typename std::conditional<kTensorCores<T>, float, acc_t>::type;
  constexpr int kGates = Cell::kGates;
  const PersistentPartition& part = p.part;
  // G: the product's k (W_hh's rows); R: a grad_gates row (the GRU's dGh is its first 3H)
  const int64_t H = p.hidden, B = p.batch, G = kGates * H, R = kRecordsPerUnit * H, W = p.steps;
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t unit0 = int64_t(simt::block_idx().x) * part.units;
  const int64_t units = min64(part.units, H - unit0);  // >= 1
  const int64_t tile = part.batch_tile, chunk = part.k_chunk;
  const PersistentSharedLayout layout =
      shared_layout(part, H, kGates, true, sizeof(T), sizeof(acc_t));
  const int64_t ws = layout.weight_stride, ts = layout.tile_stride;
  const int64_t k_padded = kTensorCores<T> ? round_up_to(G, 16) : G;
  // [weight_rows, ws] T: row jj = column unit0 + jj of W_hh (its G entries); zero past the
  // block's units and past G (tensor cores: whole tiles)
  const simt::SharedArray<T> w = simt::shared_array<T>(0, layout.weight_rows * ws, "w_hh columns");
  // [tile_rows, ts] T: rows b0 .. of dG_t, columns k0 .. k0 + chunk
  const simt::SharedArray<T> dg_tile =
      simt::shared_array<T>(layout.tile_offset, layout.tile_rows * ts, "dG tile");
  const simt::SharedArray<partial_t> partial =
      simt::shared_array<partial_t>(layout.partial_offset, layout.partial_count, "partial sums");

  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t i = tid; i < layout.weight_rows * k_padded; i += threads) {
    const int64_t jj = i % layout.weight_rows, k = i / layout.weight_rows;  // consecutive
    w[jj * ws + k] = (jj < units && k < G) ? w_hh[k * H + unit0 + jj]      // threads: columns
                                           : convert<T>(acc_t(0));
  }
  if (kTensorCores<T>) {  // the dG tile's padding rows: read, never staged
    for (int64_t i = tid; i < layout.tile_rows * chunk; i += threads) {
      dg_tile[(i / chunk) * ts + i % chunk] = convert<T>(acc_t(0));
    }
  }
  simt::sync_block();

  T* grad_hidden = static_cast<T*>(p.grad_hidden);
  for (int64_t j = W - 1; j >= 0; --j) {
    BackwardStepParams step;
    step.cell_kind = Cell::kKind;
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
    step.grad_gates = offset_rows<T>(p.grad_gates, j * B, R);
    step.hidden_prev_seen = offset_rows<T>(p.hidden_prev_seen, j * B, H);
    for (int64_t i = tid; i < B * units; i += threads) {
      Cell::template backward<T, acc_t, kPreActivations>(step, i / units, unit0 + i % units);
    }
    // dG_t of every unit is written after the barrier. Rows of the window buffer are written
    // once each, so the next step's writes cannot meet this step's reads: one barrier.
    simt::sync_grid();
    // grad_hidden[b, unit0 + jj] = sum_k dG_t[b, k] W_hh[k, unit0 + jj]: dL/dh_{t-1}, own units
    const T* dg = static_cast<const T*>(step.grad_gates);  // [B, R]: columns [0, G) of each row
    for (int64_t b0 = 0; b0 < B; b0 += tile) {
      const int64_t tile_rows = min64(tile, B - b0);
      // FFMA: a thread's rows; tensor cores: up to kMaxWarpTiles output tiles of a warp
      const ProductTile t = product_tile(part, units, tile_rows);
      acc_t acc[kRowsPerThread] = {};
      const int64_t n_tiles = round_up_to(part.units, 8) / 8;
      const int64_t tiles = round_up_to(tile_rows, 16) / 16 * n_tiles;
      const int64_t plan_tiles = mma_tiles(part.batch_tile, part.units, kGates, true);
      const WarpTile wt = warp_tile(part, plan_tiles);
      float d[kMaxWarpTiles][4] = {};
      for (int64_t k0 = 0; k0 < G; k0 += chunk) {
        const int64_t cols = min64(chunk, G - k0);
        // tensor cores: whole k steps, the columns past G zero
        const int64_t staged = kTensorCores<T> ? round_up_to(cols, 16) : cols;
        stage_rows(dg_tile, ts, dg + b0 * R + k0, R, tile_rows, cols);
        for (int64_t i = tid; i < tile_rows * (staged - cols); i += threads) {  // past G: zero
          dg_tile[(i / (staged - cols)) * ts + cols + i % (staged - cols)] = convert<T>(acc_t(0));
        }
        simt::sync_block();
        if constexpr (kTensorCores<T>) {
          const int64_t k_steps = staged / 16;
          const int64_t per_slice = (k_steps + part.k_split - 1) / part.k_split;
          const int64_t k_begin = min64(k_steps, wt.slice * per_slice) * 16;
          const int64_t k_end = min64(k_steps, (wt.slice + 1) * per_slice) * 16;
          for (int64_t n = 0; n < kMaxWarpTiles; ++n) {
            const int64_t out_tile = wt.first_tile + n * wt.tile_step;
            if (out_tile < tiles && wt.slice < part.k_split && (n == 0 || part.k_split == 1)) {
              const int64_t mt = out_tile / n_tiles, nt = out_tile % n_tiles;
              mma_accumulate(d[n], dg_tile, 16 * mt, ts, k_begin, w, 8 * nt, ws, k0 + k_begin,
                             k_end - k_begin);
            }
          }
        } else {
          backward_chunk_ffma<T, acc_t>(part, t, k0, cols, ws, ts, w, dg_tile, acc);
        }
        simt::sync_block();  // the tile is read; the next may overwrite it
      }
      if constexpr (kTensorCores<T>) {
        const int lane = static_cast<int>(simt::lane_id());
        const bool active = wt.first_tile < tiles && wt.slice < part.k_split;
        sum_slices(part.k_split, wt.slice, wt.first_tile * 32 + lane, plan_tiles * 32, active,
                   partial, d[0]);
        for (int64_t n = 0; n < kMaxWarpTiles; ++n) {
          const int64_t out_tile = wt.first_tile + n * wt.tile_step;
          if (out_tile >= tiles || wt.slice != 0 || (n > 0 && part.k_split > 1)) continue;
          const int64_t mt = out_tile / n_tiles, nt = out_tile % n_tiles;
          for (int i = 0; i < 4; ++i) {
            const int64_t b = 16 * mt + simt::mma_layout::c_row(lane, i);
            const int64_t jj = 8 * nt + simt::mma_layout::c_col(lane, i);
            if (b < tile_rows && jj < units) {
              grad_hidden[(b0 + b) * H + unit0 + jj] = convert<T>(d[n][i]);
            }
          }
        }
      } else {
        sum_slices(part.k_split, t.slice, t.item, thread_items(part.batch_tile, part.units),
                   t.active, partial, acc);
        if (t.active && t.slice == 0) {
          for (int r = 0; r < t.rows; ++r) {
            grad_hidden[(b0 + kRowsPerThread * t.group + r) * H + unit0 + t.unit] = convert<T>(acc[r]);
          }
        }
      }
      simt::sync_block();  // partial sums read; and the next step's elements read grad_hidden
    }
  }
}

// params: see PersistentBackwardParams. Grid: part.blocks blocks of part.threads threads.
// Cell: LstmCell or GruCell (cells.h).
template <typename Cell, typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPersistentMaxThreads, 1)
    persistent_backward_kernel(const PersistentBackwardParams p) {
  if (p.source.gates_are_pre_activations) {  // uniform over the launch
    persistent_backward_body<Cell, T, acc_t, true>(p);
  } else {
    persistent_backward_body<Cell, T, acc_t, false>(p);
  }
}

}  // namespace SIMT_NS
}  // namespace tbptt
