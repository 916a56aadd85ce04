// The recurrent cells as a compile-time parameter: one traits struct per cell, read by the
// element loops (csrc/cpu/lstm_cpu.cpp), the stepwise kernels (csrc/cuda/lstm_kernels.cuh) and
// the driver's sizes, so that these are written once for every cell. Framework-free.
//
//   cell   kGates  state            a step records ([B, 4H] T)   elements
//   lstm   4       h [B,H], c [B,H]  i, f, g, o (activated)        lstm_math.h
//   gru    3       h [B,H]           r, z, n, hn                   gru_math.h
//   lstmp  4       h [B,P], c [B,H]  i, f, g, o; h of size P       lstmp_math.h (two passes a
//                                                                  step: LstmpCell over [B, H],
//                                                                  ProjectionPass over [B, P];
//                                                                  backward: ProjectionPass,
//                                                                  then LstmCell's element)
#pragma once

#include "gru_math.h"
#include "lstm_math.h"
#include "lstmp_math.h"

namespace tbptt {

struct LstmCell {
  static constexpr CellKind kKind = CellKind::kLstm;
  static constexpr int kGates = 4;         // gate blocks in W_ih / W_hh rows: G = kGates * H
  static constexpr bool kHasCell = true;   // state (h, c)
  template <typename T, typename acc_t>
  static TBPTT_HD void forward(const ForwardStepParams& p, int64_t row, int64_t unit) {
    forward_step_element<T, acc_t>(p, row, unit);
  }
  template <typename T, typename acc_t, bool kPreActivations>
  static TBPTT_HD void backward(const BackwardStepParams& p, int64_t row, int64_t unit) {
    backward_step_element<T, acc_t, kPreActivations>(p, row, unit);
  }
};

struct GruCell {
  static constexpr CellKind kKind = CellKind::kGru;
  static constexpr int kGates = 3;
  static constexpr bool kHasCell = false;  // state h only: cell tensors are [.., B, 0]
  template <typename T, typename acc_t>
  static TBPTT_HD void forward(const ForwardStepParams& p, int64_t row, int64_t unit) {
    gru_forward_step_element<T, acc_t>(p, row, unit);
  }
  template <typename T, typename acc_t, bool kPreActivations>
  static TBPTT_HD void backward(const BackwardStepParams& p, int64_t row, int64_t unit) {
    gru_backward_step_element<T, acc_t, kPreActivations>(p, row, unit);
  }
};

// The LSTM with projections: pass 1 of a forward step over [B, H] (the backward uses the
// LSTM's element over [B, H]: the driver launches it as kLstm).
struct LstmpCell {
  static constexpr CellKind kKind = CellKind::kLstmp;
  static constexpr int kGates = 4;
  static constexpr bool kHasCell = true;
  template <typename T, typename acc_t>
  static TBPTT_HD void forward(const ForwardStepParams& p, int64_t row, int64_t unit) {
    lstmp_forward_step_element<T, acc_t>(p, row, unit);
  }
};

// The LSTM with projections' passes over [B, P]: h from m W_hr^T (forward), dh_eff (backward).
struct ProjectionPass {
  static constexpr CellKind kKind = CellKind::kProjection;
  template <typename T, typename acc_t>
  static TBPTT_HD void forward(const ForwardStepParams& p, int64_t row, int64_t unit) {
    projection_forward_element<T, acc_t>(p, row, unit);
  }
  template <typename T, typename acc_t, bool kPreActivations>
  static TBPTT_HD void backward(const BackwardStepParams& p, int64_t row, int64_t unit) {
    projection_backward_element<T, acc_t, kPreActivations>(p, row, unit);
  }
};

// Values a step records per unit (the gates ring's and grad_gates' width is this times H), the
// same for every cell so that the ring's layout is one.
constexpr int kRecordsPerUnit = 4;

// Gate blocks of a cell's products (G = gates_of(cell) * H); 0 for a kind no build serves.
inline constexpr int gates_of(CellKind cell) {
  return cell == CellKind::kGru ? GruCell::kGates : 4;
}

// Calls f with the traits of the element a forward (with_forward_cell) or backward
// (with_backward_cell) pass of `cell` runs, or otherwise() for a kind without such a pass: the
// one switch from a runtime CellKind to an instantiation.
template <typename F, typename Otherwise>
auto with_forward_cell(CellKind cell, F&& f, Otherwise&& otherwise) {
  switch (cell) {
    case CellKind::kLstm: return f(LstmCell{});
    case CellKind::kGru: return f(GruCell{});
    case CellKind::kLstmp: return f(LstmpCell{});
    case CellKind::kProjection: return f(ProjectionPass{});
    default: return otherwise();
  }
}
template <typename F, typename Otherwise>
auto with_backward_cell(CellKind cell, F&& f, Otherwise&& otherwise) {
  switch (cell) {
    case CellKind::kLstm: return f(LstmCell{});
    case CellKind::kGru: return f(GruCell{});
    case CellKind::kProjection: return f(ProjectionPass{});
    default: return otherwise();  // lstmp's backward over [B, H] is kLstm's
  }
}

}  // namespace tbptt
