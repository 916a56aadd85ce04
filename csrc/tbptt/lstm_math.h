// Pointwise math of one LSTM step, forward and backward: the one truth that the CPU loop and
// the CUDA kernels (and so the emulator) all call. Framework-free: plain C++ that nvcc also
// compiles for the device. Step flags (reset, hold) as window.h defines them.
//
// Gate order is torch.nn.LSTM's: i (input), f (forget), g (cell candidate), o (output).
// Pre-activations come from  x_t @ W_ih^T + b_ih + h_{t-1} @ W_hh^T + b_hh.
//
//   i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
//
// Backward, given dh = dL/dh_t (from the output and the next step) and dc_next = dL/dc_t
// carried from step t+1 (both carried ones times the step's carry_scale: ARTBP's compensation):
//   dc   = dc_next + dh * o * (1 - tanh(c_t)^2)
//   da_o = dh * tanh(c_t) * o * (1 - o)
//   da_i = dc * g * i * (1 - i)
//   da_g = dc * i * (1 - g^2)
//   da_f = dc * c_{t-1} * f * (1 - f)
//   dc_{t-1} = dc * f
// The gradient reaching h_{t-1} is (da_i, da_f, da_g, da_o) @ W_hh, a GEMM done outside.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "window.h"  // TBPTT_HD, convert, the step params structs

namespace tbptt {

template <typename acc_t>
TBPTT_HD acc_t sigmoid(acc_t a) {
  return acc_t(1) / (acc_t(1) + std::exp(-a));
}

// Activated gates of one (row, unit) of one step, in gate order.
template <typename acc_t>
struct Gates {
  acc_t i, f, g, o;
};

// Applies the nonlinearities to the four pre-activations of one (row, unit).
template <typename acc_t>
TBPTT_HD Gates<acc_t> activate_gates(acc_t a_i, acc_t a_f, acc_t a_g, acc_t a_o) {
  return Gates<acc_t>{sigmoid(a_i), sigmoid(a_f), std::tanh(a_g), sigmoid(a_o)};
}

// c_t from the activated gates and the cell entering the step (reset already applied).
template <typename acc_t>
TBPTT_HD acc_t cell_update(const Gates<acc_t>& gate, acc_t c_prev) {
  return gate.f * c_prev + gate.i * gate.g;
}

// h_t from the output gate and c_t.
template <typename acc_t>
TBPTT_HD acc_t hidden_from_cell(const Gates<acc_t>& gate, acc_t c) {
  return gate.o * std::tanh(c);
}

// `condition ? if_true : if_false` on the bits: a select, never a product, so that NaN or Inf
// in the value not chosen (a state before a reset, a gradient from beyond one) cannot survive,
// and branch-free: a plain `?:` lets the compiler move a load into a branch, and then the CPU
// loop no longer vectorises. float and double.
template <typename acc_t>
TBPTT_HD acc_t select(bool condition, acc_t if_true, acc_t if_false) {
  using Bits = typename std::conditional<sizeof(acc_t) == 4, uint32_t, uint64_t>::type;
  static_assert(sizeof(acc_t) == sizeof(Bits), "float or double");
  Bits a, b;
  memcpy(&a, &if_true, sizeof a);
  memcpy(&b, &if_false, sizeof b);
  const Bits take_true = Bits(0) - Bits(condition);  // all ones or all zeros
  const Bits bits = (a & take_true) | (b & ~take_true);
  acc_t result;
  memcpy(&result, &bits, sizeof result);
  return result;
}

// Zero where `drop` is set, else `value` (see select).
template <typename acc_t>
TBPTT_HD acc_t zero_where(bool drop, acc_t value) {
  return select(drop, acc_t(0), value);
}

// Gradients of one (row, unit) of one step with respect to the gate pre-activations and
// to the cell entering the step.
template <typename acc_t>
struct GateGrads {
  acc_t d_i, d_f, d_g, d_o;  // dL/da for the pre-activations, gate order
  acc_t d_c_prev;            // dL/dc_{t-1} (before any reset mask of step t is applied)
};

// dh: total gradient reaching h_t; dc_next: gradient reaching c_t from step t+1;
// c: c_t; c_prev: the cell the step saw (reset applied).
template <typename acc_t>
TBPTT_HD GateGrads<acc_t> backward_gates(const Gates<acc_t>& gate, acc_t c, acc_t c_prev,
                                         acc_t dh, acc_t dc_next) {
  const acc_t tanh_c = std::tanh(c);
  const acc_t dc = dc_next + dh * gate.o * (acc_t(1) - tanh_c * tanh_c);
  GateGrads<acc_t> grad;
  grad.d_o = dh * tanh_c * gate.o * (acc_t(1) - gate.o);
  grad.d_i = dc * gate.g * gate.i * (acc_t(1) - gate.i);
  grad.d_g = dc * gate.i * (acc_t(1) - gate.g * gate.g);
  grad.d_f = dc * c_prev * gate.f * (acc_t(1) - gate.f);
  grad.d_c_prev = dc * gate.f;
  return grad;
}

}  // namespace tbptt

