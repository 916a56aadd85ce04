// CUDA glue: binds the pointwise kernels and ATen's cuBLAS GEMMs into the shared driver as the
// CUDA backend, launching on PyTorch's current stream and checking every launch.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include "backends.h"
#include "lstm_kernels.h"

namespace tbptt {
namespace cuda {
namespace {

void forward_step(const ForwardStepParams& params, at::ScalarType storage) {
  C10_CUDA_CHECK(launch_forward_step(params, storage_type_of(storage),
                                     c10::cuda::getCurrentCUDAStream()));
}

void backward_step(const BackwardStepParams& params, at::ScalarType storage) {
  C10_CUDA_CHECK(launch_backward_step(params, storage_type_of(storage),
                                      c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

const DeviceBackend& backend() {
  // GEMMs: ATen's, i.e. cuBLAS on the current stream (TF32 as torch.backends allows).
  static const DeviceBackend cuda_backend{{forward_step, backward_step}, aten_gemm::gemm()};
  return cuda_backend;
}

}  // namespace cuda
}  // namespace tbptt
