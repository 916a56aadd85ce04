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

// Launches kernel_of(Cell{}, T{}, acc_t{}) over the B * hidden elements of params, for the cell
// that with_cell (with_forward_cell or with_backward_cell) picks from params.cell_kind and for
// `storage`. Returns the launch status (invalid value for a cell without such elements).
template <typename Params, typename WithCell, typename KernelOf>
simt::Status launch_pointwise(const simt::KernelSpec& spec, WithCell with_cell, KernelOf kernel_of,
                              const Params& params, StorageType storage, simt::Stream stream) {
  const simt::Dim3 grid = pointwise_grid(params.batch * params.hidden);
  return with_cell(
      params.cell_kind,
      [&](auto cell) {
        return with_storage_type(storage, [&](auto storage_tag, auto acc_tag) {
          return simt::launch(spec, kernel_of(cell, storage_tag, acc_tag), grid,
                              simt::Dim3{kPointwiseThreads, 1, 1}, 0, stream, params);
        });
      },
      [] { return simt::Status(1); });  // cudaErrorInvalidValue
}

// One forward step of one layer over B*H elements, params.cell's element.
simt::Status launch_forward_step(const ForwardStepParams& params, StorageType storage,
                                 simt::Stream stream) {
  return launch_pointwise(
      kForwardStep,
      [](CellKind kind, auto&& f, auto&& otherwise) { return with_forward_cell(kind, f, otherwise); },
      [](auto cell, auto storage_tag, auto acc_tag) {
        return forward_step_kernel<decltype(cell), decltype(storage_tag), decltype(acc_tag)>;
      },
      params, storage, stream);
}

// One backward step of one layer over B*H elements, params.cell's element.
simt::Status launch_backward_step(const BackwardStepParams& params, StorageType storage,
                                  simt::Stream stream) {
  return launch_pointwise(
      kBackwardStep,
      [](CellKind kind, auto&& f, auto&& otherwise) { return with_backward_cell(kind, f, otherwise); },
      [](auto cell, auto storage_tag, auto acc_tag) {
        return backward_step_kernel<decltype(cell), decltype(storage_tag), decltype(acc_tag)>;
      },
      params, storage, stream);
}

}  // namespace SIMT_NS
}  // namespace tbptt
