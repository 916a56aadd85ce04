// CPU GEMMs. float32 goes to oneDNN's inner product (mkldnn::_linear_pointwise, the library
// behind nn.LSTM's CPU path): on the x86 machines we measured it runs these shapes 1.5-5x
// faster than MKL sgemm (notes/benchmarks.md). float64, builds of torch without oneDNN, and
// torch.backends.mkldnn.enabled = False take ATen's GEMMs (MKL); set_cpu_gemm("aten") forces
// them too, for comparison.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>

#include <algorithm>

#include <atomic>
#include <optional>
#include <string>

#include "backends.h"

namespace tbptt {
namespace cpu {
namespace {

// mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars,
// str? algorithm) -> Tensor: X [M, K] @ W [N, K]^T + B, W dense or packed by
// mkldnn::_reorder_linear_weight.
using LinearPointwise =
    at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
               c10::string_view, c10::List<std::optional<at::Scalar>>,
               std::optional<c10::string_view>);
using ReorderLinearWeight = at::Tensor(const at::Tensor&, std::optional<int64_t>);

template <typename Signature>
std::optional<c10::TypedOperatorHandle<Signature>> find_op(const char* name) {
  const auto op = c10::Dispatcher::singleton().findOp({name, ""});
  if (!op.has_value() || !op->hasKernelForDispatchKey(c10::DispatchKey::CPU)) return std::nullopt;
  return op->typed<Signature>();
}

const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& onednn_linear_op() {
  static const auto op = find_op<LinearPointwise>("mkldnn::_linear_pointwise");
  return op;
}

const std::optional<c10::TypedOperatorHandle<ReorderLinearWeight>>& onednn_reorder_op() {
  static const auto op = find_op<ReorderLinearWeight>("mkldnn::_reorder_linear_weight");
  return op;
}

std::atomic<bool> prefer_onednn{true};

bool use_onednn(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat && prefer_onednn.load() &&
         at::globalContext().userEnabledMkldnn() && onednn_linear_op().has_value() &&
         onednn_reorder_op().has_value();
}

// One tile (rows [r0, r1), columns [c0, c1) of src [R, C]) of dst [C, R] = src^T. Compiled once
// per x86 level like lstm_cpu.cpp's row loops. The copy is memory-bound: hand-written AVX2 8 x 8
// register blocks were no faster in a standalone test (one thread, [2048, 1024]: 1.97 ms
// against 2.01 ms; slower on smaller shapes), so there are no intrinsics here.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void transpose_tile(const float* src, float* dst, int64_t R, int64_t C, int64_t r0, int64_t r1,
                    int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t r = r0; r < r1; ++r) dst[c * R + r] = src[r * C + c];
  }
}

// Elements a transpose task moves at least: small operands (tests, tiny layers) stay on one
// thread instead of paying a fork.
constexpr int64_t kTransposeGrainElements = 32768;

// A dense copy of m^T for a matrix m [R, C] (any strides): [C, R]; no copy where m is itself a
// transposed view of a dense matrix. A dense float32 m is transposed in 32 x 32 tiles, the
// threads taking bands of C: ATen's strided copy walks one side a column at a time, 5-8x slower
// at the window sizes here (e.g. [2048, 512] at H = 128, 64 steps, B = 32).
at::Tensor transposed(const at::Tensor& m) {
  if (m.scalar_type() != at::kFloat || !m.is_contiguous() || m.dim() != 2) {
    return m.t().contiguous();
  }
  RECORD_FUNCTION("tbptt::transpose", std::vector<c10::IValue>());  // a row in torch.profiler
  constexpr int64_t kTile = 32;
  const int64_t R = m.size(0), C = m.size(1);
  at::Tensor out = at::empty({C, R}, m.options());
  const float* src = m.data_ptr<float>();  // [R, C]
  float* dst = out.data_ptr<float>();      // [C, R]
  const int64_t bands = (C + kTile - 1) / kTile;
  const int64_t band_elements = kTile * std::max<int64_t>(R, 1);
  const int64_t grain = std::max<int64_t>(1, kTransposeGrainElements / band_elements);
  at::parallel_for(0, bands, grain, [&](int64_t first, int64_t last) {
    for (int64_t band = first; band < last; ++band) {
      const int64_t c0 = band * kTile, c1 = std::min(C, c0 + kTile);
      for (int64_t r0 = 0; r0 < R; r0 += kTile) {
        transpose_tile(src, dst, R, C, r0, std::min(R, r0 + kTile), c0, c1);
      }
    }
  });
  return out;
}

