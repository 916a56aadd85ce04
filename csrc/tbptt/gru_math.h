// Pointwise math of one GRU step, forward and backward: torch.nn.GRU's cell, the one truth for
// the CPU loop and the CUDA kernels (and so the emulator). Framework-free, like lstm_math.h,
// whose helpers (sigmoid, select, zero_where, convert) it uses. Step flags as window.h.
//
// Gate order is nn.GRU's: r (reset), z (update), n (new). The driver supplies
//   gx = x_t @ W_ih^T + b_ih + (b_hr, b_hz, 0)     [B, 3H]
//   gh = h_{t-1} @ W_hh^T                          [B, 3H]     and b_hn [H] apart, because r
// multiplies the whole recurrent part of n, its bias included:
//   r = sigmoid(gx_r + gh_r)    z = sigmoid(gx_z + gh_z)    hn = gh_n + b_hn
//   n = tanh(gx_n + r * hn)     h_t = (1 - z) * n + z * h_{t-1}
// A step records 4 values per unit, [B, 4H]: r, z, n, hn (hn cannot be recovered from n and r
// without dividing by r). History "states" rebuilds the pre-activations in the same layout:
// (gx_r + gh_r, gx_z + gh_z, gx_n, hn).
//
// Backward, given dh = dL/dh_t (from the output, and carried from step t+1 times carry_scale):
//   dA_n  = dh * (1 - z) * (1 - n^2)            (x side of n: the row of W_in, b_in)
//   dA_hn = dA_n * r                            (recurrent side of n: W_hn, b_hn)
//   dA_z  = dh * (h_{t-1} - n) * z * (1 - z)
//   dA_r  = dA_n * hn * r * (1 - r)
// grad_gates [B, 4H] = (dA_r, dA_z, dA_hn, dA_n): its first 3H of a row are dGh (for dW_hh,
// db_hh and dL/dh_{t-1} = dGh @ W_hh), and (dA_r, dA_z, dA_n) is dGx (dW_ih, db_ih, dx).
// The direct term dh * z reaches h_{t-1} past W_hh: it travels in grad_hidden_held, the
// per-unit carry that the LSTM uses for held rows only. The GRU has no cell state.
#pragma once

#include <cstdint>

#include "lstm_math.h"  // sigmoid, select, zero_where; window.h, numeric.h

namespace tbptt {

// Element (row, unit) of one GRU forward step (see ForwardStepParams; p.cell is not used).
template <typename T, typename acc_t>
TBPTT_HD void gru_forward_step_element(const ForwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t H = p.hidden;
  const int64_t e = row * H + unit;
  const int64_t product0 = row * 3 * H + unit;  // r's offset in the [B, 3H] rows of gx, gh
  const int64_t record0 = row * 4 * H + unit;   // r's offset in the [B, 4H] record row
  const bool hold = p.flags[row] & kFlagHold;
  const bool reset_next = p.flags_next[row] & kFlagReset;
  const T* gx = static_cast<const T*>(p.gates_x);
  const T* gh = static_cast<const T*>(p.gates_h);
  auto x_part = [&](int k) { return convert<acc_t>(gx[product0 + k * H]); };
  auto h_part = [&](int k) { return convert<acc_t>(gh[product0 + k * H]); };
  const acc_t r = sigmoid(x_part(0) + h_part(0));
  const acc_t z = sigmoid(x_part(1) + h_part(1));
  const acc_t hn = h_part(2) + static_cast<const acc_t*>(p.bias_hn)[unit];
  const acc_t n = std::tanh(x_part(2) + r * hn);
  const acc_t h_prev = convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]);
  const acc_t h = select(hold, h_prev, (acc_t(1) - z) * n + z * h_prev);
  static_cast<T*>(p.out)[e] = convert<T>(zero_where(hold, h));
  T* record = static_cast<T*>(p.ring_gates);
  record[record0] = convert<T>(zero_where(hold, r));
  record[record0 + H] = convert<T>(zero_where(hold, z));
  record[record0 + 2 * H] = convert<T>(zero_where(hold, n));
  record[record0 + 3 * H] = convert<T>(zero_where(hold, hn));
  static_cast<T*>(p.ring_hidden)[e] = convert<T>(h);
  static_cast<T*>(p.hidden_next)[e] = convert<T>(zero_where(reset_next, h));
}

// Element (row, unit) of one GRU backward step (see BackwardStepParams; p.cell, cell_prev and
// grad_cell are not used). kPreActivations as lstm_math.h's backward_step_element.
template <typename T, typename acc_t, bool kPreActivations = false>
TBPTT_HD void gru_backward_step_element(const BackwardStepParams& p, int64_t row, int64_t unit) {
  const int64_t H = p.hidden;
  const int64_t e = row * H + unit;
  const int64_t record0 = row * 4 * H + unit;
  const bool reset = p.flags[row] & kFlagReset;
  const bool hold = p.flags[row] & kFlagHold;
  const bool cut = p.flags[row] & kFlagCut;  // no gradient reaches it: contributes exactly 0
  const bool cut_after = p.flags_after[row] & kFlagReset;
  acc_t r, z, n, hn;
  if (kPreActivations) {
    const acc_t* pre = static_cast<const acc_t*>(p.gates);
    r = sigmoid(pre[record0]);
    z = sigmoid(pre[record0 + H]);
    hn = pre[record0 + 3 * H];
    n = std::tanh(pre[record0 + 2 * H] + r * hn);
  } else {
    const T* stored = static_cast<const T*>(p.gates);
    r = convert<acc_t>(stored[record0]);
    z = convert<acc_t>(stored[record0 + H]);
    n = convert<acc_t>(stored[record0 + 2 * H]);
    hn = convert<acc_t>(stored[record0 + 3 * H]);
  }
  const acc_t h_prev = zero_where(reset | cut, convert<acc_t>(static_cast<const T*>(p.hidden_prev)[e]));
  static_cast<T*>(p.hidden_prev_seen)[e] = convert<T>(h_prev);

  acc_t* carry = static_cast<acc_t*>(p.grad_hidden_held);
  const acc_t scale = acc_t(p.carry_scale);  // exactly 1 without ARTBP: no change
  const acc_t dh = convert<acc_t>(static_cast<const T*>(p.grad_out)[e]) +
                   zero_where(cut_after,
                              (convert<acc_t>(static_cast<const T*>(p.grad_hidden_next)[e]) + carry[e]) * scale);
  const acc_t d_n = dh * (acc_t(1) - z) * (acc_t(1) - n * n);
  const acc_t d_hn = d_n * r;
  const acc_t d_z = dh * (h_prev - n) * z * (acc_t(1) - z);
  const acc_t d_r = d_n * hn * r * (acc_t(1) - r);
  T* grad_gates = static_cast<T*>(p.grad_gates);
  const bool no_gates = hold | cut;
  grad_gates[record0] = convert<T>(zero_where(no_gates, d_r));
  grad_gates[record0 + H] = convert<T>(zero_where(no_gates, d_z));
  grad_gates[record0 + 2 * H] = convert<T>(zero_where(no_gates, d_hn));
  grad_gates[record0 + 3 * H] = convert<T>(zero_where(no_gates, d_n));
  // Past W_hh to h_{t-1}: dh * z, or all of dh where the step held the row (the identity).
  carry[e] = zero_where(cut, select(hold, dh, dh * z));
}

}  // namespace tbptt
