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
  const int64_t per_group = units > 0 ? units : 1;  // a block may own no P column (lstmp)
  ProductTile t;
  t.slice = tid / items;
  t.item = tid % items;
  t.group = t.item / per_group;
  t.unit = t.item % per_group;
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

// Forward, one batch tile: out[b0 + b, g N + unit0 + jj] = sum_{k < K} h_tile[b, k]
// w[kGates jj + g, k] (out [B, kGates N]; the recurrent product: K = h's width, N = H; the
// projection's: K = H, N = P, kGates 1).
template <int kGates, typename T, typename acc_t>
SIMT_DEVICE void forward_product_ffma(const PersistentPartition& part, int64_t K, int64_t N,
                                      int64_t units, int64_t unit0, int64_t b0, int64_t tile_rows,
                                      int64_t ws, const simt::SharedArray<T>& w,
                                      const simt::SharedArray<T>& h_tile,
                                      const simt::SharedArray<acc_t>& partial, T* out_rows) {
  const ProductTile t = product_tile(part, units, tile_rows);
  const int64_t k_per_slice = (K + part.k_split - 1) / part.k_split;
  acc_t acc[kRowsPerThread * kGates] = {};  // [row r][gate g] at kGates r + g
  if (t.active) {
    const int64_t k_end = min64(K, (t.slice + 1) * k_per_slice);
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
      T* out = out_rows + (b0 + kRowsPerThread * t.group + r) * kGates * N + unit0 + t.unit;
      for (int g = 0; g < kGates; ++g) out[g * N] = convert<T>(acc[kGates * r + g]);
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

// Forward, one batch tile, on tensor cores (K, N, out as forward_product_ffma): the output
// tile (mt, nt) is gate rows 16 mt .. (weight slice rows kGates jj + g) by batch rows 8 nt ..
// of the tile.
template <int kGates, typename T>
SIMT_DEVICE void forward_product_mma(const PersistentPartition& part, int64_t K, int64_t N,
                                     int64_t units, int64_t unit0, int64_t b0, int64_t tile_rows,
                                     int64_t ws, const simt::SharedArray<T>& w,
                                     const simt::SharedArray<T>& h_tile,
                                     const simt::SharedArray<float>& partial, T* out_rows) {
  const int64_t m_tiles = round_up_to(kGates * part.units, 16) / 16;
  const int64_t tiles = m_tiles * (round_up_to(tile_rows, 8) / 8);
  const int64_t plan_tiles = mma_tiles(part.batch_tile, part.units, kGates, false);
  const int64_t k_steps = round_up_to(K, 16) / 16;
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
          out_rows[(b0 + b) * kGates * N + (row % kGates) * N + unit0 + row / kGates] = convert<T>(d[i]);
        }
      }
    }
  }
}

// ---- staging weights and the two kinds of products -----------------------------------------

// Forward weights: w[kGates jj + g, k] = src[(g N + unit0 + jj) K + k] for jj < units, k < K
// (src [kGates N, K]: W_hh [G, O], or W_hr [P, H] with kGates 1), zero past them up to
// [rows, k_padded) (tensor cores: whole tiles). Every thread takes part; sync after.
template <int kGates, typename T, typename acc_t>
SIMT_DEVICE void stage_gate_rows(const simt::SharedArray<T>& w, int64_t ws, int64_t rows,
                                 int64_t k_padded, const T* src, int64_t K, int64_t N,
                                 int64_t units, int64_t unit0) {
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  for (int64_t i = tid; i < rows * k_padded; i += threads) {
    const int64_t row = i / k_padded, k = i % k_padded;
    w[row * ws + k] = (row < kGates * units && k < K)
                          ? src[((row % kGates) * N + unit0 + row / kGates) * K + k]
                          : convert<T>(acc_t(0));
  }
}

