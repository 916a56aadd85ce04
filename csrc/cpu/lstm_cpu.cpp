// CPU backend: the GEMMs of gemm_cpu.cpp and this pointwise pass: lstm_math.h's element functions over all B*H elements of one step.
// Rows are split across threads with at::parallel_for; within a row the units are contiguous
// and the loop is written for the compiler to vectorise (this file is built with fast math so
// that exp/tanh use glibc's vector variants). float32 and float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "backends.h"
#include "tbptt/lstm_math.h"

namespace tbptt {
namespace cpu {
namespace {

// Elements per task: a fork-join costs microseconds, so small steps stay on one thread.
constexpr int64_t kGrainElements = 16384;

// Calls element(params, row, unit) for every element; `params` is copied into each task so
// that the compiler knows the stores cannot alias it.
template <typename Params, typename Element>
void for_each_element(const Params& shared_params, Element element) {
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElements / shared_params.hidden);
  at::parallel_for(0, shared_params.batch, grain_rows, [&](int64_t row_begin, int64_t row_end) {
    const Params params = shared_params;
    for (int64_t row = row_begin; row < row_end; ++row) {
#pragma omp simd
      for (int64_t unit = 0; unit < params.hidden; ++unit) element(params, row, unit);
    }
  });
}

void forward_step(const ForwardStepParams& params, at::ScalarType storage) {
  AT_DISPATCH_FLOATING_TYPES(storage, "tbptt_forward_step_cpu", [&] {
    for_each_element(params, [](const ForwardStepParams& p, int64_t row, int64_t unit) {
      forward_step_element<scalar_t, scalar_t>(p, row, unit);
    });
  });
}

void backward_step(const BackwardStepParams& params, at::ScalarType storage) {
  AT_DISPATCH_FLOATING_TYPES(storage, "tbptt_backward_step_cpu", [&] {
    for_each_element(params, [](const BackwardStepParams& p, int64_t row, int64_t unit) {
      backward_step_element<scalar_t, scalar_t>(p, row, unit);
    });
  });
}

}  // namespace

const DeviceBackend& backend() {
  static const DeviceBackend cpu_backend{{forward_step, backward_step}, gemm()};
  return cpu_backend;
}

}  // namespace cpu
}  // namespace tbptt
