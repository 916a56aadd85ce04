// CPU backend: the GEMMs of gemm_cpu.cpp and this pointwise pass, a cell's element functions
// (cells.h: LSTM, GRU) over all B*H elements of one step; float32 and bfloat16 LSTM layers take
// the fused path of fused_cpu.cpp where it is available.
// Rows are split across threads with at::parallel_for; within a row the units are contiguous
// and the loop is written for the compiler to vectorise (this file is built with fast math so
// that exp/tanh use glibc's vector variants), once per x86 level. float32 and float64; bfloat16
// and float16 storage with float32 gate math and cell state (acc_t = float, as on CUDA).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "backends.h"
#include "tbptt/cells.h"

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

// Rows [row_begin, row_end) of one step through `element` (a cell's element of cells.h);
// within a row the units are contiguous. always_inline, as the wrappers below: with many
// instantiations in this file GCC's unit-growth limit would leave some loops out of line, built
// for the baseline ISA with scalar exp/tanh (slower, and other roundings than the clones').
template <typename Params, void (*element)(const Params&, int64_t, int64_t)>
__attribute__((always_inline)) inline void element_rows(const Params& p, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
#pragma omp simd
    for (int64_t unit = 0; unit < p.hidden; ++unit) element(p, row, unit);
  }
}

// Units [unit_begin, unit_end) of every row: the fused layer's (fused_cpu.cpp) share of a step.
template <typename Params, void (*element)(const Params&, int64_t, int64_t)>
__attribute__((always_inline)) inline void element_units(const Params& p, int64_t unit_begin, int64_t unit_end) {
  for (int64_t row = 0; row < p.batch; ++row) {
#pragma omp simd
    for (int64_t unit = unit_begin; unit < unit_end; ++unit) element(p, row, unit);
  }
}

// A cell's forward element over rows (or units), and its backward element with the ring holding
// activated gates or pre-activations (history "states"): chosen once per call, not per element.
// always_inline: the loop must be compiled inside each target_clones clone (an out-of-line copy
// would be built for the baseline ISA only).
template <typename Cell, typename T, typename acc_t>
__attribute__((always_inline)) inline void forward_rows_of(const ForwardStepParams& p, int64_t b, int64_t e) {
  element_rows<ForwardStepParams, Cell::template forward<T, acc_t>>(p, b, e);
}
template <typename Cell, typename T, typename acc_t>
__attribute__((always_inline)) inline void forward_units_of(const ForwardStepParams& p, int64_t b, int64_t e) {
  element_units<ForwardStepParams, Cell::template forward<T, acc_t>>(p, b, e);
}
template <typename Cell, typename T, typename acc_t>
__attribute__((always_inline)) inline void backward_rows_of(const BackwardStepParams& p, int64_t b, int64_t e) {
  if (p.gates_are_pre_activations) {
    element_rows<BackwardStepParams, Cell::template backward<T, acc_t, true>>(p, b, e);
  } else {
    element_rows<BackwardStepParams, Cell::template backward<T, acc_t, false>>(p, b, e);
  }
}
template <typename Cell, typename T, typename acc_t>
__attribute__((always_inline)) inline void backward_units_of(const BackwardStepParams& p, int64_t b, int64_t e) {
  if (p.gates_are_pre_activations) {
    element_units<BackwardStepParams, Cell::template backward<T, acc_t, true>>(p, b, e);
  } else {
    element_units<BackwardStepParams, Cell::template backward<T, acc_t, false>>(p, b, e);
  }
}

// One clone set per (cell, dtype) and direction: target_clones takes plain functions, not
// templates. lstmp's forward pass over [B, H] has its own element; its backward over [B, H] is
// the LSTM's; its passes over [B, P] are ProjectionPass's.
#define TBPTT_CPU_FORWARD_ROWS(cell_name, Cell, type_name, T, acc_t)                           \
  TBPTT_CPU_CLONES void forward_rows_##cell_name##_##type_name(const ForwardStepParams& p,    \
                                                               int64_t b, int64_t e) {        \
    forward_rows_of<Cell, T, acc_t>(p, b, e);                                                  \
  }
