// The chunk forward and the window backward, written once for every device. The GEMMs and the
// per-step pointwise pass go through a backend given by the caller (CPU: oneDNN or ATen GEMMs
// and a vectorised loop; CUDA: ATen GEMMs, i.e. cuBLAS on the current stream, and fused
// kernels). The op registry (ops.cpp) binds each device's backend; nothing here branches on
// device.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "tbptt/persistent.h"
#include "tbptt/window.h"

namespace tbptt {

// One device's pointwise pass: applies forward_step_element / backward_step_element of
// lstm_math.h to all B*H elements of one step, on the tensors' device.
struct PointwiseBackend {
  void (*forward_step)(const ForwardStepParams& params, at::ScalarType storage);
  void (*backward_step)(const BackwardStepParams& params, at::ScalarType storage);
};

// One device's GEMMs. Every product the driver needs is written as x @ w^T with w in
// nn.Linear's [N, K] layout, so that a backend can route each to the library that is fastest
// for it on that device.
struct GemmBackend {
  // [M, N] = x [M, K] @ w [N, K]^T, plus bias [N] when it is defined.
  at::Tensor (*linear)(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);
  // The weight gradients [N, K_i] = grad [M, N]^T @ inputs[i] [M, K_i], one per input.
  std::vector<at::Tensor> (*weight_grads)(const at::Tensor& grad, at::TensorList inputs);
  // A weight w [N, K] that multiplies a [rows, K] operand at every step of a chunk or window,
  // prepared once (packed, copied or kept as is: the backend's choice) for step_linear.
  at::Tensor (*prepare_step_weight)(const at::Tensor& w, int64_t rows);
  // out [rows, N] = x [rows, K] @ w^T, with `prepared` from prepare_step_weight(w, rows).
  void (*step_linear)(const at::Tensor& out, const at::Tensor& x, const at::Tensor& prepared);
};

// One device's fused layers: a layer's whole chunk forward, or a span's whole backward, in one
// call (CUDA and the emulated CUDA: the persistent kernels, one launch; CPU: one OpenMP team). The driver fills the params but `part`
// (the backend's plan) and falls back to its per-step loop where they decline.
struct PersistentBackend {
  // Whether the plan takes the persistent path for a layer of this cell and shape (state_units:
  // O, h's width) over `steps` steps (L forward, W backward); raises where the path is forced
  // persistent and nothing fits.
  bool (*takes)(CellKind cell, int64_t hidden, int64_t state_units, int64_t batch, int64_t steps,
                at::ScalarType storage);
  // Runs it and returns true; false where the launch failed (nothing ran, a warning said so):
  // then the caller runs the stepwise path on the same buffers. w_hh: the tensor behind
  // params.w_hh ([G, O], dense), w_hr the projection's ([P, H], dense; undefined without one),
  // for backends that cache packed copies of them.
  bool (*forward_layer)(PersistentForwardParams& params, at::ScalarType storage,
                        const at::Tensor& w_hh, const at::Tensor& w_hr);
  bool (*backward_layer)(PersistentBackwardParams& params, at::ScalarType storage,
                         const at::Tensor& w_hh, const at::Tensor& w_hr);
};

struct DeviceBackend {
  PointwiseBackend pointwise;
  GemmBackend gemm;
  const PersistentBackend* persistent = nullptr;  // none: the per-step loop only (CPU)
};

// What a stream's history ring keeps (tbptt_cuda TruncatedLSTM(history=...)):
//   kActivations  per step: gates, c, h of every layer (window.h's layout); backward reads them
//   kStates       per step: c and h of every layer (gates empty); backward rebuilds the gates
//                 of the window with two GEMMs per layer
//   kCheckpoints  per step only x (and flags, masks); c and h of every layer every
//                 `checkpoint_every` steps, in `cell`/`hidden` [layers, C, B, H] (the state
//                 entering global step k * s in slot k mod C); backward recomputes the window
//                 one segment at a time from its checkpoint
// All modes keep input [S, B, I], flags [S, B] and dropout masks [layers-1, S, B, H] per step.
enum class HistoryMode : int64_t { kActivations = 0, kStates = 1, kCheckpoints = 2 };

// Ring tensors of one stream (shapes in window.h and above). `record` false: none is touched
// and they may be empty.
struct RingTensors {
  at::Tensor gates, cell, hidden, input, flags, mask;
  HistoryMode mode = HistoryMode::kActivations;
  int64_t checkpoint_every = 1;  // s, for kCheckpoints
  int64_t step_slots() const { return flags.size(0); }  // S: steps the ring holds per-step data of
};

// Forward over one chunk of L steps, all layers, of `cell` (csrc/tbptt/cells.h: LSTM or GRU;
// G = 4H or 3H gate units, C = H or 0 units of cell state: the GRU's cell tensors are
// zero-width, R = 4H values a step records).
//   x [L, B, I]; h0 [layers, B, H] (T); c0 [layers, B, C] (acc); flags [L, B] u8 step flags
//   (window.h: reset, hold) or undefined;
//   weights: per layer w_ih [G, I_l], w_hh [G, H] (+ b_ih [G], b_hh [G] when has_bias), in
//   nn.LSTM's / nn.GRU's gate order;
//   dropout_masks [layers-1, L, B, H] or undefined; first_step: the global step (from the
//   stream's start) of the chunk's first step; it lives in ring slot first_step mod S.
//   Returns y [L, B, H], h_n [layers, B, H] (T), c_n [layers, B, C] (acc).
std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_forward(
    const DeviceBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& flags, at::TensorList weights,
    bool has_bias, const c10::optional<at::Tensor>& dropout_masks, const RingTensors& ring,
    int64_t first_step, bool record, CellKind cell = CellKind::kLstm);

// Backward over the window of the last `window_len` recorded steps, ending at global step
// `last_step`, all layers. The chunk is the last L = grad_out.size(0) steps of the window.
//   grad_out [L, B, H]; grad_h_n [layers, B, H], grad_c_n [layers, B, C];
//   h_init [layers, B, H] (T), c_init [layers, B, C] (acc): the state at the stream's start
//   (global step 0); the state entering the window comes from the ring (or is this one);
//   carry_scales: empty, or one factor per window step (oldest first) on the gradients that
//   step receives from the next (ARTBP's compensation; see tbptt_cuda/artbp.py);
//   grad_input: false where x needs no gradient (its GEMM is skipped, grad_x returned empty).
// Returns grad_x [L, B, I] (or [0]), grad_h_before [layers, B, H] (T), grad_c_before [layers, B, C]
// (acc): the gradient reaching the state entering the window, and the weight gradients in the
// order of `weights`.
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> window_backward(
    const DeviceBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_h_n,
    const at::Tensor& grad_c_n, at::TensorList weights, bool has_bias, const RingTensors& ring,
    const at::Tensor& h_init, const at::Tensor& c_init, int64_t window_len, int64_t last_step,
    c10::ArrayRef<double> carry_scales, bool grad_input = true, CellKind cell = CellKind::kLstm);

}  // namespace tbptt
