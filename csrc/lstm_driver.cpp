#include "lstm_driver.h"

#include "tbptt/cells.h"

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

// nn's order per layer: w_ih, w_hh (, b_ih, b_hh) (, w_hr for the LSTM with projections).
int64_t weights_per_layer(bool has_bias, CellKind cell = CellKind::kLstm) {
  return (has_bias ? 4 : 2) + (cell == CellKind::kLstmp ? 1 : 0);
}

// Sizes of a layer's weights: H hidden units (the rows of W_ih are kGates * H) and O, the size
// of h (the columns of W_hh: H, or P for the LSTM with projections).
int64_t hidden_units(CellKind cell, at::TensorList weights) { return weights[0].size(0) / gates_of(cell); }
int64_t state_units(at::TensorList weights) { return weights[1].size(1); }

// The cells the driver serves; the ops pass what the user asked for.
void check_cell(CellKind cell) {
  TORCH_CHECK(cell == CellKind::kLstm || cell == CellKind::kLstmp || cell == CellKind::kGru,
              "tbptt: cell must be 0 (lstm), 1 (lstmp) or 2 (gru), got ", static_cast<int>(cell));
}

// Units of c per row: H for the LSTMs, 0 for the GRU (its cell tensors are zero-width).
int64_t cell_units(CellKind cell, int64_t H) { return cell == CellKind::kGru ? 0 : H; }

// The part of a layer's biases added to the input projection, x @ W_ih^T + it: b_ih + b_hh
// (LSTM), b_ih + (b_hr, b_hz, 0) (GRU: b_hn stays inside r * (W_hn h + b_hn)); undefined
// without bias.
at::Tensor input_bias(CellKind cell, at::TensorList weights, int64_t first, bool has_bias) {
  if (!has_bias) return at::Tensor();
  const at::Tensor& b_ih = weights[first + 2];
  const at::Tensor& b_hh = weights[first + 3];
  if (cell != CellKind::kGru) return b_ih + b_hh;
  const int64_t H = b_hh.size(0) / 3;
  return b_ih + at::cat({b_hh.narrow(0, 0, 2 * H), at::zeros({H}, b_hh.options())});
}

// b_hn [H] in the accumulation type (GRU; zeros without bias, and for the LSTM, which does not
// read it).
at::Tensor recurrent_n_bias(CellKind cell, at::TensorList weights, int64_t first, bool has_bias,
                            int64_t H, at::ScalarType acc) {
  if (cell == CellKind::kGru && has_bias) return weights[first + 3].narrow(0, 2 * H, H).to(acc).contiguous();
  return at::zeros({H}, weights[first].options().dtype(acc));
}

// Every record of the ring is in the storage type (flags: bytes); the kernels read it so.
void check_ring_types(const RingTensors& ring, at::ScalarType storage) {
  const std::pair<const char*, const at::Tensor*> records[] = {
      {"gates", &ring.gates}, {"cell", &ring.cell}, {"hidden", &ring.hidden},
      {"input", &ring.input}, {"mask", &ring.mask}};
  for (const auto& [name, tensor] : records) {
    TORCH_CHECK(tensor->scalar_type() == storage, "tbptt: the ring's ", name, " must be ",
                storage, " like the input, got ", tensor->scalar_type());
  }
  TORCH_CHECK(ring.flags.scalar_type() == at::kByte, "tbptt: the ring's flags must be uint8");
}

// W_hh (forward: x @ W_hh^T) or W_hh^T (backward: dG @ W_hh) of every layer, prepared by the
// backend once for the per-step products over B rows.
std::vector<at::Tensor> step_weights_of(const GemmBackend& gemm, at::TensorList weights,
                                        bool has_bias, int64_t B, bool backward,
                                        CellKind cell = CellKind::kLstm) {
  const int64_t per_layer = weights_per_layer(has_bias, cell);
  std::vector<at::Tensor> prepared;
  for (size_t l = 0; l * per_layer < weights.size(); ++l) {
    const at::Tensor& w_hh = weights[l * per_layer + 1];  // [G, O]
    prepared.push_back(gemm.prepare_step_weight(backward ? w_hh.t() : w_hh, B));
  }
  return prepared;
}

// W_hr (forward: m @ W_hr^T) or W_hr^T (backward: dh @ W_hr) of every layer of the LSTM with
// projections, prepared as step_weights_of's; empty for the other cells.
std::vector<at::Tensor> projection_weights_of(const GemmBackend& gemm, at::TensorList weights,
                                              bool has_bias, int64_t B, bool backward, CellKind cell) {
  std::vector<at::Tensor> prepared;
  if (cell != CellKind::kLstmp) return prepared;
  const int64_t per_layer = weights_per_layer(has_bias, cell);
  for (size_t l = 0; l * per_layer < weights.size(); ++l) {
    const at::Tensor& w_hr = weights[l * per_layer + per_layer - 1];  // [P, H]
    prepared.push_back(gemm.prepare_step_weight(backward ? w_hr.t() : w_hr, B));
  }
  return prepared;
}

