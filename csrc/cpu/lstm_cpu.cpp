// CPU backend: the GEMMs of gemm_cpu.cpp and this pointwise pass, lstm_math.h's element
// functions over all B*H elements of one step; float32 layers take the fused path of
// fused_cpu.cpp where it is available.
// Rows are split across threads with at::parallel_for; within a row the units are contiguous
// and the loop is written for the compiler to vectorise (this file is built with fast math so
// that exp/tanh use glibc's vector variants), once per x86 level. float32 and float64; bfloat16
// and float16 storage with float32 gate math and cell state (acc_t = float, as on CUDA).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "backends.h"
#include "tbptt/lstm_math.h"

namespace tbptt {
namespace cpu {
namespace {

// Elements per task: a fork-join costs microseconds, so small steps stay on one thread.
constexpr int64_t kGrainElements = 16384;

// The 16-bit storage types of the element loops. c10::BFloat16 / c10::Half would do, but their
// namespace's own convert() makes lstm_math.h's unqualified convert<> calls ambiguous (ADL), and
// these are written for the vectoriser: bfloat16 rounds to nearest even with integer operations
// only (this file is built with fast math, which would drop a float NaN test; a NaN stays a
// NaN), float16 is GCC's _Float16 (F16C conversions in the x86-64-v3/v4 clones). Both have the
// bit layout of torch's tensors.
struct Bf16 {
  uint16_t bits;
  Bf16() = default;
  TBPTT_HD Bf16(float value) {  // NOLINT: implicit, as the storage <-> acc conversion expects
    uint32_t u;
    std::memcpy(&u, &value, sizeof u);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    bits = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
  }
  TBPTT_HD operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &u, sizeof value);
    return value;
  }
};
static_assert(sizeof(Bf16) == 2, "bfloat16 storage is 2 bytes");
using Fp16 = _Float16;

// On x86 with GCC the row loops are compiled three times (AVX-512, AVX2, SSE2) and the loader
// picks the widest the CPU runs, as ATen's CPU_CAPABILITY dispatch does; the wheel's baseline
// is SSE2, and the vector exp/tanh of the AVX-512 copy make the pass 2-2.5x faster.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TBPTT_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TBPTT_CPU_CLONES
#endif

// Rows [row_begin, row_end) of one step through `element` (forward_step_element or
// backward_step_element of lstm_math.h); within a row the units are contiguous.
template <typename Params, void (*element)(const Params&, int64_t, int64_t)>
inline void element_rows(const Params& p, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
#pragma omp simd
    for (int64_t unit = 0; unit < p.hidden; ++unit) element(p, row, unit);
  }
}

// Units [unit_begin, unit_end) of every row: the fused layer's (fused_cpu.cpp) share of a step.
template <typename Params, void (*element)(const Params&, int64_t, int64_t)>
inline void element_units(const Params& p, int64_t unit_begin, int64_t unit_end) {
  for (int64_t row = 0; row < p.batch; ++row) {
#pragma omp simd
    for (int64_t unit = unit_begin; unit < unit_end; ++unit) element(p, row, unit);
  }
}

// The backward element over rows (or units), with the ring holding activated gates or
// pre-activations (history "states"): chosen once per call, not per element. always_inline:
// the loop must be compiled inside each target_clones clone (an out-of-line copy would be
// built for the baseline ISA only).
template <typename T, typename acc_t>
__attribute__((always_inline)) inline void backward_rows_of(const BackwardStepParams& p, int64_t b, int64_t e) {
  if (p.gates_are_pre_activations) {
    element_rows<BackwardStepParams, backward_step_element<T, acc_t, true>>(p, b, e);
  } else {
    element_rows<BackwardStepParams, backward_step_element<T, acc_t, false>>(p, b, e);
  }
}
template <typename T, typename acc_t>
__attribute__((always_inline)) inline void backward_units_of(const BackwardStepParams& p, int64_t b, int64_t e) {
  if (p.gates_are_pre_activations) {
    element_units<BackwardStepParams, backward_step_element<T, acc_t, true>>(p, b, e);
  } else {
    element_units<BackwardStepParams, backward_step_element<T, acc_t, false>>(p, b, e);
  }
}

