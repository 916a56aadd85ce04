// CUDA glue: binds the pointwise kernels, the persistent kernels and ATen's cuBLAS GEMMs into
// the shared driver as the CUDA backend, launching on PyTorch's current stream and checking
// every launch.
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>

#include <atomic>
#include <string>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "backends.h"
#include "lstm_kernels.h"
#include "persistent_dispatch.h"

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

int plan(int64_t hidden, int64_t projection, int64_t batch, CellKind cell, StorageType storage,
         PersistentPlan* out) {
  return static_cast<int>(plan_persistent(hidden, projection, batch, cell, storage, out));
}
const char* status_name(int status) { return cudaGetErrorName(static_cast<cudaError_t>(status)); }
int64_t device() { return c10::cuda::current_device(); }
void* stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }
int forward(const PersistentForwardParams& params, StorageType storage, void* on) {
  return static_cast<int>(launch_persistent_forward(params, storage, static_cast<cudaStream_t>(on)));
}
int backward(const PersistentBackwardParams& params, StorageType storage, void* on) {
  return static_cast<int>(launch_persistent_backward(params, storage, static_cast<cudaStream_t>(on)));
}

const PersistentLaunchers& launchers() {
  static const PersistentLaunchers bound{&persistent_plans(), cuda_path, device, stream, forward, backward};
  return bound;
}

}  // namespace

PersistentPlans& persistent_plans() {
  static PersistentPlans plans("CUDA device", plan, status_name);
  return plans;
}

// On a device older than the kernels' oldest architecture (sm_80), raises the error that
// names it, instead of CUDA's "no kernel image is available" at the first launch. The verdict
// for a supported device is cached: one atomic load per op after the first.
void check_device_supported() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int8_t> verdicts[kMaxDevices] = {};  // 0 unknown, 1 supported, -1 not
  const int device = c10::cuda::current_device();
  if (device < kMaxDevices && verdicts[device].load(std::memory_order_relaxed) == 1) return;
  cudaDeviceProp props{};
  C10_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  const std::string message = unsupported_capability_message(props.major * 10 + props.minor, props.name);
  if (device < kMaxDevices) verdicts[device].store(message.empty() ? 1 : -1, std::memory_order_relaxed);
  TORCH_CHECK(message.empty(), message);
}

const DeviceBackend& backend() {
  check_device_supported();
  // GEMMs: ATen's, i.e. cuBLAS on the current stream (TF32 as torch.backends allows).
  static const DeviceBackend cuda_backend{{forward_step, backward_step}, aten_gemm::gemm(),
                                          persistent_backend<launchers>()};
  return cuda_backend;
}

}  // namespace cuda
}  // namespace tbptt