// Backward weights: w[jj, k] = src[k ld + col0 + jj] for jj < units, k < K (columns col0 .. of
// src [K, ld]: W_hh [G, O], or W_hr [P, H]), zero past them up to [rows, k_padded).
template <typename T, typename acc_t>
SIMT_DEVICE void stage_columns(const simt::SharedArray<T>& w, int64_t ws, int64_t rows,
                               int64_t k_padded, const T* src, int64_t K, int64_t ld,
                               int64_t units, int64_t col0) {
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  for (int64_t i = tid; i < rows * k_padded; i += threads) {
    const int64_t jj = i % rows, k = i / rows;  // consecutive threads: consecutive columns
    w[jj * ws + k] = (jj < units && k < K) ? src[k * ld + col0 + jj] : convert<T>(acc_t(0));
  }
}

// The arrays of one product in shared memory (shared_layout's).
template <typename T, typename partial_t>
struct SIMT_DEVICE_TYPE ProductArrays {
  PersistentSharedLayout layout;
  simt::SharedArray<T> w, tile;
  simt::SharedArray<partial_t> partial;
};

template <typename T, typename partial_t>
SIMT_DEVICE ProductArrays<T, partial_t> product_arrays(const PersistentSharedLayout& layout,
                                                       const char* weight_name,
                                                       const char* tile_name) {
  return ProductArrays<T, partial_t>{
      layout, simt::shared_array<T>(layout.weight_offset, layout.weight_rows * layout.weight_stride, weight_name),
      simt::shared_array<T>(layout.tile_offset, layout.tile_rows * layout.tile_stride, tile_name),
      simt::shared_array<partial_t>(layout.partial_offset, layout.partial_count, "partial sums")};
}

// Zeros a product's whole tile (tensor cores read its padding rows and columns, never staged).
template <typename T, typename acc_t, typename partial_t>
SIMT_DEVICE void zero_tile(const ProductArrays<T, partial_t>& a) {
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  for (int64_t i = tid; i < a.layout.tile_rows * a.layout.tile_stride; i += threads) {
    a.tile[i] = convert<T>(acc_t(0));
  }
}

// out[b, kGates N columns of unit0 + jj] = src [B, K] (row stride K) @ the staged rows of `a`,
// batch tile by batch tile (forward_product_*), for the block's `units` units. Every thread
// of the block calls it.
template <int kGates, typename T, typename acc_t, typename partial_t>
SIMT_DEVICE void forward_product(const PersistentPartition& part, const ProductArrays<T, partial_t>& a,
                                 int64_t B, int64_t K, const T* src, int64_t N, int64_t units,
                                 int64_t unit0, T* out) {
  const int64_t ws = a.layout.weight_stride;
  for (int64_t b0 = 0; b0 < B; b0 += part.batch_tile) {
    const int64_t tile_rows = min64(part.batch_tile, B - b0);
    stage_rows(a.tile, ws, src + b0 * K, K, tile_rows, K);
    simt::sync_block();
    if constexpr (kTensorCores<T>) {
      forward_product_mma<kGates, T>(part, K, N, units, unit0, b0, tile_rows, ws, a.w, a.tile,
                                     a.partial, out);
    } else {
      forward_product_ffma<kGates, T, acc_t>(part, K, N, units, unit0, b0, tile_rows, ws, a.w,
                                             a.tile, a.partial, out);
    }
    simt::sync_block();  // the tile and the partial sums are read; the next may overwrite
  }
}

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