#define TBPTT_CPU_BACKWARD_ROWS(cell_name, Cell, type_name, T, acc_t)                          \
  TBPTT_CPU_CLONES void backward_rows_##cell_name##_##type_name(const BackwardStepParams& p,  \
                                                                int64_t b, int64_t e) {       \
    backward_rows_of<Cell, T, acc_t>(p, b, e);                                                 \
  }
#define TBPTT_CPU_ROW_LOOPS(cell_name, Cell, type_name, T, acc_t) \
  TBPTT_CPU_FORWARD_ROWS(cell_name, Cell, type_name, T, acc_t)    \
  TBPTT_CPU_BACKWARD_ROWS(cell_name, Cell, type_name, T, acc_t)
TBPTT_CPU_ROW_LOOPS(lstm, LstmCell, float, float, float)
TBPTT_CPU_ROW_LOOPS(lstm, LstmCell, double, double, double)
TBPTT_CPU_ROW_LOOPS(lstm, LstmCell, bf16, Bf16, float)
TBPTT_CPU_ROW_LOOPS(lstm, LstmCell, half, Fp16, float)
TBPTT_CPU_ROW_LOOPS(gru, GruCell, float, float, float)
TBPTT_CPU_ROW_LOOPS(gru, GruCell, double, double, double)
TBPTT_CPU_ROW_LOOPS(gru, GruCell, bf16, Bf16, float)
TBPTT_CPU_ROW_LOOPS(gru, GruCell, half, Fp16, float)
TBPTT_CPU_ROW_LOOPS(projection, ProjectionPass, float, float, float)
TBPTT_CPU_ROW_LOOPS(projection, ProjectionPass, double, double, double)
TBPTT_CPU_ROW_LOOPS(projection, ProjectionPass, bf16, Bf16, float)
TBPTT_CPU_ROW_LOOPS(projection, ProjectionPass, half, Fp16, float)
TBPTT_CPU_FORWARD_ROWS(lstmp, LstmpCell, float, float, float)
TBPTT_CPU_FORWARD_ROWS(lstmp, LstmpCell, double, double, double)
TBPTT_CPU_FORWARD_ROWS(lstmp, LstmpCell, bf16, Bf16, float)
TBPTT_CPU_FORWARD_ROWS(lstmp, LstmpCell, half, Fp16, float)
#undef TBPTT_CPU_ROW_LOOPS
#undef TBPTT_CPU_BACKWARD_ROWS
#undef TBPTT_CPU_FORWARD_ROWS

}  // namespace

// The fused layers' share of a step (fused_cpu.cpp): the element of p.cell_kind (uniform over
// the call): the LSTM's, the GRU's, or the LSTM with projections' two passes (forward: pass 1
// over [B, H] and the projection over [B, P]; backward: the projection, then the LSTM's).
template <typename T, typename acc_t>
__attribute__((always_inline)) inline void forward_units_of_cell(const ForwardStepParams& p,
                                                                 int64_t b, int64_t e) {
  switch (p.cell_kind) {
    case CellKind::kGru: forward_units_of<GruCell, T, acc_t>(p, b, e); break;
    case CellKind::kLstmp: forward_units_of<LstmpCell, T, acc_t>(p, b, e); break;
    case CellKind::kProjection: forward_units_of<ProjectionPass, T, acc_t>(p, b, e); break;
    default: forward_units_of<LstmCell, T, acc_t>(p, b, e);
  }
}
template <typename T, typename acc_t>
__attribute__((always_inline)) inline void backward_units_of_cell(const BackwardStepParams& p,
                                                                  int64_t b, int64_t e) {
  switch (p.cell_kind) {
    case CellKind::kGru: backward_units_of<GruCell, T, acc_t>(p, b, e); break;
    case CellKind::kProjection: backward_units_of<ProjectionPass, T, acc_t>(p, b, e); break;
    default: backward_units_of<LstmCell, T, acc_t>(p, b, e);
  }
}

