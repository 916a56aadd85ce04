// Launchers of the CUDA kernels (csrc/cuda/lstm_launch.h, built by nvcc). Pure CUDA runtime
// API: no ATen here.
#pragma once

#include <cuda_runtime.h>

#include "tbptt/window.h"

namespace tbptt {
namespace cuda {

// One forward step of one layer over B*H elements, on `stream`. Returns the launch status.
cudaError_t launch_forward_step(const ForwardStepParams& params, StorageType storage,
                                cudaStream_t stream);

// One backward step of one layer over B*H elements, on `stream`. Returns the launch status.
cudaError_t launch_backward_step(const BackwardStepParams& params, StorageType storage,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace tbptt