// out[b, col0 + jj] (row stride ld_out) = sum_{k < K} src[b, k] w[jj, k]: src [B, K] with row
// stride ld_src (dG_t [B, R]: K = G; dh_eff [B, P]: K = P) staged in [batch tile, k_chunk]
// pieces, the block's `units` columns. Every thread of the block calls it.
template <typename T, typename acc_t, typename partial_t>
SIMT_DEVICE void backward_product(const PersistentPartition& part,
                                  const ProductArrays<T, partial_t>& a, int64_t B, int64_t K,
                                  const T* src, int64_t ld_src, int64_t units, int64_t col0,
                                  T* out, int64_t ld_out) {
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t ws = a.layout.weight_stride, ts = a.layout.tile_stride;
  const int64_t chunk = part.k_chunk;
  for (int64_t b0 = 0; b0 < B; b0 += part.batch_tile) {
    const int64_t tile_rows = min64(part.batch_tile, B - b0);
    // FFMA: a thread's rows; tensor cores: up to kMaxWarpTiles output tiles of a warp
    const ProductTile t = product_tile(part, units, tile_rows);
    acc_t acc[kRowsPerThread] = {};
    const int64_t n_tiles = round_up_to(part.units, 8) / 8;
    const int64_t tiles = round_up_to(tile_rows, 16) / 16 * n_tiles;
    const int64_t plan_tiles = mma_tiles(part.batch_tile, part.units, 1, true);
    const WarpTile wt = warp_tile(part, plan_tiles);
    float d[kMaxWarpTiles][4] = {};
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
      const int64_t cols = min64(chunk, K - k0);
      // tensor cores: whole k steps, the columns past K zero
      const int64_t staged = kTensorCores<T> ? round_up_to(cols, 16) : cols;
      stage_rows(a.tile, ts, src + b0 * ld_src + k0, ld_src, tile_rows, cols);
      for (int64_t i = tid; i < tile_rows * (staged - cols); i += threads) {  // past K: zero
        a.tile[(i / (staged - cols)) * ts + cols + i % (staged - cols)] = convert<T>(acc_t(0));
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
            mma_accumulate(d[n], a.tile, 16 * mt, ts, k_begin, a.w, 8 * nt, ws, k0 + k_begin,
                           k_end - k_begin);
          }
        }
      } else {
        backward_chunk_ffma<T, acc_t>(part, t, k0, cols, ws, ts, a.w, a.tile, acc);
      }
      simt::sync_block();  // the tile is read; the next may overwrite it
    }
    if constexpr (kTensorCores<T>) {
      const int lane = static_cast<int>(simt::lane_id());
      const bool active = wt.first_tile < tiles && wt.slice < part.k_split;
      sum_slices(part.k_split, wt.slice, wt.first_tile * 32 + lane, plan_tiles * 32, active,
                 a.partial, d[0]);
      for (int64_t n = 0; n < kMaxWarpTiles; ++n) {
        const int64_t out_tile = wt.first_tile + n * wt.tile_step;
        if (out_tile >= tiles || wt.slice != 0 || (n > 0 && part.k_split > 1)) continue;
        const int64_t mt = out_tile / n_tiles, nt = out_tile % n_tiles;
        for (int i = 0; i < 4; ++i) {
          const int64_t b = 16 * mt + simt::mma_layout::c_row(lane, i);
          const int64_t jj = 8 * nt + simt::mma_layout::c_col(lane, i);
          if (b < tile_rows && jj < units) {
            out[(b0 + b) * ld_out + col0 + jj] = convert<T>(d[n][i]);
          }
        }
      }
    } else {
      sum_slices(part.k_split, t.slice, t.item, thread_items(part.batch_tile, part.units),
                 t.active, a.partial, acc);
      if (t.active && t.slice == 0) {
        for (int r = 0; r < t.rows; ++r) {
          out[(b0 + kRowsPerThread * t.group + r) * ld_out + col0 + t.unit] = convert<T>(acc[r]);
        }
      }
    }
    simt::sync_block();  // partial sums read; and the next step's elements read out
  }
}

// ---- the forward kernel ---------------------------------------------------------------------