// x [M, K] @ w [N, K]^T (+ bias [N]) through oneDNN; w dense or packed.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const std::optional<at::Tensor> maybe_bias =
      bias.defined() ? std::optional<at::Tensor>(bias.contiguous()) : std::nullopt;
  return onednn_linear_op()->call(x.contiguous(), w.is_mkldnn() ? w : w.contiguous(),
                                  maybe_bias, "none", c10::List<std::optional<at::Scalar>>(),
                                  std::nullopt);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (!use_onednn(x)) return aten_gemm::gemm().linear(x, w, bias);
  return onednn_linear(x, w, bias);
}

std::vector<at::Tensor> weight_grads(const at::Tensor& grad, at::TensorList inputs) {
  if (!use_onednn(grad)) return aten_gemm::gemm().weight_grads(grad, inputs);
  // grad^T [N, M] @ (input^T [K, M])^T: oneDNN wants both operands dense, hence the copies,
  // grad's once for all inputs.
  const at::Tensor grad_t = transposed(grad);
  std::vector<at::Tensor> result;
  for (const at::Tensor& input : inputs) {
    result.push_back(onednn_linear(grad_t, transposed(input), at::Tensor()));
  }
  return result;
}

// Per-step products: below this many weight elements a oneDNN call costs more than it saves
// (H = 128: equal times), so small weights stay with ATen.
constexpr int64_t kMinStepWeightElements = 128 * 1024;

// oneDNN's inner product is slow where few rows meet a weight with many more outputs than
// inputs (the forward's [B, H] @ [H, 4H]: 2-3x slower than MKL at B = 16, H = 1024). There the
// product is computed transposed, out^T [N, rows] = w [N, K] @ x^T, with the weight as the
// tall operand, which is fast. Otherwise the weight is packed once for oneDNN.
enum class StepForm { kAten, kPacked, kTransposed };

StepForm step_form_of(const at::Tensor& w) {
  if (!use_onednn(w) || w.numel() < kMinStepWeightElements) return StepForm::kAten;
  return w.size(0) > w.size(1) ? StepForm::kTransposed : StepForm::kPacked;
}

at::Tensor prepare_step_weight(const at::Tensor& w, int64_t rows) {
  switch (step_form_of(w)) {
    case StepForm::kAten: return aten_gemm::gemm().prepare_step_weight(w, rows);
    case StepForm::kTransposed: return w.contiguous();
    case StepForm::kPacked: break;
  }
  return (*onednn_reorder_op()).call(w.contiguous(), rows);
}

// `prepared` tells the form: packed by oneDNN, dense and tall (transposed form; only float32
// reaches here), or anything else for ATen.
void step_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& prepared) {
  at::Tensor target = out;  // [rows, N], dense
  if (prepared.is_mkldnn()) {
    target.copy_(onednn_linear(x, prepared, at::Tensor()));
  } else if (step_form_of(prepared) == StepForm::kTransposed && prepared.is_contiguous()) {
    target.copy_(onednn_linear(prepared, x, at::Tensor()).t());  // [N, rows] -> [rows, N]
  } else {
    aten_gemm::gemm().step_linear(out, x, prepared);
  }
}

}  // namespace

const GemmBackend& gemm() {
  static const GemmBackend cpu_gemm{linear, weight_grads, prepare_step_weight, step_linear};
  return cpu_gemm;
}

void set_gemm_library(const std::string& name) {
  TORCH_CHECK(name == "onednn" || name == "aten",
              "tbptt: the CPU GEMM library must be 'onednn' or 'aten', got '", name, "'");
  prefer_onednn.store(name == "onednn");
}

std::string gemm_library(at::ScalarType dtype) {
  return use_onednn(at::empty({0}, at::TensorOptions().dtype(dtype))) ? "onednn" : "aten";
}

}  // namespace cpu
}  // namespace tbptt