// chunk_forward with W_hh already prepared (step_weights: one per layer), so that the
// checkpoint recompute, one forward per segment, prepares them once per window.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_chunk(
    const DeviceBackend& backend, const at::Tensor& x_in, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& flags_in, at::TensorList weights,
    bool has_bias, const c10::optional<at::Tensor>& dropout_masks, const RingTensors& ring,
    int64_t first_step, bool record, const std::vector<at::Tensor>& step_weights, CellKind cell,
    const std::vector<at::Tensor>& projection_weights) {
  check_cell(cell);
  const int64_t per_layer = weights_per_layer(has_bias, cell);
  const bool lstmp = cell == CellKind::kLstmp;
  const int64_t layers = static_cast<int64_t>(weights.size()) / per_layer;
  const at::Tensor x = x_in.contiguous();
  const int64_t L = x.size(0), B = x.size(1);
  const int64_t H = hidden_units(cell, weights), O = state_units(weights);
  const int64_t G = gates_of(cell) * H, R = kRecordsPerUnit * H, C = cell_units(cell, H);
  const at::ScalarType storage = x.scalar_type();
  const at::ScalarType acc = acc_type_of(storage);
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({layers, B, O}) && c0.sizes() == at::IntArrayRef({layers, B, C}),
              "tbptt: h0 must be [layers, B, O] = [", layers, ", ", B, ", ", O, "] and c0 [layers, B, ",
              C, "]");
  TORCH_CHECK(L >= 1, "tbptt: a chunk needs at least one step");

  at::Tensor flags;  // [L, B] u8 step flags (window.h), or undefined
  if (flags_in.has_value() && flags_in->defined()) {
    flags = flags_in->to(at::kByte).contiguous();
    TORCH_CHECK(flags.sizes() == at::IntArrayRef({L, B}), "tbptt: flags must be [L, B]");
  }
  const bool dropout = dropout_masks.has_value() && dropout_masks->defined();
  const int64_t step_slots = record ? ring.step_slots() : 1;
  const int64_t first_slot = ring_slot(first_step, step_slots);
  // Where each step's gates, c and h go: the ring slot (kActivations; c and h only for
  // kStates; c and h every checkpoint_every steps for kCheckpoints), else scratch.
  const bool ring_gates = record && ring.mode == HistoryMode::kActivations;
  const bool ring_states = record && ring.mode != HistoryMode::kCheckpoints;
  const int64_t every = ring.checkpoint_every;
  if (record) {
    check_ring_types(ring, storage);
    TORCH_CHECK(L <= step_slots, "tbptt: chunk longer than the ring");
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
  if (!ring_gates) scratch_gates = at::empty({B, R}, x.options());
  if (!ring_states) {
    scratch_cell = at::empty({B, H}, x.options());
    scratch_hidden = at::empty({B, O}, x.options());
  }
  at::Tensor hidden_m, projected;  // lstmp: m_t [B, H] T and m_t W_hr^T [B, P] T of a step
  if (lstmp) {
    hidden_m = at::empty({B, H}, x.options());
    projected = at::empty({B, O}, x.options());
  }

  std::vector<at::Tensor> h_n(layers), c_n(layers);
  at::Tensor layer_in = x;  // [L, B, I_l]
  at::Tensor out;           // [L, B, O]
  const GemmBackend& gemm = backend.gemm;
  at::Tensor gates_h = at::empty({B, G}, x.options());  // h_{t-1} @ W_hh^T
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor& w_ih = weights[l * per_layer];  // [G, I_l]
    const at::Tensor& w_hh = step_weights[l];  // [G, O], prepared
    if (l > 0 && dropout) {
      const at::Tensor mask = (*dropout_masks)[l - 1];  // [L, B, O]
      if (record) write_window(ring.mask[l - 1], first_slot, mask);
      layer_in = layer_in * mask;
    }
    const int64_t in_size = layer_in.size(2);
    // Input projection of the whole chunk, both biases folded in: one GEMM. [L*B, G]
    const at::Tensor in_2d = layer_in.reshape({L * B, in_size});
    const at::Tensor gates_x = gemm.linear(in_2d, w_ih, input_bias(cell, weights, l * per_layer, has_bias));
    const at::Tensor bias_hn = recurrent_n_bias(cell, weights, l * per_layer, has_bias, H, acc);  // [H]

    at::Tensor hidden = h0[l].contiguous().clone();  // [B, O] T: the next GEMM's input
    at::Tensor cell_state = c0[l].to(acc).contiguous().clone();  // [B, C] acc
    if (first_reset.defined()) {
      hidden.masked_fill_(first_reset, 0);
      cell_state.masked_fill_(first_reset, 0);
    }
    out = at::empty({L, B, O}, x.options());
    // Where this layer records each step (window.h's rule, shared with the persistent kernel).
    ForwardRecord where;
    where.gates = ring_gates ? slot_ptr(ring.gates, l, 0) : nullptr;
    where.cell = record && C > 0 ? slot_ptr(ring.cell, l, 0) : nullptr;
    where.hidden = record ? slot_ptr(ring.hidden, l, 0) : nullptr;
    where.hidden_units = O;
    where.first_step = first_step;
    where.slots = step_slots;
    where.checkpoint_every = ring_states || !record ? 0 : every;
    where.checkpoint_slots = ring_states || !record ? 0 : ring.cell.size(1);
    void* const scratch[3] = {scratch_gates.defined() ? scratch_gates.data_ptr() : nullptr,
                              scratch_cell.defined() ? scratch_cell.data_ptr() : nullptr,
                              scratch_hidden.defined() ? scratch_hidden.data_ptr() : nullptr};
    const uint8_t* const flag_rows =
        flags.defined() ? static_cast<const uint8_t*>(flags.data_ptr()) : nullptr;  // [L, B]

    bool done = false;
    if (backend.persistent != nullptr && backend.persistent->takes(cell, H, O, B, L, storage)) {
      // The whole chunk in one launch; h travels between steps through a double buffer.
      const at::Tensor w_hh_raw = weights[l * per_layer + 1].contiguous();  // [G, O]
      const at::Tensor w_hr_raw =  // lstmp: [P, H]
          lstmp ? weights[l * per_layer + per_layer - 1].contiguous() : at::Tensor();
      const at::Tensor exchange = at::empty({2, B, O}, x.options());
      exchange[0].copy_(hidden);
      PersistentForwardParams pp;
      pp.cell_kind = cell;
      pp.steps = L;
      pp.batch = B;
      pp.hidden = H;
      pp.gates_x = gates_x.data_ptr();
      pp.w_hh = w_hh_raw.data_ptr();
      pp.bias_hn = bias_hn.data_ptr();
      pp.hidden_exchange = exchange.data_ptr();
      pp.cell = cell_state.data_ptr();
      pp.gates_h = gates_h.data_ptr();
      pp.out = out.data_ptr();
      pp.flags = flag_rows;
      pp.no_flags = static_cast<const uint8_t*>(no_flags.data_ptr());
      pp.record = where;
      pp.scratch_gates = scratch[0];
      pp.scratch_cell = scratch[1];
      pp.scratch_hidden = scratch[2];
      if (lstmp) {
        pp.projection = O;
        pp.w_hr = w_hr_raw.data_ptr();
        pp.hidden_m = hidden_m.data_ptr();
        pp.projected = projected.data_ptr();
      }
      done = backend.persistent->forward_layer(pp, storage, w_hh_raw, w_hr_raw);
      if (done) hidden = exchange[L & 1];
    }
    for (int64_t s = 0; s < L && !done; ++s) {
      gemm.step_linear(gates_h, hidden, w_hh);
      ForwardStepParams p;
      p.cell_kind = cell;
      p.batch = B;
      p.hidden = H;
      p.gates_x = row_ptr(gates_x, s * B);
      p.gates_h = gates_h.data_ptr();
      p.bias_hn = bias_hn.data_ptr();
      p.cell = cell_state.data_ptr();
      p.hidden_prev = hidden.data_ptr();  // updated in place
      p.hidden_next = hidden.data_ptr();
      p.out = lstmp ? hidden_m.data_ptr() : row_ptr(out, s);
      set_record_targets(p, where, s, x.element_size(), scratch[0], scratch[1], scratch[2]);
      p.flags = flag_rows != nullptr ? flag_rows + s * B : static_cast<const uint8_t*>(no_flags.data_ptr());
      p.flags_next = (flag_rows != nullptr && s + 1 < L) ? flag_rows + (s + 1) * B
                                                        : static_cast<const uint8_t*>(no_flags.data_ptr());
      backend.pointwise.forward_step(p, storage);
      if (lstmp) {  // h_t = m_t W_hr^T, then hold, output and records over [B, P]
        gemm.step_linear(projected, hidden_m, projection_weights[l]);
        ForwardStepParams q = p;
        q.cell_kind = CellKind::kProjection;
        q.hidden = O;
        q.gates_h = projected.data_ptr();
        q.out = row_ptr(out, s);
        backend.pointwise.forward_step(q, storage);
      }
    }
    h_n[l] = hidden;
    c_n[l] = cell_state;
    layer_in = out;
  }
  return {out, at::stack(h_n), at::stack(c_n)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_forward(
    const DeviceBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& flags, at::TensorList weights,
    bool has_bias, const c10::optional<at::Tensor>& dropout_masks, const RingTensors& ring,
    int64_t first_step, bool record, CellKind cell) {
  const int64_t per_layer = weights_per_layer(has_bias, cell);
  TORCH_CHECK(x.dim() == 3, "tbptt: x must be [L, B, I], got ", x.sizes());
  TORCH_CHECK(!weights.empty() && weights.size() % per_layer == 0,
              "tbptt: expected ", per_layer, " weights per layer, got ", weights.size());
  return forward_chunk(backend, x, h0, c0, flags, weights, has_bias, dropout_masks, ring,
                       first_step, record,
                       step_weights_of(backend.gemm, weights, has_bias, x.size(1), false, cell), cell,
                       projection_weights_of(backend.gemm, weights, has_bias, x.size(1), false, cell));
}

namespace {

// The activations of a run of W consecutive steps (a span) in a ring of activations layout
// (window.h), and what backward needs around them.
struct SpanActivations {
  at::Tensor gates;          // [layers, S, B, R] T, or undefined: rebuild them (kStates)
  at::Tensor cell, hidden;   // [layers, S, B, C], [layers, S, B, O] T: c_t, h_t of each step
  int64_t first_slot = 0;    // slot of the span's first step (S = cell.size(1))
  at::Tensor input;          // [W, B, I] T: layer-0 inputs of the span's steps
  at::Tensor mask;           // [layers-1, W, B, O] T: dropout masks of its steps, or undefined
  at::Tensor h_before;       // [layers, B, O] T: the state entering the span, as stored
  at::Tensor c_before;       // [layers, B, C] T (as the ring records c)
};

struct SpanGradients {
  at::Tensor grad_x;                      // [Ls, B, I] for the span's last Ls steps, or undefined
  at::Tensor grad_h_before, grad_c_before;  // [layers, B, O], [layers, B, C]: reaching the state
                                            // entering the span
  std::vector<at::Tensor> weights;        // in the order of `weights`
};

// Backward over a span of W steps, all layers, newest step first. flags [W, B] u8: the span's
// step flags (with kFlagCut); carry_scales: empty or W factors; grad_out [Ls, B, O]: dL/dy of
// the span's last Ls steps (Ls may be 0); grad_h_n [layers, B, O], grad_c_n [layers, B, C]: the
// gradient reaching the state after the span's last step.
// backward_step_weights: W_hh^T of every layer prepared for the per-step products (once per
// window: the checkpoint mode runs one span per segment), projection_weights W_hr^T (lstmp);
// may_cut: whether flags may hold kFlagCut (only where the window reaches before the chunk).
SpanGradients backward_span(const DeviceBackend& backend, const SpanActivations& acts,
                            const at::Tensor& flags, c10::ArrayRef<double> carry_scales,
                            const at::Tensor& grad_out, const at::Tensor& grad_h_n,
                            const at::Tensor& grad_c_n, at::TensorList weights, bool has_bias,
                            const std::vector<at::Tensor>& backward_step_weights, bool may_cut,
                            bool grad_input, CellKind cell,
                            const std::vector<at::Tensor>& projection_weights) {
  const int64_t per_layer = weights_per_layer(has_bias, cell);
  const int64_t layers = static_cast<int64_t>(weights.size()) / per_layer;
  const int64_t W = flags.size(0), B = flags.size(1), Ls = grad_out.size(0);
  const int64_t H = hidden_units(cell, weights), O = state_units(weights);
  const int64_t G = gates_of(cell) * H, R = kRecordsPerUnit * H;
  const bool gru = cell == CellKind::kGru, lstmp = cell == CellKind::kLstmp;
  const int64_t slots = acts.cell.size(1);
  const at::ScalarType storage = grad_h_n.scalar_type();
  const at::TensorOptions options = grad_h_n.options();
  const at::TensorOptions acc_options = grad_c_n.options();
  const at::Tensor cut = flags.bitwise_and(kFlagCut).to(at::kBool).unsqueeze(2);  // [W, B, 1]
  const at::Tensor resets = flags.bitwise_and(kFlagReset).to(at::kBool).unsqueeze(2);
  const uint8_t* flags_base = static_cast<const uint8_t*>(flags.data_ptr());
  const at::Tensor no_flags = at::zeros({B}, flags.options());
  const at::Tensor no_grad_out = at::zeros({B, O}, options);
  auto flags_of_step = [&](int64_t j) { return flags_base + j * B; };

  SpanGradients result;
  result.weights.resize(weights.size());
  std::vector<at::Tensor> grad_h_before(layers), grad_c_before(layers);
  at::Tensor grad_from_above;  // [W, B, O] dL/dh of this layer's outputs, from the layer above
  // lstmp's pass over [B, H] in backward: dm in, nothing carried in h, h unread (see
  // lstmp_math.h); its h-sized buffers are P-sized and live in the projection pass.
  at::Tensor dm, zeros_bh, scratch_bh, held_bh;  // [B, H] T, T, T, acc
  if (lstmp) {
    dm = at::empty({B, H}, options);
    zeros_bh = at::zeros({B, H}, options);
    scratch_bh = at::empty({B, H}, options);
    held_bh = at::zeros({B, H}, acc_options);
  }
  const GemmBackend& gemm = backend.gemm;
  for (int64_t l = layers - 1; l >= 0; --l) {
    const at::Tensor& w_ih = weights[l * per_layer];      // [G, I_l]
    const at::Tensor& w_hh = weights[l * per_layer + 1];  // [G, O]
    // The layer's input over the span [W, B, I_l]; cut steps' zeroed (a select), or a NaN
    // there would reach dW_ih as 0 * NaN.
    at::Tensor layer_in = l == 0 ? acts.input : window_of(acts.hidden[l - 1], acts.first_slot, W);
    if (l > 0 && acts.mask.defined()) layer_in = layer_in * acts.mask[l - 1];
    if (may_cut) layer_in = at::where(cut, at::zeros({}, layer_in.options()), layer_in);
    at::Tensor rebuilt;  // [W, B, R] acc kStates: the span's pre-activations, from two
                         // window-wide GEMMs; the backward kernel activates them
    if (!acts.gates.defined()) {
      at::Tensor h_prev = at::empty({W, B, O}, options);  // h_{t-1} as each step saw it
      h_prev[0].copy_(acts.h_before[l]);
      if (W > 1) h_prev.narrow(0, 1, W - 1).copy_(window_of(acts.hidden[l], acts.first_slot, W - 1));
      h_prev.masked_fill_(resets, 0);
      const at::ScalarType acc = acc_options.dtype().toScalarType();
      rebuilt = gemm.linear(layer_in.reshape({W * B, -1}), w_ih,  // [W*B, G]
                            input_bias(cell, weights, l * per_layer, has_bias)).to(acc);
      const at::Tensor recurrent = gemm.linear(h_prev.reshape({W * B, O}), w_hh, at::Tensor());
      if (!gru) {
        rebuilt.add_(recurrent);
      } else {  // gru.h's layout: (x_r + h_r, x_z + h_z, x_n, h_n + b_hn)
        rebuilt.narrow(1, 0, 2 * H).add_(recurrent.narrow(1, 0, 2 * H));
        const at::Tensor hn = recurrent.narrow(1, 2 * H, H).to(acc) +
                              recurrent_n_bias(cell, weights, l * per_layer, has_bias, H, acc);
        rebuilt = at::cat({rebuilt, hn}, 1);
      }
      rebuilt = rebuilt.view({W, B, R});
    }
    // dL/dh_{t-1} = dL/dgates @ W_hh, written x @ w^T with w = W_hh^T [O, G], prepared
    const at::Tensor& w_hh_t = backward_step_weights[l];
    const bool top = l == layers - 1;
    const at::Tensor grad_gates = at::empty({W, B, R}, options);  // GRU: dA_r, dA_z, dA_hn, dA_n
    const at::Tensor hidden_prev_seen = at::empty({W, B, O}, options);
    const at::Tensor grad_cell = grad_c_n[l].clone();                     // [B, C] acc
    at::Tensor grad_hidden_next = at::empty({B, O}, options);             // dL/dh_{t-1}
    const at::Tensor grad_hidden_held = at::zeros({B, O}, acc_options);  // [B, O] acc
    at::Tensor grad_projected;  // lstmp: [W, B, P] T, dh_eff of each step (lstmp_math.h)
    if (lstmp) grad_projected = at::empty({W, B, O}, options);
    // Where step j reads its activations (window.h's rule, shared with the persistent kernel).
    BackwardSource source;
    source.gates = rebuilt.defined() ? rebuilt.data_ptr() : slot_ptr(acts.gates, l, 0);
    source.gates_are_pre_activations = rebuilt.defined();
    source.cell = gru ? nullptr : slot_ptr(acts.cell, l, 0);
    source.hidden = slot_ptr(acts.hidden, l, 0);
    source.hidden_units = O;
    source.first_slot = acts.first_slot;
    source.slots = slots;
    source.h_before = row_ptr(acts.h_before, l);
    source.c_before = gru ? nullptr : row_ptr(acts.c_before, l);
    const at::Tensor& grad_above = top ? grad_out : grad_from_above;  // [W - first, B, O]
    const int64_t grad_above_first = top ? W - Ls : 0;

    bool done = false;
    if (backend.persistent != nullptr && backend.persistent->takes(cell, H, O, B, W, storage)) {
      // The whole span in one launch; dL/dh_{t-1} stays with the block owning each unit.
      const at::Tensor w_hh_raw = w_hh.contiguous();  // [G, O]
      const at::Tensor w_hr_raw =  // lstmp: [P, H]
          lstmp ? weights[l * per_layer + per_layer - 1].contiguous() : at::Tensor();
      at::Tensor scales;  // [W] double on the device
      if (!carry_scales.empty()) {
        scales = at::tensor(carry_scales.vec(), at::dtype(at::kDouble)).to(flags.device());
      }
      PersistentBackwardParams pb;
      pb.cell_kind = cell;
      pb.steps = W;
      pb.batch = B;
      pb.hidden = H;
      pb.w_hh = w_hh_raw.data_ptr();
      pb.source = source;
      pb.flags = flags_base;
      pb.no_flags = static_cast<const uint8_t*>(no_flags.data_ptr());
      pb.carry_scales = scales.defined() ? scales.data_ptr<double>() : nullptr;
      pb.grad_out = grad_above.numel() > 0 ? grad_above.data_ptr() : no_grad_out.data_ptr();
      pb.grad_out_first = grad_above.numel() > 0 ? grad_above_first : W;
      pb.no_grad_out = no_grad_out.data_ptr();
      pb.grad_h_n = row_ptr(grad_h_n, l);
      pb.grad_hidden = grad_hidden_next.data_ptr();
      pb.grad_held = grad_hidden_held.data_ptr();
      pb.grad_cell = grad_cell.data_ptr();
      pb.grad_gates = grad_gates.data_ptr();
      pb.hidden_prev_seen = hidden_prev_seen.data_ptr();
      if (lstmp) {
        pb.projection = O;
        pb.w_hr = w_hr_raw.data_ptr();
        pb.grad_projected = grad_projected.data_ptr();
        pb.grad_m = dm.data_ptr();
        pb.zeros_h = zeros_bh.data_ptr();
        pb.scratch_h = scratch_bh.data_ptr();
        pb.held_h = held_bh.data_ptr();
      }
      done = backend.persistent->backward_layer(pb, storage, w_hh_raw, w_hr_raw);
    }
    for (int64_t j = W - 1; j >= 0 && !done; --j) {
      BackwardStepParams p;
      p.cell_kind = cell;
      p.batch = B;
      p.hidden = H;
      set_backward_sources(p, source, j, grad_gates.element_size(), grad_cell.element_size());
      p.flags = flags_of_step(j);
      p.flags_after = j < W - 1 ? flags_of_step(j + 1) : static_cast<const uint8_t*>(no_flags.data_ptr());
      p.carry_scale = carry_scales.empty() ? 1.0 : carry_scales[j];
      p.grad_out = j >= grad_above_first ? row_ptr(grad_above, j - grad_above_first) : no_grad_out.data_ptr();
      p.grad_hidden_next = j == W - 1 ? row_ptr(grad_h_n, l) : grad_hidden_next.data_ptr();
      p.grad_hidden_held = grad_hidden_held.data_ptr();
      p.grad_cell = grad_cell.data_ptr();
      p.grad_gates = row_ptr(grad_gates, j);
      p.hidden_prev_seen = row_ptr(hidden_prev_seen, j);
      if (lstmp) {
        // (1) over [B, P]: dh_eff and the carry past held steps; (2) dm = dh_eff @ W_hr;
        // (3) below, the LSTM's element over [B, H] with dL/dh = dm.
        BackwardStepParams q = p;
        q.cell_kind = CellKind::kProjection;
        q.hidden = O;
        q.grad_gates = row_ptr(grad_projected, j);
        backend.pointwise.backward_step(q, storage);
        gemm.step_linear(dm, grad_projected[j], projection_weights[l]);
        p.cell_kind = CellKind::kLstm;
        p.hidden_prev = zeros_bh.data_ptr();
        p.hidden_prev_seen = scratch_bh.data_ptr();
        p.grad_out = dm.data_ptr();
        p.grad_hidden_next = zeros_bh.data_ptr();
        p.grad_hidden_held = held_bh.data_ptr();
      }
      backend.pointwise.backward_step(p, storage);
      // dL/dh_{t-1} through this step: [B, G] @ [G, H] (GRU: dGh, a row's first 3H)
      gemm.step_linear(grad_hidden_next, gru ? grad_gates[j].narrow(1, 0, G).contiguous() : grad_gates[j],
                       w_hh_t);
    }
    // The state entering the span (through the first step, or past it where that step held
    // the row): a reset at the first step cuts the gradient.
    const at::Tensor first_reset = resets[0];  // [B, 1]
    grad_h_before[l] = (grad_hidden_next.to(acc_options.dtype()) + grad_hidden_held)
                           .to(storage)
                           .masked_fill(first_reset, 0);
    grad_c_before[l] = grad_cell.masked_fill(first_reset, 0);

    // Weight and bias gradients: span-wide GEMMs and a reduction. The LSTM's gate gradients
    // serve both products; the GRU's differ in the n rows: dGx (x side) and dGh (recurrent side).
    const at::Tensor grad_gates_2d = grad_gates.view({W * B, R});
    at::Tensor grad_x_side = grad_gates_2d;  // [W*B, G]
    if (!gru) {
      std::vector<at::Tensor> grad_w = gemm.weight_grads(
          grad_gates_2d, {layer_in.reshape({W * B, -1}), hidden_prev_seen.view({W * B, O})});
      result.weights[l * per_layer] = grad_w[0];
      result.weights[l * per_layer + 1] = grad_w[1];
      if (has_bias) {
        const at::Tensor grad_bias = grad_gates_2d.sum(0);
        result.weights[l * per_layer + 2] = grad_bias;
        result.weights[l * per_layer + 3] = grad_bias.clone();
      }
      if (lstmp) {  // dW_hr = sum_t dh_eff_t^T m_t, m_t = o_t tanh(c_t) rebuilt from the records
        const at::ScalarType acc = acc_options.dtype().toScalarType();
        const at::Tensor o = rebuilt.defined()  // [W, B, H] acc
                                 ? rebuilt.narrow(2, 3 * H, H).sigmoid()
                                 : window_of(acts.gates[l], acts.first_slot, W).narrow(2, 3 * H, H).to(acc);
        const at::Tensor c = window_of(acts.cell[l], acts.first_slot, W).to(acc);  // [W, B, H]
        // held and cut steps take no part (a select: their records may hold anything)
        const at::Tensor idle = flags.bitwise_and(kFlagCut | kFlagHold).to(at::kBool).unsqueeze(2);
        const at::Tensor m = (o * c.tanh()).masked_fill(idle, 0).to(storage);
        result.weights[l * per_layer + per_layer - 1] =
            gemm.weight_grads(grad_projected.view({W * B, O}), {m.view({W * B, H})})[0];
      }
    } else {
      const at::Tensor grad_h_side = grad_gates_2d.narrow(1, 0, G).contiguous();  // dA_r, dA_z, dA_hn
      grad_x_side = at::cat({grad_gates_2d.narrow(1, 0, 2 * H), grad_gates_2d.narrow(1, 3 * H, H)}, 1);
      result.weights[l * per_layer] = gemm.weight_grads(grad_x_side, {layer_in.reshape({W * B, -1})})[0];
      result.weights[l * per_layer + 1] =
          gemm.weight_grads(grad_h_side, {hidden_prev_seen.view({W * B, O})})[0];
      if (has_bias) {
        result.weights[l * per_layer + 2] = grad_x_side.sum(0);
        result.weights[l * per_layer + 3] = grad_h_side.sum(0);
      }
    }
    // dL/d(layer input) = dL/dgates @ W_ih, written x @ w^T with w = W_ih^T [I_l, G]
    if (l > 0) {
      grad_from_above = gemm.linear(grad_x_side, w_ih.t(), at::Tensor()).view({W, B, -1});
      if (acts.mask.defined()) grad_from_above.mul_(acts.mask[l - 1]);
    } else if (Ls > 0 && grad_input) {
      result.grad_x = gemm.linear(grad_x_side.narrow(0, (W - Ls) * B, Ls * B), w_ih.t(), at::Tensor())
                          .view({Ls, B, -1});
    }
  }
  result.grad_h_before = at::stack(grad_h_before);
  result.grad_c_before = at::stack(grad_c_before);
  return result;
}

// Dropout masks of `length` steps from `first_slot` of a ring [layers-1, S, B, H]:
// [layers-1, length, B, H], or undefined without dropout.
at::Tensor masks_of(const at::Tensor& ring_mask, int64_t first_slot, int64_t length) {
  if (!ring_mask.defined() || ring_mask.numel() == 0) return at::Tensor();
  std::vector<at::Tensor> per_layer;
  for (int64_t l = 0; l < ring_mask.size(0); ++l) per_layer.push_back(window_of(ring_mask[l], first_slot, length));
  return at::stack(per_layer);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> window_backward(
    const DeviceBackend& backend, const at::Tensor& grad_out_in, const at::Tensor& grad_h_n_in,
    const at::Tensor& grad_c_n_in, at::TensorList weights, bool has_bias, const RingTensors& ring,
    const at::Tensor& h_init_in, const at::Tensor& c_init_in, int64_t window_len,
    int64_t last_step, c10::ArrayRef<double> carry_scales, bool grad_input, CellKind cell) {
  check_cell(cell);
  const int64_t per_layer = weights_per_layer(has_bias, cell);
  TORCH_CHECK(!weights.empty() && weights.size() % per_layer == 0,
              "tbptt: expected ", per_layer, " weights per layer, got ", weights.size());
  const int64_t layers = static_cast<int64_t>(weights.size()) / per_layer;
  const at::Tensor grad_out = grad_out_in.contiguous();
  const int64_t L = grad_out.size(0), B = grad_out.size(1);
  const int64_t W = window_len, S = ring.step_slots();
  const int64_t first_step = last_step - W + 1;  // w
  TORCH_CHECK(L >= 1 && L <= W && first_step >= 0 && W < S,
              "tbptt: window must hold the chunk and fit the ring (L=", L, ", window=", W,
              ", last step=", last_step, ", slots=", S, ")");
  TORCH_CHECK(carry_scales.empty() || static_cast<int64_t>(carry_scales.size()) == W,
              "tbptt: carry_scales must hold one factor per window step (", W, "), got ",
              carry_scales.size());
  const at::ScalarType acc = acc_type_of(grad_out.scalar_type());
  const at::Tensor grad_h_n = grad_h_n_in.contiguous();
  const at::Tensor grad_c_n = grad_c_n_in.to(acc).contiguous();
  const at::Tensor h_init = h_init_in.contiguous();
  const at::Tensor c_init = c_init_in.to(acc).contiguous();  // a recompute starts from it
  const at::Tensor c_init_record = c_init_in.to(h_init.scalar_type()).contiguous();  // as the ring keeps c
  check_ring_types(ring, h_init.scalar_type());
  const int64_t first_slot = ring_slot(first_step, S);

  // The window's step flags [W, B], with kFlagCut where a reset at or before the chunk's first
  // step (window index W - L) follows a step of that row: no gradient reaches such a step.
  const at::Tensor window_flags = window_of(ring.flags, first_slot, W).clone();
  if (W > L) {
    const at::Tensor resets = window_flags.narrow(0, 1, W - L).bitwise_and(kFlagReset);  // steps 1..W-L
    const at::Tensor later = resets.flip(0).cumsum(0).flip(0).gt(0);  // a reset in (j, W-L]
    window_flags.narrow(0, 0, W - L).bitwise_or_(later.to(at::kByte).mul(kFlagCut));
  }

  if (ring.mode != HistoryMode::kCheckpoints) {
    // One span over the ring; the state entering the window is the ring's step before it.
    SpanActivations acts;
    if (ring.mode == HistoryMode::kActivations) acts.gates = ring.gates;
    acts.cell = ring.cell;
    acts.hidden = ring.hidden;
    acts.first_slot = first_slot;
    acts.input = window_of(ring.input, first_slot, W);
    acts.mask = masks_of(ring.mask, first_slot, W);
    const int64_t before = ring_slot(first_step - 1, S);
    acts.h_before = first_step == 0 ? h_init : ring.hidden.select(1, before);
    acts.c_before = first_step == 0 ? c_init_record : ring.cell.select(1, before);
    SpanGradients span = backward_span(backend, acts, window_flags, carry_scales, grad_out,
                                       grad_h_n, grad_c_n, weights, has_bias,
                                       step_weights_of(backend.gemm, weights, has_bias, B, true, cell),
                                       W > L, grad_input, cell,
                                       projection_weights_of(backend.gemm, weights, has_bias, B, true, cell));
    return {grad_input ? span.grad_x : at::empty({0}, grad_out.options()), span.grad_h_before,
            span.grad_c_before, span.weights};
  }

  // kCheckpoints: segments of checkpoint_every steps from the checkpoint at or before the
  // window's start, newest first. Each is recomputed from its checkpoint by the chunk forward
  // into a scratch ring of activations layout, then run backward; the gradient reaching the
  // state entering a segment is the one leaving the segment before it.
  const int64_t every = ring.checkpoint_every, checkpoints = ring.cell.size(1);
  const int64_t start = first_step / every * every, end = last_step + 1;
  TORCH_CHECK(end - start <= S, "tbptt: the ring no longer holds the steps from the checkpoint at ",
              start, " (window ", first_step, "..", last_step, ", ", S, " slots)");
  at::Tensor grad_h = grad_h_n, grad_c = grad_c_n;
  std::vector<at::Tensor> grad_weights(weights.size()), grad_x_parts;
  const std::vector<at::Tensor> step_weights = step_weights_of(backend.gemm, weights, has_bias, B, false, cell);
  const std::vector<at::Tensor> backward_weights = step_weights_of(backend.gemm, weights, has_bias, B, true, cell);
  const std::vector<at::Tensor> projections = projection_weights_of(backend.gemm, weights, has_bias, B, false, cell);
  const std::vector<at::Tensor> backward_projections =
      projection_weights_of(backend.gemm, weights, has_bias, B, true, cell);
  const int64_t segments = (end - start + every - 1) / every;
  for (int64_t k = segments - 1; k >= 0; --k) {
    const int64_t seg_start = start + k * every, seg_end = std::min(seg_start + every, end);
    const int64_t seg_len = seg_end - seg_start, seg_slot = ring_slot(seg_start, S);
    const int64_t checkpoint = ring_slot(seg_start / every, checkpoints);
    const at::Tensor h_seg = seg_start == 0 ? h_init : ring.hidden.select(1, checkpoint);
    const at::Tensor c_seg = seg_start == 0 ? c_init : ring.cell.select(1, checkpoint);
    const at::Tensor x_seg = window_of(ring.input, seg_slot, seg_len).contiguous();
    const at::Tensor masks_seg = masks_of(ring.mask, seg_slot, seg_len);
    RingTensors scratch;  // activations of the segment, slot 1 + i for its step i
    const int64_t H = hidden_units(cell, weights), O = h_init.size(2), R = kRecordsPerUnit * H;
    scratch.gates = at::empty({layers, seg_len + 1, B, R}, h_init.options());
    scratch.cell = at::empty({layers, seg_len + 1, B, cell_units(cell, H)}, h_init.options());
    scratch.hidden = at::empty({layers, seg_len + 1, B, O}, h_init.options());
    scratch.input = at::empty({seg_len + 1, B, x_seg.size(2)}, x_seg.options());
    scratch.flags = at::empty({seg_len + 1, B}, ring.flags.options());
    scratch.mask = masks_seg.defined() ? at::empty({layers - 1, seg_len + 1, B, O}, h_init.options())
                                       : at::empty({0}, h_init.options());
    forward_chunk(backend, x_seg, h_seg, c_seg, window_of(ring.flags, seg_slot, seg_len), weights,
                  has_bias, masks_seg.defined() ? c10::optional<at::Tensor>(masks_seg) : c10::nullopt,
                  scratch, /*first_step=*/1, /*record=*/true, step_weights, cell, projections);
    // The part of the segment inside the window, and of the chunk inside that.
    const int64_t offset = std::max<int64_t>(first_step - seg_start, 0);
    const int64_t span_len = seg_len - offset, span_first = seg_start + offset - first_step;
    SpanActivations acts;
    acts.gates = scratch.gates;
    acts.cell = scratch.cell;
    acts.hidden = scratch.hidden;
    acts.first_slot = 1 + offset;
    acts.input = x_seg.narrow(0, offset, span_len);
    if (masks_seg.defined()) acts.mask = masks_seg.narrow(1, offset, span_len);
    acts.h_before = offset == 0 ? h_seg : scratch.hidden.select(1, offset);
    acts.c_before = offset > 0 ? scratch.cell.select(1, offset)
                    : seg_start == 0 ? c_init_record : ring.cell.select(1, checkpoint);
    const int64_t chunk_first = std::max<int64_t>(span_first, W - L);  // window index
    const int64_t chunk_steps = std::max<int64_t>(span_first + span_len - chunk_first, 0);
    SpanGradients span = backward_span(
        backend, acts, window_flags.narrow(0, span_first, span_len),
        carry_scales.empty() ? carry_scales : carry_scales.slice(span_first, span_len),
        grad_out.narrow(0, chunk_first - (W - L), chunk_steps), grad_h, grad_c, weights, has_bias,
        backward_weights, W > L, grad_input, cell, backward_projections);
    grad_h = span.grad_h_before;
    grad_c = span.grad_c_before;
    for (size_t i = 0; i < weights.size(); ++i) {
      grad_weights[i] = grad_weights[i].defined() ? grad_weights[i] + span.weights[i] : span.weights[i];
    }
    if (span.grad_x.defined()) grad_x_parts.insert(grad_x_parts.begin(), span.grad_x);
  }
  return {grad_input ? at::cat(grad_x_parts) : at::empty({0}, grad_out.options()), grad_h, grad_c,
          grad_weights};
}

}  // namespace tbptt