// params: see PersistentForwardParams. Grid: part.blocks blocks of part.threads threads.
// Cell: LstmCell, GruCell or LstmpCell (cells.h). Block p owns H units [p u, p u + u) and, with
// a projection, P columns [p v, p v + v) (v = part_projection.units; the last blocks may own
// none). One grid barrier between steps; with a projection two a step: phase A (own H units:
// h_{t-1} W_hh^T and pass 1 -> m), barrier, phase B (own P columns: m W_hr^T and the
// projection's element -> h), barrier.
template <typename Cell, typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPersistentMaxThreads, 1)
    persistent_forward_kernel(const PersistentForwardParams p) {
  using partial_t = typename std::conditional<kTensorCores<T>, float, acc_t>::type;
  constexpr int kGates = Cell::kGates;
  constexpr bool kProjected = Cell::kKind == CellKind::kLstmp;
  const PersistentPartition& part = p.part;
  const int64_t H = p.hidden, B = p.batch, G = kGates * H;
  const int64_t P = kProjected ? p.projection : 0, O = kProjected ? P : H;  // O: h's width
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t unit0 = int64_t(simt::block_idx().x) * part.units;
  const int64_t units = min64(part.units, H - unit0);  // >= 1
  const int64_t col0 = int64_t(simt::block_idx().x) * p.part_projection.units;  // projection
  const int64_t cols = kProjected ? (P > col0 ? min64(p.part_projection.units, P - col0) : 0) : 0;
  // Phase A: [gates u, O] rows of W_hh (row kGates jj + g = W_hh row g H + unit0 + jj: a
  // unit's gates together) and the h_{t-1} tile [batch tile, O].
  const ProductArrays<T, partial_t> recurrent = product_arrays<T, partial_t>(
      shared_layout(part, O, kGates, false, sizeof(T), sizeof(acc_t)), "w_hh rows", "h tile");
  stage_gate_rows<kGates, T, acc_t>(recurrent.w, recurrent.layout.weight_stride,
                                    recurrent.layout.weight_rows,
                                    kTensorCores<T> ? round_up_to(O, 16) : O,
                                    static_cast<const T*>(p.w_hh), O, H, units, unit0);
  // Phase B (projection): [v, H] rows of W_hr and the m tile [batch tile, H], after phase A's.
  ProductArrays<T, partial_t> projection = recurrent;
  if constexpr (kProjected) {
    projection = product_arrays<T, partial_t>(
        shared_layout(p.part_projection, H, 1, false, sizeof(T), sizeof(acc_t),
                      recurrent.layout.bytes),
        "w_hr rows", "m tile");
    stage_gate_rows<1, T, acc_t>(projection.w, projection.layout.weight_stride,
                                 projection.layout.weight_rows,
                                 kTensorCores<T> ? round_up_to(H, 16) : H,
                                 static_cast<const T*>(p.w_hr), H, P, cols, col0);
  }
  if (kTensorCores<T>) {  // padding rows and columns of the tiles: read, never staged
    zero_tile<T, acc_t>(recurrent);
    if (kProjected) zero_tile<T, acc_t>(projection);
  }
  simt::sync_block();

  T* gates_h = static_cast<T*>(p.gates_h);  // [B, G]
  for (int64_t s = 0; s < p.steps; ++s) {
    const T* h_prev = offset_rows<T>(p.hidden_exchange, (s & 1) * B, O);  // [B, O]
    // gates_h[b, g H + unit0 + jj] = sum_k h_{t-1}[b, k] W_hh[g H + unit0 + jj, k]
    forward_product<kGates, T, acc_t>(part, recurrent, B, O, h_prev, H, units, unit0, gates_h);
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
    step.hidden_next = offset_rows<T>(p.hidden_exchange, ((s + 1) & 1) * B, O);
    T* out = offset_rows<T>(p.out, s * B, O);  // [B, O]
    step.out = kProjected ? static_cast<T*>(p.hidden_m) : out;
    set_record_targets(step, p.record, s, sizeof(T), p.scratch_gates, p.scratch_cell,
                       p.scratch_hidden);
    step.flags = p.flags != nullptr ? p.flags + s * B : p.no_flags;
    step.flags_next = (p.flags != nullptr && s + 1 < p.steps) ? p.flags + (s + 1) * B : p.no_flags;
    for (int64_t i = tid; i < B * units; i += threads) {
      Cell::template forward<T, acc_t>(step, i / units, unit0 + i % units);
    }
    if constexpr (kProjected) {
      simt::sync_grid();  // m_t of every unit written
      // projected[b, col0 + jj] = sum_k m[b, k] W_hr[col0 + jj, k], then hold, out, records
      T* projected = static_cast<T*>(p.projected);  // [B, P]
      forward_product<1, T, acc_t>(p.part_projection, projection, B, H,
                                   static_cast<const T*>(p.hidden_m), P, cols, col0, projected);
      ForwardStepParams finish = step;
      finish.cell_kind = CellKind::kProjection;
      finish.hidden = P;
      finish.gates_h = projected;
      finish.out = out;
      for (int64_t i = tid; i < B * cols; i += threads) {
        ProjectionPass::forward<T, acc_t>(finish, i / cols, col0 + i % cols);
      }
    }
    // h_t of every unit is in slot (s + 1) & 1 after the barrier. Slot s & 1 is free again:
    // every block finished staging from it before it arrived (and, with a projection, m is
    // free: every block has staged it).
    if (s + 1 < p.steps) simt::sync_grid();
  }
}

