// Launch glue of the kernels in lstm_kernels.cuh: grid sizes and the choice of instantiation
// by cell and storage type. Written once and compiled into both builds, tbptt::cuda (nvcc, by
// lstm_kernels.cu) and tbptt::emu (g++, by csrc/emulation/lstm_kernels_emu.cpp), so that the
// emulated run exercises this code too. No ATen. Each build includes it in exactly one
// translation unit (the launchers are ordinary functions, declared for the ATen glue in
// csrc/cuda/lstm_kernels.h and csrc/emulation/emulated_kernels.h).
#pragma once

#include <algorithm>

#include "cuda/lstm_kernels.cuh"
#include "cuda/storage_dispatch.h"

namespace tbptt {
namespace SIMT_NS {

// Registers per thread the kernels are compiled for at most (ptxas -v, sm_90: 31-66); the
// emulator's occupancy uses them and scripts/check_ptxas.py holds the nvcc build to them.
constexpr simt::KernelSpec kForwardStep{"forward_step", 64};
constexpr simt::KernelSpec kBackwardStep{"backward_step", 80};

inline simt::Dim3 pointwise_grid(int64_t elements) {
  const int64_t blocks = (elements + kPointwiseThreads - 1) / kPointwiseThreads;
  return simt::Dim3{static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535)),
                    1, 1};
}

// One forward step of one layer over B*H elements, params.cell's element. Returns the launch
// status (invalid value for a cell without elements).
simt::Status launch_forward_step(const ForwardStepParams& params, StorageType storage,
                                 simt::Stream stream) {
  const simt::Dim3 grid = pointwise_grid(params.batch * params.hidden);
  return with_forward_cell(
      params.cell_kind,
      [&](auto cell) {
        using Cell = decltype(cell);
        return with_storage_type(storage, [&](auto storage_tag, auto acc_tag) {
          using T = decltype(storage_tag);
          using acc_t = decltype(acc_tag);
          return simt::launch(kForwardStep, forward_step_kernel<Cell, T, acc_t>, grid,
                              simt::Dim3{kPointwiseThreads, 1, 1}, 0, stream, params);
        });
      },
      [] { return simt::Status(1); });  // cudaErrorInvalidValue
}

// One backward step of one layer over B*H elements. Returns the launch status.
simt::Status launch_backward_step(const BackwardStepParams& params, StorageType storage,
                                  simt::Stream stream) {
  const simt::Dim3 grid = pointwise_grid(params.batch * params.hidden);
  return with_backward_cell(
      params.cell_kind,
      [&](auto cell) {
        using Cell = decltype(cell);
        return with_storage_type(storage, [&](auto storage_tag, auto acc_tag) {
          using T = decltype(storage_tag);
          using acc_t = decltype(acc_tag);
          return simt::launch(kBackwardStep, backward_step_kernel<Cell, T, acc_t>, grid,
                              simt::Dim3{kPointwiseThreads, 1, 1}, 0, stream, params);
        });
      },
      [] { return simt::Status(1); });
}

}  // namespace SIMT_NS
}  // namespace tbptt
