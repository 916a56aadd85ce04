// Pointwise math of the LSTM with projections (nn.LSTM's proj_size = P): the one truth for the
// CPU loop and the CUDA kernels, like lstm_math.h whose gate math and helpers it reuses.
// Framework-free. Step flags as window.h.
//
// State h [B, P], c [B, H]; W_ih [4H, I], W_hh [4H, P], W_hr [P, H]. One forward step is two
// pointwise passes around a second product:
//   gates = x W_ih^T + b + h_{t-1} W_hh^T         (i, f, g, o as the LSTM's)
//   c_t = f c_{t-1} + i g      m_t = o tanh(c_t)  [B, H]    (pass 1, over [B, H]: this header)
//   h_t = m_t W_hr^T                              [B, P]    (the driver's product)
//   hold, reset, out, the records of h           [B, P]    (pass 2, over [B, P]: this header)
// Backward per step, newest first:
//   (1) over [B, P]: dh = dL/dh_t (output + carried; carry_scale as the LSTM's), the carry past a
//       held step, dh_eff = dh where the step ran (0 where it held or is cut)
//   (2) dm = dh_eff W_hr                          [B, H]    (the driver's product)
//   (3) the LSTM's backward element with dL/dh = dm and nothing carried in h (lstm_math.h)
//   (4) dL/dh_{t-1} = dG W_hh                     [B, P]    (the driver's product)
// and dW_hr = sum_t dh_eff_t^T m_t, m_t = o_t tanh(c_t) rebuilt from the records.
#pragma once

#include "lstm_math.h"

namespace tbptt {

// Pass 1 of a forward step over [B, H] (p.hidden = H): the LSTM's element, but the hidden
// output m_t goes to p.out [B, H] T and h is left to pass 2 (p.hidden_prev, hidden_next and
// ring_hidden are not used).
template <typename T, typename acc_t>
TBPTT_HD void lstmp_forward_step_element(const ForwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t H = p.hidden;
  const int64_t e = row * H + unit;
  const int64_t gate0 = row * 4 * H + unit;
  const bool hold = p.flags[row] & kFlagHold;
  const bool reset_next = p.flags_next[row] & kFlagReset;
  const T* gx = static_cast<const T*>(p.gates_x);
  const T* gh = static_cast<const T*>(p.gates_h);
  auto pre = [&](int k) {
    return convert<acc_t>(gx[gate0 + k * H]) + convert<acc_t>(gh[gate0 + k * H]);
  };
  const Gates<acc_t> gate = activate_gates<acc_t>(pre(0), pre(1), pre(2), pre(3));
  acc_t* cell = static_cast<acc_t*>(p.cell);
  const acc_t c_prev = cell[e];
  const acc_t c = select(hold, c_prev, cell_update(gate, c_prev));
  static_cast<T*>(p.out)[e] = convert<T>(zero_where(hold, hidden_from_cell(gate, c)));
  T* ring_gates = static_cast<T*>(p.ring_gates);
  ring_gates[gate0] = convert<T>(zero_where(hold, gate.i));
  ring_gates[gate0 + H] = convert<T>(zero_where(hold, gate.f));
  ring_gates[gate0 + 2 * H] = convert<T>(zero_where(hold, gate.g));
  ring_gates[gate0 + 3 * H] = convert<T>(zero_where(hold, gate.o));
  static_cast<T*>(p.ring_cell)[e] = convert<T>(c);
  cell[e] = zero_where(reset_next, c);
}

// Pass 2 of a forward step over [B, P] (p.hidden = P): p.gates_h [B, P] T holds m_t W_hr^T;
// hold, the output, the record of h and the state entering the next step as the LSTM's
// element does them for h.
template <typename T, typename acc_t>
TBPTT_HD void projection_forward_element(const ForwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t e = row * p.hidden + unit;
  const bool hold = p.flags[row] & kFlagHold;
  const bool reset_next = p.flags_next[row] & kFlagReset;
  const acc_t projected = convert<acc_t>(static_cast<const T*>(p.gates_h)[e]);
  const acc_t h_prev = convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]);
  const acc_t h = select(hold, h_prev, projected);
  static_cast<T*>(p.out)[e] = convert<T>(zero_where(hold, h));
  static_cast<T*>(p.ring_hidden)[e] = convert<T>(h);
  static_cast<T*>(p.hidden_next)[e] = convert<T>(zero_where(reset_next, h));
}

// Step (1) of a backward step over [B, P] (p.hidden = P): writes dh_eff into p.grad_gates
// [B, P] T and h_{t-1} as the step saw it into p.hidden_prev_seen; p.grad_hidden_held [B, P]
// acc carries dL/dh past held steps (p.gates, cell, cell_prev and grad_cell are not used).
template <typename T, typename acc_t, bool kPreActivations = false>
TBPTT_HD void projection_backward_element(const BackwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t e = row * p.hidden + unit;
  const bool reset = p.flags[row] & kFlagReset;
  const bool hold = p.flags[row] & kFlagHold;
  const bool cut = p.flags[row] & kFlagCut;
  const bool cut_after = p.flags_after[row] & kFlagReset;
  const acc_t h_prev = zero_where(reset | cut, convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]));
  static_cast<T*>(p.hidden_prev_seen)[e] = convert<T>(h_prev);
  acc_t* held = static_cast<acc_t*>(p.grad_hidden_held);
  const acc_t scale = acc_t(p.carry_scale);
  const acc_t dh = convert<acc_t>(static_cast<const T*>(p.grad_out)[e]) +
                   zero_where(cut_after,
                              (convert<acc_t>(static_cast<const T*>(p.grad_hidden_next)[e]) + held[e]) * scale);
  static_cast<T*>(p.grad_gates)[e] = convert<T>(zero_where(hold | cut, dh));
  held[e] = zero_where(cut | !hold, dh);
}

}  // namespace tbptt