// ---- the backward kernel --------------------------------------------------------------------

// Block p owns the units of h [p u, p u + u) of the product dG_t W_hh (u = part.units: H
// units, or with a projection P columns, the last blocks maybe none) and, with a projection,
// H units [p v, p v + v) (v = part_projection.units). Without a projection: the element on
// the own units, barrier, dL/dh_{t-1}[:, own] = dG_t W_hh[:, own]. With one: phase A (own P
// columns: the projection's element -> dh_eff), barrier, phase B (own H units: dm = dh_eff
// W_hr[:, own], the LSTM's element), barrier, phase C (own P columns: dG_t W_hh[:, own]), which
// the same block's next phase A reads.
template <typename Cell, typename T, typename acc_t, bool kPreActivations>
SIMT_DEVICE void persistent_backward_body(const PersistentBackwardParams& p) {
  using partial_t = typename std::conditional<kTensorCores<T>, float, acc_t>::type;
  constexpr int kGates = Cell::kGates;
  constexpr bool kProjected = Cell::kKind == CellKind::kLstmp;
  const PersistentPartition& part = p.part;
  // G: the product's k (W_hh's rows); R: a grad_gates row (the GRU's dGh is its first 3H)
  const int64_t H = p.hidden, B = p.batch, G = kGates * H, R = kRecordsPerUnit * H, W = p.steps;
  const int64_t P = kProjected ? p.projection : 0, O = kProjected ? P : H;
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t block = simt::block_idx().x;
  // the product's columns of h (H units, or P columns)
  const int64_t col0 = block * part.units;
  const int64_t cols = O > col0 ? min64(part.units, O - col0) : 0;
  // the element's H units
  const PersistentPartition& h_part = kProjected ? p.part_projection : part;
  const int64_t unit0 = block * h_part.units;
  const int64_t units = min64(h_part.units, H - unit0);  // >= 1
  // [u, G] columns of W_hh (row jj = column col0 + jj of W_hh [G, O]) and the dG tile
  const ProductArrays<T, partial_t> recurrent = product_arrays<T, partial_t>(
      shared_layout(part, G, kGates, true, sizeof(T), sizeof(acc_t)), "w_hh columns", "dG tile");
  stage_columns<T, acc_t>(recurrent.w, recurrent.layout.weight_stride, recurrent.layout.weight_rows,
                          kTensorCores<T> ? round_up_to(G, 16) : G, static_cast<const T*>(p.w_hh),
                          G, O, cols, col0);
  // projection: [v, P] columns of W_hr [P, H] and the dh_eff tile, after the first's
  ProductArrays<T, partial_t> projection = recurrent;
  if constexpr (kProjected) {
    projection = product_arrays<T, partial_t>(
        shared_layout(p.part_projection, P, 1, true, sizeof(T), sizeof(acc_t),
                      recurrent.layout.bytes),
        "w_hr columns", "dh_eff tile");
    stage_columns<T, acc_t>(projection.w, projection.layout.weight_stride,
                            projection.layout.weight_rows, kTensorCores<T> ? round_up_to(P, 16) : P,
                            static_cast<const T*>(p.w_hr), P, H, units, unit0);
  }
  if (kTensorCores<T>) {  // the tiles' padding rows: read, never staged
    zero_tile<T, acc_t>(recurrent);
    if (kProjected) zero_tile<T, acc_t>(projection);
  }
  simt::sync_block();

  T* grad_hidden = static_cast<T*>(p.grad_hidden);  // [B, O]
  for (int64_t j = W - 1; j >= 0; --j) {
    BackwardStepParams step;
    step.cell_kind = Cell::kKind;
    step.batch = B;
    step.hidden = H;
    set_backward_sources(step, p.source, j, sizeof(T), sizeof(acc_t));
    step.flags = p.flags + j * B;
    step.flags_after = j < W - 1 ? p.flags + (j + 1) * B : p.no_flags;
    step.carry_scale = p.carry_scales != nullptr ? p.carry_scales[j] : 1.0;
    step.grad_out = j >= p.grad_out_first ? offset_rows<T>(p.grad_out, (j - p.grad_out_first) * B, O)
                                          : static_cast<const T*>(p.no_grad_out);
    step.grad_hidden_next = j == W - 1 ? p.grad_h_n : grad_hidden;
    step.grad_hidden_held = p.grad_held;
    step.grad_cell = p.grad_cell;
    step.grad_gates = offset_rows<T>(p.grad_gates, j * B, R);
    step.hidden_prev_seen = offset_rows<T>(p.hidden_prev_seen, j * B, O);
    if constexpr (kProjected) {
      // phase A, own P columns: dh_eff and the carry past held steps (lstmp_math.h)
      BackwardStepParams projected = step;
      projected.cell_kind = CellKind::kProjection;
      projected.hidden = P;
      projected.grad_gates = offset_rows<T>(p.grad_projected, j * B, P);
      for (int64_t i = tid; i < B * cols; i += threads) {
        ProjectionPass::backward<T, acc_t, false>(projected, i / cols, col0 + i % cols);
      }
      simt::sync_grid();  // dh_eff of every column written
      // phase B, own H units: dm[:, own] = dh_eff @ W_hr[:, own]; then the LSTM's element with
      // dL/dh = dm and nothing carried in h (its h inputs zeros, its h output scratch)
      backward_product<T, acc_t>(p.part_projection, projection, B, P,
                                 static_cast<const T*>(projected.grad_gates), P, units, unit0,
                                 static_cast<T*>(p.grad_m), H);
      step.cell_kind = CellKind::kLstm;
      step.hidden_prev = p.zeros_h;
      step.hidden_prev_seen = p.scratch_h;
      step.grad_out = p.grad_m;
      step.grad_hidden_next = p.zeros_h;
      step.grad_hidden_held = p.held_h;
      for (int64_t i = tid; i < B * units; i += threads) {
        LstmCell::backward<T, acc_t, kPreActivations>(step, i / units, unit0 + i % units);
      }
    } else {
      for (int64_t i = tid; i < B * units; i += threads) {
        Cell::template backward<T, acc_t, kPreActivations>(step, i / units, unit0 + i % units);
      }
    }
    // dG_t of every unit is written after the barrier. Rows of the window buffer are written
    // once each, so the next step's writes cannot meet this step's reads: one barrier.
    simt::sync_grid();
    // grad_hidden[b, col0 + jj] = sum_k dG_t[b, k] W_hh[k, col0 + jj]: dL/dh_{t-1}, own columns
    backward_product<T, acc_t>(part, recurrent, B, G, static_cast<const T*>(step.grad_gates), R,
                               cols, col0, grad_hidden, O);
  }
}

// params: see PersistentBackwardParams. Grid: part.blocks blocks of part.threads threads.
// Cell: LstmCell, GruCell or LstmpCell (cells.h).
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
