// GEMMs through ATen: cuBLAS on the current stream for CUDA tensors, the CPU BLAS (MKL) for CPU
// tensors. No copies: transposes are passed to the BLAS as strides.
#include "backends.h"

namespace tbptt {
namespace aten_gemm {
namespace {

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  return bias.defined() ? at::addmm(bias, x, w.t()) : at::mm(x, w.t());
}

std::vector<at::Tensor> weight_grads(const at::Tensor& grad, at::TensorList inputs) {
  std::vector<at::Tensor> result;
  for (const at::Tensor& input : inputs) result.push_back(grad.t().mm(input));
  return result;
}

at::Tensor prepare_step_weight(const at::Tensor& w, int64_t /*rows*/) { return w; }

void step_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& prepared) {
  at::Tensor result = out;  // a handle to the same storage: mm_out takes a non-const reference
  at::mm_out(result, x, prepared.t());
}

}  // namespace

const GemmBackend& gemm() {
  static const GemmBackend aten{linear, weight_grads, prepare_step_weight, step_linear};
  return aten;
}

}  // namespace aten_gemm
}  // namespace tbptt
