#include "lstm_driver.h"

#include <c10/util/Exception.h>

namespace tbptt {
namespace {

// Accumulation type (also the cell state's): float for every storage type but double.
at::ScalarType acc_type_of(at::ScalarType storage) {
  return storage == at::kDouble ? at::kDouble : at::kFloat;
}

// Address of ring slot `slot` of `layer` in a ring tensor shaped [layers, S, ...] (or [S, ...]
// when layer < 0). Ring tensors are dense, so this is plain arithmetic.
void* slot_ptr(const at::Tensor& ring, int64_t layer, int64_t slot) {
  const int64_t per_slot = ring.stride(layer < 0 ? 0 : 1);
  const int64_t slots = ring.size(layer < 0 ? 0 : 1);
  const int64_t index = (layer < 0 ? 0 : layer * slots) + slot;
  return static_cast<char*>(ring.data_ptr()) + index * per_slot * ring.element_size();
}

// Row `index` of a dense [N, ...] tensor.
void* row_ptr(const at::Tensor& t, int64_t index) {
  return static_cast<char*>(t.data_ptr()) + index * t.stride(0) * t.element_size();
}

// `length` consecutive steps of a ring [S, ...] starting at `first_slot`, as one tensor
// [length, ...]: a view where the run does not wrap, a copy of two pieces where it does.
at::Tensor window_of(const at::Tensor& ring, int64_t first_slot, int64_t length) {
  SlotRange runs[2];
  const int count = split_at_wrap(first_slot, length, ring.size(0), runs);
  if (count == 1) return ring.narrow(0, runs[0].first_slot, runs[0].length);
  return at::cat({ring.narrow(0, runs[0].first_slot, runs[0].length),
                  ring.narrow(0, runs[1].first_slot, runs[1].length)});
}

// Copies src [length, ...] into the ring [S, ...] from `first_slot` on, wrapping.
void write_window(const at::Tensor& ring, int64_t first_slot, const at::Tensor& src) {
  SlotRange runs[2];
  const int count = split_at_wrap(first_slot, src.size(0), ring.size(0), runs);
  int64_t done = 0;
  for (int r = 0; r < count; ++r) {
    ring.narrow(0, runs[r].first_slot, runs[r].length).copy_(src.narrow(0, done, runs[r].length));
    done += runs[r].length;
  }
}

int64_t weights_per_layer(bool has_bias) { return has_bias ? 4 : 2; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_forward(
    const DeviceBackend& backend, const at::Tensor& x_in, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& flags_in, at::TensorList weights,
    bool has_bias, const c10::optional<at::Tensor>& dropout_masks, const RingTensors& ring,
    int64_t first_slot, bool record) {
  const int64_t per_layer = weights_per_layer(has_bias);
  TORCH_CHECK(x_in.dim() == 3, "tbptt: x must be [L, B, I], got ", x_in.sizes());
  TORCH_CHECK(!weights.empty() && weights.size() % per_layer == 0,
              "tbptt: expected ", per_layer, " weights per layer, got ", weights.size());
  const int64_t layers = static_cast<int64_t>(weights.size()) / per_layer;
  const at::Tensor x = x_in.contiguous();
  const int64_t L = x.size(0), B = x.size(1);
  const int64_t H = weights[1].size(1), G = 4 * H;
  const at::ScalarType storage = x.scalar_type();
  const at::ScalarType acc = acc_type_of(storage);
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({layers, B, H}) && c0.sizes() == h0.sizes(),
              "tbptt: h0/c0 must be [layers, B, H] = [", layers, ", ", B, ", ", H, "]");
  TORCH_CHECK(L >= 1, "tbptt: a chunk needs at least one step");

  at::Tensor flags;  // [L, B] u8 step flags (window.h), or undefined
  if (flags_in.has_value() && flags_in->defined()) {
    flags = flags_in->to(at::kByte).contiguous();
    TORCH_CHECK(flags.sizes() == at::IntArrayRef({L, B}), "tbptt: flags must be [L, B]");
  }
  const bool dropout = dropout_masks.has_value() && dropout_masks->defined();
  if (record) {
    const int64_t slots = ring.gates.size(1);
    TORCH_CHECK(L <= slots, "tbptt: chunk longer than the ring");
    write_window(ring.input, first_slot, x);
    write_window(ring.flags, first_slot,
                 flags.defined() ? flags : at::zeros({L, B}, ring.flags.options()));
  }

  // Where a step has nothing to read or keep: zeros and scratch (see window.h).
  const at::Tensor no_flags = at::zeros({B}, x.options().dtype(at::kByte));
  // The chunk's first step: rows it resets enter from zeros (a select, as in lstm_math.h).
  at::Tensor first_reset;  // [B, 1] bool, or undefined
  if (flags.defined()) first_reset = flags[0].bitwise_and(kFlagReset).to(at::kBool).unsqueeze(1);
  at::Tensor scratch_gates, scratch_cell, scratch_hidden;
  if (!record) {
    scratch_gates = at::empty({B, G}, x.options());
    scratch_cell = at::empty({B, H}, x.options().dtype(acc));
    scratch_hidden = at::empty({B, H}, x.options());
  }

  std::vector<at::Tensor> h_n(layers), c_n(layers);
  at::Tensor layer_in = x;  // [L, B, I_l]
  at::Tensor out;           // [L, B, H]
  const GemmBackend& gemm = backend.gemm;
  at::Tensor gates_h = at::empty({B, G}, x.options());  // h_{t-1} @ W_hh^T
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor& w_ih = weights[l * per_layer];  // [G, I_l]
    const at::Tensor w_hh = gemm.prepare_step_weight(weights[l * per_layer + 1], B);  // [G, H]
    if (l > 0 && dropout) {
      const at::Tensor mask = (*dropout_masks)[l - 1];  // [L, B, H]
      if (record) write_window(ring.mask[l - 1], first_slot, mask);
      layer_in = layer_in * mask;
    }
    const int64_t in_size = layer_in.size(2);
    // Input projection of the whole chunk, both biases folded in: one GEMM. [L*B, G]
    const at::Tensor in_2d = layer_in.reshape({L * B, in_size});
    const at::Tensor gates_x = gemm.linear(
        in_2d, w_ih,
        has_bias ? weights[l * per_layer + 2] + weights[l * per_layer + 3] : at::Tensor());

    at::Tensor hidden = h0[l].contiguous().clone();  // [B, H] T: the next GEMM's input
    at::Tensor cell = c0[l].to(acc).contiguous().clone();  // [B, H] acc
    if (first_reset.defined()) {
      hidden.masked_fill_(first_reset, 0);
      cell.masked_fill_(first_reset, 0);
    }
    out = at::empty({L, B, H}, x.options());
    for (int64_t s = 0; s < L; ++s) {
      gemm.step_linear(gates_h, hidden, w_hh);
      ForwardStepParams p;
      p.batch = B;
      p.hidden = H;
      p.gates_x = row_ptr(gates_x, s * B);
      p.gates_h = gates_h.data_ptr();
      p.cell = cell.data_ptr();
      p.hidden_next = hidden.data_ptr();
      p.out = row_ptr(out, s);
      const int64_t slot = ring_slot(first_slot + s, record ? ring.gates.size(1) : 1);
      p.ring_gates = record ? slot_ptr(ring.gates, l, slot) : scratch_gates.data_ptr();
      p.ring_cell = record ? slot_ptr(ring.cell, l, slot) : scratch_cell.data_ptr();
      p.ring_hidden = record ? slot_ptr(ring.hidden, l, slot) : scratch_hidden.data_ptr();
      p.flags = static_cast<const uint8_t*>(flags.defined() ? row_ptr(flags, s) : no_flags.data_ptr());
      p.flags_next = static_cast<const uint8_t*>(
          (flags.defined() && s + 1 < L) ? row_ptr(flags, s + 1) : no_flags.data_ptr());
      backend.pointwise.forward_step(p, storage);
    }
    h_n[l] = hidden;
    c_n[l] = cell;
    layer_in = out;
  }
  return {out, at::stack(h_n), at::stack(c_n)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> window_backward(
    const DeviceBackend& backend, const at::Tensor& grad_out_in,
    const at::Tensor& grad_h_n_in, const at::Tensor& grad_c_n_in, at::TensorList weights,
    bool has_bias, const RingTensors& ring, const at::Tensor& h_before_in,
    const at::Tensor& c_before_in, int64_t window_len, int64_t last_slot,
    c10::ArrayRef<double> carry_scales) {
  const int64_t per_layer = weights_per_layer(has_bias);
  TORCH_CHECK(!weights.empty() && weights.size() % per_layer == 0,
              "tbptt: expected ", per_layer, " weights per layer, got ", weights.size());
  const int64_t layers = static_cast<int64_t>(weights.size()) / per_layer;
  const at::Tensor grad_out = grad_out_in.contiguous();
  const int64_t L = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2), G = 4 * H;
  const int64_t slots = ring.gates.size(1);
  const int64_t W = window_len;
  TORCH_CHECK(L >= 1 && L <= W && W < slots,
              "tbptt: window must hold the chunk and fit the ring (L=", L, ", window=", W,
              ", slots=", slots, ")");
  TORCH_CHECK(carry_scales.empty() || static_cast<int64_t>(carry_scales.size()) == W,
              "tbptt: carry_scales must hold one factor per window step (", W, "), got ",
              carry_scales.size());
  const at::ScalarType storage = grad_out.scalar_type();
  const at::ScalarType acc = acc_type_of(storage);
  const at::Tensor grad_h_n = grad_h_n_in.contiguous();
  const at::Tensor grad_c_n = grad_c_n_in.to(acc).contiguous();
  const at::Tensor h_before = h_before_in.contiguous();
  const at::Tensor c_before = c_before_in.to(acc).contiguous();
  const int64_t first_slot = ring_slot(last_slot - W + 1, slots);
  const bool dropout = ring.mask.defined() && ring.mask.numel() > 0;

  std::vector<at::Tensor> grad_weights(weights.size());
  std::vector<at::Tensor> grad_h_before(layers), grad_c_before(layers);
  at::Tensor grad_from_above;  // [W, B, H] dL/dh of this layer's outputs, from the layer above
  at::Tensor grad_x;
  // The window's step flags [W, B], with kFlagCut where a reset at or before the chunk's first
  // step (window index W - L) follows a step of that row: no gradient reaches such a step.
  const at::Tensor window_flags = window_of(ring.flags, first_slot, W).clone();
  at::Tensor cut;  // [W, B, 1] bool, defined when the window reaches before the chunk
  if (W > L) {
    const at::Tensor resets = window_flags.narrow(0, 1, W - L).bitwise_and(kFlagReset);  // steps 1..W-L
    const at::Tensor later = resets.flip(0).cumsum(0).flip(0).gt(0);  // a reset in (j, W-L]
    window_flags.narrow(0, 0, W - L).bitwise_or_(later.to(at::kByte).mul(kFlagCut));
    cut = window_flags.bitwise_and(kFlagCut).to(at::kBool).unsqueeze(2);
  }
  const uint8_t* flags_base = static_cast<const uint8_t*>(window_flags.data_ptr());
  const at::Tensor no_flags = at::zeros({B}, ring.flags.options());
  const at::Tensor no_grad_out = at::zeros({B, H}, grad_out.options());
  auto flags_of_step = [&](int64_t j) { return flags_base + j * B; };

  const GemmBackend& gemm = backend.gemm;
  for (int64_t l = layers - 1; l >= 0; --l) {
    const at::Tensor& w_ih = weights[l * per_layer];  // [G, I_l]
    // dL/dh_{t-1} = dL/dgates @ W_hh, written x @ w^T with w = W_hh^T [H, G]
    const at::Tensor w_hh_t = gemm.prepare_step_weight(weights[l * per_layer + 1].t(), B);
    const bool top = l == layers - 1;
    const at::Tensor grad_gates = at::empty({W, B, G}, grad_out.options());
    const at::Tensor hidden_prev_seen = at::empty({W, B, H}, grad_out.options());
    const at::Tensor grad_cell = grad_c_n[l].clone();           // [B, H] acc
    at::Tensor grad_hidden_next = at::empty({B, H}, grad_out.options());  // dL/dh_{t-1}
    const at::Tensor grad_hidden_held = at::zeros({B, H}, grad_c_n.options());  // [B, H] acc
    for (int64_t j = W - 1; j >= 0; --j) {
      const int64_t slot = ring_slot(first_slot + j, slots);
      const int64_t prev_slot = ring_slot(slot - 1, slots);
      BackwardStepParams p;
      p.batch = B;
      p.hidden = H;
      p.gates = slot_ptr(ring.gates, l, slot);
      p.cell = slot_ptr(ring.cell, l, slot);
      p.cell_prev = j > 0 ? slot_ptr(ring.cell, l, prev_slot) : row_ptr(c_before, l);
      p.hidden_prev = j > 0 ? slot_ptr(ring.hidden, l, prev_slot) : row_ptr(h_before, l);
      p.flags = flags_of_step(j);
      p.flags_after = j < W - 1 ? flags_of_step(j + 1) : static_cast<const uint8_t*>(no_flags.data_ptr());
      p.carry_scale = carry_scales.empty() ? 1.0 : carry_scales[j];
      if (top) {
        p.grad_out = j >= W - L ? row_ptr(grad_out, j - (W - L)) : no_grad_out.data_ptr();
      } else {
        p.grad_out = row_ptr(grad_from_above, j);
      }
      p.grad_hidden_next = j == W - 1 ? row_ptr(grad_h_n, l) : grad_hidden_next.data_ptr();
      p.grad_hidden_held = grad_hidden_held.data_ptr();
      p.grad_cell = grad_cell.data_ptr();
      p.grad_gates = row_ptr(grad_gates, j);
      p.hidden_prev_seen = row_ptr(hidden_prev_seen, j);
      backend.pointwise.backward_step(p, storage);
      // dL/dh_{t-1} through this step: [B, G] @ [G, H]
      gemm.step_linear(grad_hidden_next, grad_gates[j], w_hh_t);
    }
    // The state entering the window (through the first step, or past it where that step held
    // the row): a reset at the first step cuts the gradient.
    const at::Tensor first_reset =
        window_flags[0].bitwise_and(kFlagReset).to(at::kBool).unsqueeze(1);  // [B, 1]
    grad_h_before[l] = (grad_hidden_next.to(grad_hidden_held.scalar_type()) + grad_hidden_held)
                           .to(grad_out.scalar_type())
                           .masked_fill(first_reset, 0);
    grad_c_before[l] = grad_cell.masked_fill(first_reset, 0);

    // Weight and bias gradients: window-wide GEMMs and a reduction.
    const at::Tensor grad_gates_2d = grad_gates.view({W * B, G});
    at::Tensor layer_in;  // [W, B, I_l] the layer's input over the window
    if (l == 0) {
      layer_in = window_of(ring.input, first_slot, W);
    } else {
      layer_in = window_of(ring.hidden[l - 1], first_slot, W);
      if (dropout) layer_in = layer_in * window_of(ring.mask[l - 1], first_slot, W);
    }
    // Cut steps have zero gate gradients; zero their inputs too (a select), or a NaN there
    // would reach dW_ih as 0 * NaN.
    if (cut.defined()) layer_in = at::where(cut, at::zeros({}, layer_in.options()), layer_in);
    std::vector<at::Tensor> grad_w = gemm.weight_grads(
        grad_gates_2d, {layer_in.reshape({W * B, -1}), hidden_prev_seen.view({W * B, H})});
    grad_weights[l * per_layer] = grad_w[0];
    grad_weights[l * per_layer + 1] = grad_w[1];
    if (has_bias) {
      const at::Tensor grad_bias = grad_gates_2d.sum(0);
      grad_weights[l * per_layer + 2] = grad_bias;
      grad_weights[l * per_layer + 3] = grad_bias.clone();
    }
    // dL/d(layer input) = dL/dgates @ W_ih, written x @ w^T with w = W_ih^T [I_l, G]
    if (l > 0) {
      grad_from_above = gemm.linear(grad_gates_2d, w_ih.t(), at::Tensor()).view({W, B, H});
      if (dropout) grad_from_above.mul_(window_of(ring.mask[l - 1], first_slot, W));
    } else {
      grad_x = gemm.linear(grad_gates.narrow(0, W - L, L).reshape({L * B, G}), w_ih.t(), at::Tensor())
                   .view({L, B, -1});
    }
  }
  return {grad_x, at::stack(grad_h_before), at::stack(grad_c_before), grad_weights};
}

}  // namespace tbptt
