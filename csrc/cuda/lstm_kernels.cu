// CUDA pointwise step kernels: one thread per (row, unit) element, applying lstm_math.h's
// element functions. Storage float32, float64, float16, bfloat16; accumulation and the cell
// state in float32 (float64 for float64).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "lstm_kernels.h"
#include "tbptt/lstm_math.h"

namespace tbptt {

// PyTorch compiles CUDA sources with the implicit half conversions disabled: convert
// explicitly (see convert<> in lstm_math.h).
template <>
TBPTT_HD float convert<float, __half>(__half value) {
  return __half2float(value);
}
template <>
TBPTT_HD __half convert<__half, float>(float value) {
  return __float2half(value);
}
template <>
TBPTT_HD float convert<float, __nv_bfloat16>(__nv_bfloat16 value) {
  return __bfloat162float(value);
}
template <>
TBPTT_HD __nv_bfloat16 convert<__nv_bfloat16, float>(float value) {
  return __float2bfloat16(value);
}

namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_step_kernel(const ForwardStepParams params) {
  const int64_t n = params.batch * params.hidden;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    forward_step_element<T, acc_t>(params, e / params.hidden, e % params.hidden);
  }
}

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_step_kernel(const BackwardStepParams params) {
  const int64_t n = params.batch * params.hidden;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    backward_step_element<T, acc_t>(params, e / params.hidden, e % params.hidden);
  }
}

int blocks_for(int64_t elements) {
  const int64_t blocks = (elements + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

}  // namespace

cudaError_t launch_forward_step(const ForwardStepParams& params, StorageType storage,
                                cudaStream_t stream) {
  const int blocks = blocks_for(params.batch * params.hidden);
  switch (storage) {
    case StorageType::kFloat32:
      forward_step_kernel<float, float><<<blocks, kThreads, 0, stream>>>(params);
      break;
    case StorageType::kFloat64:
      forward_step_kernel<double, double><<<blocks, kThreads, 0, stream>>>(params);
      break;
    case StorageType::kFloat16:
      forward_step_kernel<__half, float><<<blocks, kThreads, 0, stream>>>(params);
      break;
    case StorageType::kBFloat16:
      forward_step_kernel<__nv_bfloat16, float><<<blocks, kThreads, 0, stream>>>(params);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_backward_step(const BackwardStepParams& params, StorageType storage,
                                 cudaStream_t stream) {
  const int blocks = blocks_for(params.batch * params.hidden);
  switch (storage) {
    case StorageType::kFloat32:
      backward_step_kernel<float, float><<<blocks, kThreads, 0, stream>>>(params);
      break;
    case StorageType::kFloat64:
      backward_step_kernel<double, double><<<blocks, kThreads, 0, stream>>>(params);
      break;
    case StorageType::kFloat16:
      backward_step_kernel<__half, float><<<blocks, kThreads, 0, stream>>>(params);
      break;
    case StorageType::kBFloat16:
      backward_step_kernel<__nv_bfloat16, float><<<blocks, kThreads, 0, stream>>>(params);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tbptt
