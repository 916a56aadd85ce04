// CPU pointwise pass: lstm_math.h's element functions over all B*H elements of one step,
// split across threads with at::parallel_for. float32 and float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "backends.h"
#include "tbptt/lstm_math.h"

namespace tbptt {
namespace cpu {
namespace {

// Elements per task: small enough that B*H of a typical step (e.g. 16 x 256) uses both cores.
constexpr int64_t kGrain = 2048;

void forward_step(const ForwardStepParams& params, at::ScalarType storage) {
  AT_DISPATCH_FLOATING_TYPES(storage, "tbptt_forward_step_cpu", [&] {
    at::parallel_for(0, params.batch * params.hidden, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) forward_step_element<scalar_t, scalar_t>(params, e);
    });
  });
}

void backward_step(const BackwardStepParams& params, at::ScalarType storage) {
  AT_DISPATCH_FLOATING_TYPES(storage, "tbptt_backward_step_cpu", [&] {
    at::parallel_for(0, params.batch * params.hidden, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) backward_step_element<scalar_t, scalar_t>(params, e);
    });
  });
}

}  // namespace

const PointwiseBackend& backend() {
  static const PointwiseBackend cpu_backend{forward_step, backward_step};
  return cpu_backend;
}

}  // namespace cpu
}  // namespace tbptt
