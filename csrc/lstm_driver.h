// The chunk forward and the window backward, written once for every device: GEMMs through
// ATen (which runs them on the tensors' device and, on CUDA, on the current stream), the
// per-step pointwise pass through a backend (CPU loop or CUDA kernel) given by the caller.
// The op registry (ops.cpp) binds each device's backend; nothing here branches on device.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "tbptt/window.h"

namespace tbptt {

// One device's pointwise pass: applies forward_step_element / backward_step_element of
// lstm_math.h to all B*H elements of one step, on the tensors' device.
struct PointwiseBackend {
  void (*forward_step)(const ForwardStepParams& params, at::ScalarType storage);
  void (*backward_step)(const BackwardStepParams& params, at::ScalarType storage);
};

// Ring tensors of one stream (shapes in window.h). `record` false: none is touched and they
// may be empty.
struct RingTensors {
  at::Tensor gates, cell, hidden, input, reset, mask;
};

// Forward over one chunk of L steps, all layers.
//   x [L, B, I]; h0 [layers, B, H] (T); c0 [layers, B, H] (acc); reset [L, B] u8 or undefined;
//   weights: per layer w_ih [G, I_l], w_hh [G, H] (+ b_ih [G], b_hh [G] when has_bias);
//   dropout_masks [layers-1, L, B, H] or undefined; first_slot: ring slot of the chunk's first
//   step. Returns y [L, B, H], h_n [layers, B, H] (T), c_n [layers, B, H] (acc).
std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_forward(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& reset, at::TensorList weights,
    bool has_bias, const c10::optional<at::Tensor>& dropout_masks, const RingTensors& ring,
    int64_t first_slot, bool record);

// Backward over the window of the last `window_len` recorded steps, ending at ring slot
// `last_slot`, all layers. The chunk is the last L = grad_out.size(0) steps of the window.
//   grad_out [L, B, H]; grad_h_n, grad_c_n [layers, B, H];
//   h_before [layers, B, H] (T), c_before [layers, B, H] (acc): the state entering the window
//   (before the window's first reset is applied).
// Returns grad_x [L, B, I], grad_h_before [layers, B, H] (T), grad_c_before [layers, B, H] (acc),
// and the weight gradients in the order of `weights`.
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> window_backward(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_h_n,
    const at::Tensor& grad_c_n, at::TensorList weights, bool has_bias, const RingTensors& ring,
    const at::Tensor& h_before, const at::Tensor& c_before, int64_t window_len,
    int64_t last_slot);

}  // namespace tbptt