TBPTT_CPU_CLONES void forward_units_float(const ForwardStepParams& p, int64_t unit_begin,
                                          int64_t unit_end) {
  forward_units_of_cell<float, float>(p, unit_begin, unit_end);
}
TBPTT_CPU_CLONES void backward_units_float(const BackwardStepParams& p, int64_t unit_begin,
                                           int64_t unit_end) {
  backward_units_of_cell<float, float>(p, unit_begin, unit_end);
}

TBPTT_CPU_CLONES void forward_units_bf16(const ForwardStepParams& p, int64_t unit_begin,
                                         int64_t unit_end) {
  forward_units_of_cell<Bf16, float>(p, unit_begin, unit_end);
}
TBPTT_CPU_CLONES void backward_units_bf16(const BackwardStepParams& p, int64_t unit_begin,
                                          int64_t unit_end) {
  backward_units_of_cell<Bf16, float>(p, unit_begin, unit_end);
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

// The row loop of a (cell, storage type): rows[kind] holds one per storage type, float32,
// float64, bfloat16, float16 in that order, or nullptrs where the kind has no such pass.
template <typename Rows>
Rows rows_for(CellKind cell, at::ScalarType storage, const Rows (&rows)[4][4]) {
  const int kind = static_cast<int>(cell);
  TORCH_CHECK(kind >= 0 && kind < 4 && rows[kind][0] != nullptr,
              "tbptt: the CPU backend has no such pass for cell ", kind);
  switch (storage) {
    case at::kFloat: return rows[kind][0];
    case at::kDouble: return rows[kind][1];
    case at::kBFloat16: return rows[kind][2];
    case at::kHalf: return rows[kind][3];
    default:
      TORCH_CHECK(false, "tbptt: the CPU backend supports float32, float64, bfloat16 and float16, got ",
                  storage);
  }
}

using ForwardRows = void (*)(const ForwardStepParams&, int64_t, int64_t);
using BackwardRows = void (*)(const BackwardStepParams&, int64_t, int64_t);

// Indexed by CellKind: lstm, lstmp, gru, projection.
void forward_step(const ForwardStepParams& params, at::ScalarType storage) {
  static const ForwardRows rows[4][4] = {
      {forward_rows_lstm_float, forward_rows_lstm_double, forward_rows_lstm_bf16, forward_rows_lstm_half},
      {forward_rows_lstmp_float, forward_rows_lstmp_double, forward_rows_lstmp_bf16, forward_rows_lstmp_half},
      {forward_rows_gru_float, forward_rows_gru_double, forward_rows_gru_bf16, forward_rows_gru_half},
      {forward_rows_projection_float, forward_rows_projection_double, forward_rows_projection_bf16,
       forward_rows_projection_half}};
  for_each_row_block(params, rows_for(params.cell_kind, storage, rows));
}

void backward_step(const BackwardStepParams& params, at::ScalarType storage) {
  static const BackwardRows rows[4][4] = {
      {backward_rows_lstm_float, backward_rows_lstm_double, backward_rows_lstm_bf16, backward_rows_lstm_half},
      {nullptr, nullptr, nullptr, nullptr},  // lstmp's backward over [B, H] runs as kLstm
      {backward_rows_gru_float, backward_rows_gru_double, backward_rows_gru_bf16, backward_rows_gru_half},
      {backward_rows_projection_float, backward_rows_projection_double, backward_rows_projection_bf16,
       backward_rows_projection_half}};
  for_each_row_block(params, rows_for(params.cell_kind, storage, rows));
}

}  // namespace

const DeviceBackend& backend() {
  static const DeviceBackend cpu_backend{{forward_step, backward_step}, gemm(), fused_layers()};
  return cpu_backend;
}

}  // namespace cpu
}  // namespace tbptt