namespace tbptt {

// Element (row, unit) of one forward step (see ForwardStepParams).
template <typename T, typename acc_t>
TBPTT_HD void forward_step_element(const ForwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t H = p.hidden;
  const int64_t e = row * H + unit;
  const int64_t gate0 = row * 4 * H + unit;  // offset of gate i in the [B, G] row
  const bool hold = p.flags[row] & kFlagHold;
  const bool reset_next = p.flags_next[row] & kFlagReset;
  const T* gx = static_cast<const T*>(p.gates_x);
  const T* gh = static_cast<const T*>(p.gates_h);
  auto pre = [&](int k) {
    return convert<acc_t>(gx[gate0 + k * H]) + convert<acc_t>(gh[gate0 + k * H]);
  };
  const Gates<acc_t> gate = activate_gates<acc_t>(pre(0), pre(1), pre(2), pre(3));
  acc_t* cell = static_cast<acc_t*>(p.cell);
  T* hidden = static_cast<T*>(p.hidden_next);
  const acc_t c_prev = cell[e];
  const acc_t h_prev = convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]);
  const acc_t c = select(hold, c_prev, cell_update(gate, c_prev));
  const acc_t h = select(hold, h_prev, hidden_from_cell(gate, c));
  static_cast<T*>(p.out)[e] = convert<T>(zero_where(hold, h));
  T* ring_gates = static_cast<T*>(p.ring_gates);
  ring_gates[gate0] = convert<T>(zero_where(hold, gate.i));
  ring_gates[gate0 + H] = convert<T>(zero_where(hold, gate.f));
  ring_gates[gate0 + 2 * H] = convert<T>(zero_where(hold, gate.g));
  ring_gates[gate0 + 3 * H] = convert<T>(zero_where(hold, gate.o));
  static_cast<T*>(p.ring_cell)[e] = convert<T>(c);
  static_cast<T*>(p.ring_hidden)[e] = convert<T>(h);
  cell[e] = zero_where(reset_next, c);
  hidden[e] = convert<T>(zero_where(reset_next, h));
}

// Element (row, unit) of one backward step (see BackwardStepParams). kPreActivations must be
// p.gates_are_pre_activations: callers pick the instantiation once per launch (a branch inside
// the CPU loop would stop it vectorising).
template <typename T, typename acc_t, bool kPreActivations = false>
TBPTT_HD void backward_step_element(const BackwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t H = p.hidden;
  const int64_t e = row * H + unit;
  const int64_t gate0 = row * 4 * H + unit;
  const bool reset = p.flags[row] & kFlagReset;
  const bool hold = p.flags[row] & kFlagHold;
  const bool cut = p.flags[row] & kFlagCut;  // no gradient reaches it: contributes exactly 0
  const bool cut_after = p.flags_after[row] & kFlagReset;
  Gates<acc_t> gate;
  if (kPreActivations) {
    const acc_t* pre = static_cast<const acc_t*>(p.gates);
    gate = activate_gates<acc_t>(pre[gate0], pre[gate0 + H], pre[gate0 + 2 * H], pre[gate0 + 3 * H]);
  } else {
    const T* stored = static_cast<const T*>(p.gates);
    gate = Gates<acc_t>{convert<acc_t>(stored[gate0]), convert<acc_t>(stored[gate0 + H]),
                        convert<acc_t>(stored[gate0 + 2 * H]), convert<acc_t>(stored[gate0 + 3 * H])};
  }
  const acc_t c_prev = zero_where(reset, convert<acc_t>(static_cast<const T*>(p.cell_prev)[e]));
  const acc_t h_prev = zero_where(reset | cut, convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]));
  static_cast<T*>(p.hidden_prev_seen)[e] = convert<T>(h_prev);

  acc_t* grad_cell = static_cast<acc_t*>(p.grad_cell);
  acc_t* held = static_cast<acc_t*>(p.grad_hidden_held);
  const acc_t scale = acc_t(p.carry_scale);  // exactly 1 without ARTBP: no change
  const acc_t dc_next = zero_where(cut_after, grad_cell[e] * scale);
  const acc_t dh = convert<acc_t>(static_cast<const T*>(p.grad_out)[e]) +
                   zero_where(cut_after,
                              (convert<acc_t>(static_cast<const T*>(p.grad_hidden_next)[e]) + held[e]) * scale);
  const GateGrads<acc_t> grad =
      backward_gates(gate, convert<acc_t>(static_cast<const T*>(p.cell)[e]), c_prev, dh, dc_next);
  T* grad_gates = static_cast<T*>(p.grad_gates);
  const bool no_gates = hold | cut;
  grad_gates[gate0] = convert<T>(zero_where(no_gates, grad.d_i));
  grad_gates[gate0 + H] = convert<T>(zero_where(no_gates, grad.d_f));
  grad_gates[gate0 + 2 * H] = convert<T>(zero_where(no_gates, grad.d_g));
  grad_gates[gate0 + 3 * H] = convert<T>(zero_where(no_gates, grad.d_o));
  // A held step is the identity on (h, c): its gradients pass to step t-1 unchanged.
  grad_cell[e] = zero_where(cut, select(hold, dc_next, grad.d_c_prev));
  held[e] = zero_where(cut | !hold, dh);
}

}  // namespace tbptt