// One clone set per dtype (target_clones takes plain functions, not templates).
TBPTT_CPU_CLONES void forward_rows_float(const ForwardStepParams& p, int64_t b, int64_t e) {
  element_rows<ForwardStepParams, forward_step_element<float, float>>(p, b, e);
}
TBPTT_CPU_CLONES void forward_rows_double(const ForwardStepParams& p, int64_t b, int64_t e) {
  element_rows<ForwardStepParams, forward_step_element<double, double>>(p, b, e);
}
TBPTT_CPU_CLONES void forward_rows_bf16(const ForwardStepParams& p, int64_t b, int64_t e) {
  element_rows<ForwardStepParams, forward_step_element<Bf16, float>>(p, b, e);
}
TBPTT_CPU_CLONES void forward_rows_half(const ForwardStepParams& p, int64_t b, int64_t e) {
  element_rows<ForwardStepParams, forward_step_element<Fp16, float>>(p, b, e);
}
TBPTT_CPU_CLONES void backward_rows_bf16(const BackwardStepParams& p, int64_t b, int64_t e) {
  backward_rows_of<Bf16, float>(p, b, e);
}
TBPTT_CPU_CLONES void backward_rows_half(const BackwardStepParams& p, int64_t b, int64_t e) {
  backward_rows_of<Fp16, float>(p, b, e);
}
TBPTT_CPU_CLONES void backward_rows_float(const BackwardStepParams& p, int64_t b, int64_t e) {
  backward_rows_of<float, float>(p, b, e);
}
TBPTT_CPU_CLONES void backward_rows_double(const BackwardStepParams& p, int64_t b, int64_t e) {
  backward_rows_of<double, double>(p, b, e);
}

}  // namespace

TBPTT_CPU_CLONES void forward_units_float(const ForwardStepParams& p, int64_t unit_begin,
                                          int64_t unit_end) {
  element_units<ForwardStepParams, forward_step_element<float, float>>(p, unit_begin, unit_end);
}
TBPTT_CPU_CLONES void backward_units_float(const BackwardStepParams& p, int64_t unit_begin,
                                           int64_t unit_end) {
  backward_units_of<float, float>(p, unit_begin, unit_end);
}

TBPTT_CPU_CLONES void forward_units_bf16(const ForwardStepParams& p, int64_t unit_begin,
                                         int64_t unit_end) {
  element_units<ForwardStepParams, forward_step_element<Bf16, float>>(p, unit_begin, unit_end);
}
TBPTT_CPU_CLONES void backward_units_bf16(const BackwardStepParams& p, int64_t unit_begin,
                                          int64_t unit_end) {
  backward_units_of<Bf16, float>(p, unit_begin, unit_end);
}

namespace {

// Splits the rows across threads; `params` is copied into each task so that the compiler
// knows the stores cannot alias it.
template <typename Params>
void for_each_row_block(const Params& shared_params,
                        void (*rows)(const Params&, int64_t, int64_t)) {
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElements / shared_params.hidden);
  at::parallel_for(0, shared_params.batch, grain_rows, [&](int64_t row_begin, int64_t row_end) {
    const Params params = shared_params;
    rows(params, row_begin, row_end);
  });
}

void forward_step(const ForwardStepParams& params, at::ScalarType storage) {
  switch (storage) {
    case at::kFloat: return for_each_row_block(params, forward_rows_float);
    case at::kDouble: return for_each_row_block(params, forward_rows_double);
    case at::kBFloat16: return for_each_row_block(params, forward_rows_bf16);
    case at::kHalf: return for_each_row_block(params, forward_rows_half);
    default:
      TORCH_CHECK(false, "tbptt: the CPU backend supports float32, float64, bfloat16 and float16, got ",
                  storage);
  }
}

void backward_step(const BackwardStepParams& params, at::ScalarType storage) {
  switch (storage) {
    case at::kFloat: return for_each_row_block(params, backward_rows_float);
    case at::kDouble: return for_each_row_block(params, backward_rows_double);
    case at::kBFloat16: return for_each_row_block(params, backward_rows_bf16);
    case at::kHalf: return for_each_row_block(params, backward_rows_half);
    default:
      TORCH_CHECK(false, "tbptt: the CPU backend supports float32, float64, bfloat16 and float16, got ",
                  storage);
  }
}

}  // namespace

const DeviceBackend& backend() {
  static const DeviceBackend cpu_backend{{forward_step, backward_step}, gemm(), fused_layers()};
  return cpu_backend;
}

}  // namespace cpu
}  // namespace tbptt
