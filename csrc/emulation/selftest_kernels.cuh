// Kernels that exercise every part of the device layer, for the emulator's own tests
// (tests/cpp/emu_selftest.cpp, built plain and under TSan and ASan+UBSan; and, through
// csrc/emulation/selftest.cpp, the Python tests). Device code only, against tbptt/simt.h;
// scripts/check_ptxas.py compiles it with nvcc too. Each kernel takes a compile-time Fault:
// kNone is the correct kernel, the others are the same kernel with one planted bug that the
// emulator (or a sanitizer) must catch.
#pragma once

#include <cmath>

#include "tbptt/simt.h"

namespace selftest {
namespace SIMT_NS {

enum Fault : int {
  kNone = 0,
  kNoBlockBarrier,     // h_{t-1} read from shared memory before all of it is loaded
  kNoGridBarrier,      // the grid barrier replaced by a block barrier: stale h of other blocks
  kSharedOverrun,      // one element written past the end of a shared array
  kDivergentBarrier,   // one thread reaches a different __syncthreads
  kEarlyExit,          // one thread exits before a __syncthreads
  kIncompleteMask,     // lane 31 exits while its warp shuffles with the full mask
  kGlobalOverrun,      // one element written past the end of a global buffer (ASan)
  kUninitialisedRead,  // a shared element that nobody wrote is read
  kDeadlock,           // lane 0 waits at a shuffle its warp never joins; the others at a barrier
};

// A toy persistent RNN, h_t = tanh(W h_{t-1}), n units, one grid barrier per step.
// Block b owns rows [b * rows_per_block, (b + 1) * rows_per_block) and keeps them in shared
// memory as T; each warp computes rows with a butterfly reduction.
struct RnnParams {
  int n;               // units
  int steps;           // steps to run
  int rows_per_block;  // rows of W per block (grid * rows_per_block >= n)
  const float* w;      // [n, n] row-major
  float* h;            // [2, n] h_{t-1} in slot t & 1 (slot 0 holds h_0 on entry)
  float* out;          // [steps, n] h_t
  int* positives;      // [steps] count of h_t > 0 (atomic_add)
};

TBPTT_HD constexpr size_t rnn_shared_w_offset(int n) { return (static_cast<size_t>(n) * 4 + 15) / 16 * 16; }

template <typename T>
TBPTT_HD constexpr size_t rnn_shared_bytes(int n, int rows_per_block) {
  return rnn_shared_w_offset(n) + static_cast<size_t>(rows_per_block) * n * sizeof(T);
}

template <typename T, int kFault>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(256, 1) rnn_kernel(const RnnParams p) {
  const unsigned tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const unsigned warp = tid / simt::kWarpSize, warps = threads / simt::kWarpSize;
  const unsigned lane = simt::lane_id();
  const int row0 = static_cast<int>(simt::block_idx().x) * p.rows_per_block;
  simt::SharedArray<float> h_prev = simt::shared_array<float>(0, p.n, "h_prev");
  simt::SharedArray<T> w_rows =
      simt::shared_array<T>(rnn_shared_w_offset(p.n), p.rows_per_block * p.n, "w_rows");
  for (int i = static_cast<int>(tid); i < p.rows_per_block * p.n; i += static_cast<int>(threads)) {
    const int row = row0 + i / p.n;
    if (kFault == kUninitialisedRead && i == 0) continue;
    w_rows[i] = tbptt::convert<T>(row < p.n ? p.w[row * p.n + i % p.n] : 0.0f);
  }
  if (kFault == kEarlyExit && tid == threads - 1) return;
  for (int t = 0; t < p.steps; ++t) {
    const float* h_in = p.h + (t & 1) * p.n;
    float* h_out = p.h + ((t + 1) & 1) * p.n;
    const int loaded = kFault == kSharedOverrun ? p.n + 1 : p.n;
    for (int i = static_cast<int>(tid); i < loaded; i += static_cast<int>(threads)) {
      h_prev[i] = i < p.n ? h_in[i] : 0.0f;
    }
    if (kFault == kDeadlock && t == 0 && tid == 0) (void)simt::shfl(simt::kFullMask, 0.0f, 1);
    if (kFault == kDivergentBarrier && tid == 0) {
      simt::sync_block();
    } else if (kFault != kNoBlockBarrier) {
      simt::sync_block();
    }
    for (int r = static_cast<int>(warp); r < p.rows_per_block; r += static_cast<int>(warps)) {
      if (kFault == kIncompleteMask && lane == 31) return;
      float acc = 0.0f;
      for (int k = static_cast<int>(lane); k < p.n; k += simt::kWarpSize) {
        acc += tbptt::convert<float>(static_cast<T>(w_rows[r * p.n + k])) * h_prev[k];
      }
      for (int offset = simt::kWarpSize / 2; offset > 0; offset /= 2) {
        acc += simt::shfl_xor(simt::kFullMask, acc, offset);
      }
      const int row = row0 + r;
      if (lane == 0 && row < p.n) {
        const float value = std::tanh(acc);
        h_out[row] = value;
        p.out[t * p.n + row] = value;
        if (kFault == kGlobalOverrun && row == p.n - 1 && t == p.steps - 1) p.out[p.steps * p.n] = value;
        if (value > 0.0f) simt::atomic_add(p.positives + t, 1);
      }
    }
    if (kFault == kNoGridBarrier) {
      simt::sync_block();
    } else {
      simt::sync_grid();
    }
  }
}

// A block-wide sum: each block reduces its slice of `x` through shared memory and a warp
// shuffle tree, and the split grid barrier lets block 0 add the partial sums of all blocks.
struct SumParams {
  int n;
  const float* x;   // [n]
  float* partial;   // [blocks]
  float* total;     // [1]
  unsigned* votes;  // [blocks] ballot of the first warp (x > 0), a check of simt::ballot
};

template <int kFault>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(256, 1) sum_kernel(const SumParams p) {
  const unsigned tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const unsigned warp = tid / simt::kWarpSize, lane = simt::lane_id();
  const unsigned block = simt::block_idx().x, blocks = simt::grid_dim().x;
  simt::SharedArray<float> warp_sums = simt::shared_array<float>(0, threads / simt::kWarpSize, "warp_sums");
  float acc = 0.0f;
  for (int i = static_cast<int>(block * threads + tid); i < p.n; i += static_cast<int>(blocks * threads)) {
    acc += p.x[i];
  }
  const unsigned vote = simt::ballot(simt::kFullMask, acc > 0.0f);
  for (int offset = simt::kWarpSize / 2; offset > 0; offset /= 2) {
    acc += simt::shfl_down(simt::kFullMask, acc, offset);
  }
  if (lane == 0) warp_sums[warp] = acc;
  if (tid == 0) p.votes[block] = vote;
  simt::sync_block();
  if (warp == 0) {
    float v = lane < threads / simt::kWarpSize ? static_cast<float>(warp_sums[lane]) : 0.0f;
    for (int offset = simt::kWarpSize / 2; offset > 0; offset /= 2) v += simt::shfl_xor(simt::kFullMask, v, offset);
    if (lane == 0) p.partial[block] = v;
  }
  const simt::GridToken token = simt::grid_arrive();
  // (work that needs no other block's data could go here)
  simt::grid_wait(token);
  if (block == 0 && tid == 0) {
    float total = 0.0f;
    for (unsigned b = 0; b < blocks; ++b) total += simt::load_acquire(p.partial + b);
    p.total[0] = total;
  }
}

// y = a x + y over n elements, grid-stride: the shape of the stepwise pointwise kernels.
template <typename T>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(256, 1) axpy_kernel(int n, float a, const T* x, T* y) {
  const int stride = static_cast<int>(simt::grid_dim().x * simt::block_dim().x);
  for (int i = static_cast<int>(simt::block_idx().x * simt::block_dim().x + simt::thread_idx().x);
       i < n; i += stride) {
    y[i] = tbptt::convert<T>(a * tbptt::convert<float>(x[i]) + tbptt::convert<float>(y[i]));
  }
}

// One m16n8k16 tensor-core product per warp: D = A B + C with A [16,16], B [16,8] (row-major
// in global memory, 16-bit), C, D [16,8] fp32, fragments loaded with simt::mma_layout.
template <typename T>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(32, 1) mma_kernel(const T* a, const T* b, const float* c, float* d) {
  const int lane = static_cast<int>(simt::lane_id());
  auto pack = [](T low, T high) { return simt::pack_pair(low, high); };
  uint32_t a_frag[4], b_frag[2];
  float c_frag[4], d_frag[4];
  for (int r = 0; r < 4; ++r) {
    const int i = 2 * r;
    a_frag[r] = pack(a[simt::mma_layout::a_row(lane, i) * 16 + simt::mma_layout::a_col(lane, i)],
                     a[simt::mma_layout::a_row(lane, i + 1) * 16 + simt::mma_layout::a_col(lane, i + 1)]);
  }
  for (int r = 0; r < 2; ++r) {
    const int i = 2 * r;
    b_frag[r] = pack(b[simt::mma_layout::b_row(lane, i) * 8 + simt::mma_layout::b_col(lane, i)],
                     b[simt::mma_layout::b_row(lane, i + 1) * 8 + simt::mma_layout::b_col(lane, i + 1)]);
  }
  for (int i = 0; i < 4; ++i) c_frag[i] = c[simt::mma_layout::c_row(lane, i) * 8 + simt::mma_layout::c_col(lane, i)];
  simt::mma_m16n8k16<T>(d_frag, a_frag, b_frag, c_frag);
  for (int i = 0; i < 4; ++i) d[simt::mma_layout::c_row(lane, i) * 8 + simt::mma_layout::c_col(lane, i)] = d_frag[i];
}

// Barrier-cost kernel: `rounds` barriers of one kind.
enum class Round : int { kSyncBlock, kSyncGrid, kShuffle };
template <Round kRound>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(256, 1) barrier_kernel(int rounds, float* sink) {
  float v = static_cast<float>(simt::thread_idx().x);
  for (int r = 0; r < rounds; ++r) {
    if (kRound == Round::kSyncBlock) simt::sync_block();
    if (kRound == Round::kSyncGrid) simt::sync_grid();
    if (kRound == Round::kShuffle) v += simt::shfl_xor(simt::kFullMask, v, 1);
  }
  if (simt::thread_idx().x == 0) sink[simt::block_idx().x] = v;
}

}  // namespace SIMT_NS
}  // namespace selftest
