// Pointwise step kernels of the stepwise path: one thread per (row, unit) element, applying
// a cell's element functions (Cell: cells.h's LstmCell or GruCell). Device code only, written against the device layer
// (tbptt/simt.h): nvcc compiles it for the GPU, g++ for the SIMT emulator, each into its own
// namespace (tbptt::cuda, tbptt::emu). Storage float32, float64, float16, bfloat16;
// accumulation and the cell state in float32 (float64 for float64).
#pragma once

#include "tbptt/cells.h"
#include "tbptt/simt.h"

namespace tbptt {
namespace SIMT_NS {

constexpr int kPointwiseThreads = 256;

// params: see ForwardStepParams (window.h); a grid-stride loop over the B*H elements.
template <typename Cell, typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPointwiseThreads, 1)
    forward_step_kernel(const ForwardStepParams params) {
  const int64_t n = params.batch * params.hidden;
  const int64_t stride = int64_t(simt::grid_dim().x) * simt::block_dim().x;
  for (int64_t e = simt::block_idx().x * int64_t(simt::block_dim().x) + simt::thread_idx().x;
       e < n; e += stride) {
    Cell::template forward<T, acc_t>(params, e / params.hidden, e % params.hidden);
  }
}

// params: see BackwardStepParams (window.h).
template <typename Cell, typename T, typename acc_t, bool kPreActivations>
SIMT_DEVICE void backward_step_elements(const BackwardStepParams& params) {
  const int64_t n = params.batch * params.hidden;
  const int64_t stride = int64_t(simt::grid_dim().x) * simt::block_dim().x;
  for (int64_t e = simt::block_idx().x * int64_t(simt::block_dim().x) + simt::thread_idx().x;
       e < n; e += stride) {
    Cell::template backward<T, acc_t, kPreActivations>(params, e / params.hidden, e % params.hidden);
  }
}

template <typename Cell, typename T, typename acc_t>
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kPointwiseThreads, 1)
    backward_step_kernel(const BackwardStepParams params) {
  if (params.gates_are_pre_activations) {  // uniform over the launch
    backward_step_elements<Cell, T, acc_t, true>(params);
  } else {
    backward_step_elements<Cell, T, acc_t, false>(params);
  }
}

}  // namespace SIMT_NS
}  // namespace tbptt
