// Pointwise math of one LSTM step, forward and backward: the one truth that the CPU loop and
// the CUDA kernels both call. Framework-free: plain C++ that nvcc also compiles for the device.
//
// Gate order is torch.nn.LSTM's: i (input), f (forget), g (cell candidate), o (output).
// Pre-activations come from  x_t @ W_ih^T + b_ih + h_{t-1} @ W_hh^T + b_hh.
//
//   i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
//
// Backward, given dh = dL/dh_t (from the output and the next step) and dc_next = dL/dc_t
// carried from step t+1:
//   dc   = dc_next + dh * o * (1 - tanh(c_t)^2)
//   da_o = dh * tanh(c_t) * o * (1 - o)
//   da_i = dc * g * i * (1 - i)
//   da_g = dc * i * (1 - g^2)
//   da_f = dc * c_{t-1} * f * (1 - f)
//   dc_{t-1} = dc * f
// The gradient reaching h_{t-1} is (da_i, da_f, da_g, da_o) @ W_hh, a GEMM done outside.
#pragma once

#include <cmath>

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

// A reset zeroes the state entering a step for that row. The flag (0 or 1, one byte per row)
// becomes a factor that multiplies the state, as reference.py does: arithmetic rather than a
// select, so the compiler keeps every load unconditional and the CPU loop vectorises.
template <typename acc_t>
TBPTT_HD acc_t keep_factor(uint8_t reset_flag) {
  return acc_t(1 - int(reset_flag));
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
  const T* gx = static_cast<const T*>(p.gates_x);
  const T* gh = static_cast<const T*>(p.gates_h);
  auto pre = [&](int k) {
    return convert<acc_t>(gx[gate0 + k * H]) + convert<acc_t>(gh[gate0 + k * H]);
  };
  const Gates<acc_t> gate = activate_gates<acc_t>(pre(0), pre(1), pre(2), pre(3));
  acc_t* cell = static_cast<acc_t*>(p.cell);
  const acc_t c = cell_update(gate, cell[e]);
  const acc_t h = hidden_from_cell(gate, c);
  static_cast<T*>(p.out)[e] = convert<T>(h);
  T* ring_gates = static_cast<T*>(p.ring_gates);
  ring_gates[gate0] = convert<T>(gate.i);
  ring_gates[gate0 + H] = convert<T>(gate.f);
  ring_gates[gate0 + 2 * H] = convert<T>(gate.g);
  ring_gates[gate0 + 3 * H] = convert<T>(gate.o);
  static_cast<acc_t*>(p.ring_cell)[e] = c;
  static_cast<T*>(p.ring_hidden)[e] = convert<T>(h);
  const acc_t keep_next = keep_factor<acc_t>(p.reset_next[row]);
  cell[e] = c * keep_next;
  static_cast<T*>(p.hidden_next)[e] = convert<T>(h * keep_next);
}

// Element (row, unit) of one backward step (see BackwardStepParams).
template <typename T, typename acc_t>
TBPTT_HD void backward_step_element(const BackwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t H = p.hidden;
  const int64_t e = row * H + unit;
  const int64_t gate0 = row * 4 * H + unit;
  const T* stored = static_cast<const T*>(p.gates);
  const Gates<acc_t> gate{convert<acc_t>(stored[gate0]), convert<acc_t>(stored[gate0 + H]),
                          convert<acc_t>(stored[gate0 + 2 * H]),
                          convert<acc_t>(stored[gate0 + 3 * H])};
  const acc_t keep = keep_factor<acc_t>(p.reset[row]);
  const acc_t keep_after = keep_factor<acc_t>(p.reset_after[row]);
  const acc_t c_prev = static_cast<const acc_t*>(p.cell_prev)[e] * keep;
  const acc_t h_prev = convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]);
  static_cast<T*>(p.hidden_prev_seen)[e] = convert<T>(h_prev * keep);

  acc_t* grad_cell = static_cast<acc_t*>(p.grad_cell);
  const acc_t dc_next = grad_cell[e] * keep_after;
  const acc_t dh = convert<acc_t>(static_cast<const T*>(p.grad_out)[e]) +
                   convert<acc_t>(static_cast<const T*>(p.grad_hidden_next)[e]) * keep_after;
  const GateGrads<acc_t> grad =
      backward_gates(gate, static_cast<const acc_t*>(p.cell)[e], c_prev, dh, dc_next);
  T* grad_gates = static_cast<T*>(p.grad_gates);
  grad_gates[gate0] = convert<T>(grad.d_i);
  grad_gates[gate0 + H] = convert<T>(grad.d_f);
  grad_gates[gate0 + 2 * H] = convert<T>(grad.d_g);
  grad_gates[gate0 + 3 * H] = convert<T>(grad.d_o);
  grad_cell[e] = grad.d_c_prev;
}

}  // namespace tbptt
