// The op registry: the schema of every op, once, and the implementation bound to each
// dispatch key. Dispatch by device happens here and nowhere else.
#include <c10/core/DeviceGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <map>
#ifdef TBPTT_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "backends.h"
#ifdef TBPTT_WITH_EMULATION
#include "emulation/selftest.h"
#include "emulation/simt_emu.h"
#endif

namespace tbptt {
namespace {

using BackendGetter = const DeviceBackend& (*)();

// CPU tensors: the CPU backend, or csrc/cuda's kernels under the SIMT emulator while
// tbptt_cuda.emulate_cuda() is active.
const DeviceBackend& cpu_or_emulated_backend() {
#ifdef TBPTT_WITH_EMULATION
  if (emulated::active()) return emulated::backend();
#endif
  return cpu::backend();
}

RingTensors ring_of(const at::Tensor& gates, const at::Tensor& cell, const at::Tensor& hidden,
                    const at::Tensor& input, const at::Tensor& flags, const at::Tensor& mask,
                    int64_t history_mode, int64_t checkpoint_every) {
  TORCH_CHECK(history_mode >= 0 && history_mode <= 2, "tbptt: history_mode must be 0, 1 or 2");
  TORCH_CHECK(checkpoint_every >= 1, "tbptt: checkpoint_every must be >= 1");
  return RingTensors{gates, cell, hidden, input, flags, mask,
                     static_cast<HistoryMode>(history_mode), checkpoint_every};
}

// The op's cell argument: 0 lstm, 1 lstmp, 2 gru (window.h CellKind; the driver says which it
// serves).
CellKind cell_of(int64_t cell) {
  TORCH_CHECK(cell >= 0 && cell <= 2, "tbptt: cell must be 0 (lstm), 1 (lstmp) or 2 (gru), got ", cell);
  return static_cast<CellKind>(cell);
}

template <BackendGetter backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_forward_op(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const c10::optional<at::Tensor>& flags, at::TensorList weights, bool has_bias,
    const c10::optional<at::Tensor>& dropout_masks, at::Tensor& ring_gates,
    at::Tensor& ring_cell, at::Tensor& ring_hidden, at::Tensor& ring_input,
    at::Tensor& ring_flags, at::Tensor& ring_mask, int64_t first_step, bool record,
    int64_t history_mode, int64_t checkpoint_every, int64_t cell) {
  const c10::OptionalDeviceGuard guard(x.device());
  return chunk_forward(backend(), x, h0, c0, flags, weights, has_bias, dropout_masks,
                       ring_of(ring_gates, ring_cell, ring_hidden, ring_input, ring_flags, ring_mask,
                               history_mode, checkpoint_every),
                       first_step, record, cell_of(cell));
}

template <BackendGetter backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> window_backward_op(
    const at::Tensor& grad_out, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    at::TensorList weights, bool has_bias, const at::Tensor& ring_gates,
    const at::Tensor& ring_cell, const at::Tensor& ring_hidden, const at::Tensor& ring_input,
    const at::Tensor& ring_flags, const at::Tensor& ring_mask, const at::Tensor& h_init,
    const at::Tensor& c_init, int64_t window_len, int64_t last_step,
    const std::optional<std::vector<double>>& carry_scales, int64_t history_mode,
    int64_t checkpoint_every, bool grad_input, int64_t cell) {
  const c10::OptionalDeviceGuard guard(grad_out.device());
  return window_backward(backend(), grad_out, grad_h_n, grad_c_n, weights, has_bias,
                         ring_of(ring_gates, ring_cell, ring_hidden, ring_input, ring_flags,
                                 ring_mask, history_mode, checkpoint_every),
                         h_init, c_init, window_len, last_step,
                         carry_scales.has_value() ? c10::ArrayRef<double>(*carry_scales)
                                                  : c10::ArrayRef<double>(),
                         grad_input, cell_of(cell));
}

}  // namespace
}  // namespace tbptt

TORCH_LIBRARY(tbptt, m) {
  // Forward over one chunk; writes the chunk's steps into the ring when `record`. first_step:
  // the chunk's first step counted from the stream's start; history_mode: 0 activations,
  // 1 states, 2 checkpoints (csrc/lstm_driver.h); cell: 0 lstm, 1 lstmp (h of size P, one more
  // weight per layer: w_hr), 2 gru (c0, c_n and the ring's cell zero-width: [.., B, 0]).
  m.def(
      "chunk_forward(Tensor x, Tensor h0, Tensor c0, Tensor? flags, Tensor[] weights, "
      "bool has_bias, Tensor? dropout_masks, Tensor(a!) ring_gates, Tensor(b!) ring_cell, "
      "Tensor(c!) ring_hidden, Tensor(d!) ring_input, Tensor(e!) ring_flags, "
      "Tensor(f!) ring_mask, int first_step, bool record, int history_mode=0, "
      "int checkpoint_every=1, int cell=0) -> (Tensor, Tensor, Tensor)");
  // Backward over the last window_len recorded steps, ending at step last_step; h_init, c_init:
  // the state at the stream's start; carry_scales: ARTBP's factor per window step (None: 1);
  // grad_input False: x needs no gradient (grad_x is returned empty, its GEMM skipped).
  m.def(
      "window_backward(Tensor grad_out, Tensor grad_h_n, Tensor grad_c_n, Tensor[] weights, "
      "bool has_bias, Tensor ring_gates, Tensor ring_cell, Tensor ring_hidden, "
      "Tensor ring_input, Tensor ring_flags, Tensor ring_mask, Tensor h_init, "
      "Tensor c_init, int window_len, int last_step, float[]? carry_scales=None, "
      "int history_mode=0, int checkpoint_every=1, bool grad_input=True, int cell=0) "
      "-> (Tensor, Tensor, Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(tbptt, CPU, m) {
  m.impl("chunk_forward", &tbptt::chunk_forward_op<tbptt::cpu_or_emulated_backend>);
  m.impl("window_backward", &tbptt::window_backward_op<tbptt::cpu_or_emulated_backend>);
}

#ifdef TBPTT_WITH_CUDA
TORCH_LIBRARY_IMPL(tbptt, CUDA, m) {
  m.impl("chunk_forward", &tbptt::chunk_forward_op<tbptt::cuda::backend>);
  m.impl("window_backward", &tbptt::window_backward_op<tbptt::cuda::backend>);
}
#endif

// The Python module reports how it was built and selects the CPU GEMM library; the ops live in
// torch.ops.tbptt.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_cpu_path", &tbptt::cpu::set_cpu_path,
        "CPU float32 layers: 'auto' (fused, where brgemm and oneDNN are available) or 'stepwise'.");
  m.def("cpu_path", &tbptt::cpu::cpu_path);
  m.def("cpu_fused_unavailable_reason", [](const std::string& dtype) {
        const std::map<std::string, at::ScalarType> types = {{"float32", at::kFloat},
            {"float64", at::kDouble}, {"bfloat16", at::kBFloat16}, {"float16", at::kHalf}};
        TORCH_CHECK_VALUE(types.count(dtype), "tbptt: dtype must be float32, float64, bfloat16 or float16");
        return tbptt::cpu::fused_unavailable_reason(types.at(dtype));
      }, pybind11::arg("dtype") = "float32",
        "Why the fused CPU layers would not run now for that dtype ('' : they would).");
  m.def("cpu_fused_compiled", [] { return tbptt::cpu::fused_layers() != nullptr; });
  m.def("cpu_parallel_for_threads", &tbptt::cpu::parallel_for_threads,
        "Threads that ran an at::parallel_for of this many tasks (the OpenMP build's check).");
  m.def("cpu_fused_team_threads", &tbptt::cpu::fused_team_threads,
        "Threads of the fused CPU layers' team for a layer of H units and B rows.");
  m.def("cpu_weight_packs_made", &tbptt::cpu::weight_packs_made);
  m.def("cpu_fused_profile", &tbptt::cpu::fused_profile, py::arg("enable"),
        "Seconds per phase of the fused CPU layers since the last call; then timing on/off.");
  m.def("set_cpu_gemm", &tbptt::cpu::set_gemm_library,
        "Selects the CPU GEMM library: 'onednn' (float32 default) or 'aten' (MKL).");
  m.def(
      "cpu_gemm", [](const std::string& dtype) {
        TORCH_CHECK(dtype == "float32" || dtype == "float64", "tbptt: dtype must be 'float32' or 'float64'");
        return tbptt::cpu::gemm_library(dtype == "float32" ? at::kFloat : at::kDouble);
      },
      "The library the CPU GEMMs use now for that dtype.");
  m.def("compiled_with_cuda", [] {
#ifdef TBPTT_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def(
      "set_cuda_path", [](const std::string& path) { tbptt::set_cuda_path(tbptt::parse_cuda_path(path)); },
      "Which CUDA path runs the recurrence: 'auto', 'persistent' or 'stepwise'.");
  m.def("unsupported_capability_message", &tbptt::unsupported_capability_message,
        pybind11::arg("capability"), pybind11::arg("device_name"),
        "Empty where a GPU of compute capability major*10+minor runs the kernels, else the "
        "error the CUDA backend raises.");
  m.def("cuda_path", [] { return std::string(tbptt::cuda_path_name(tbptt::cuda_path())); });
  m.def(
      "persistent_plan",
      [](const std::string& backend, int64_t hidden, int64_t batch, const std::string& dtype,
         const std::string& cell_name, int64_t proj_size) {
        const std::map<std::string, tbptt::CellKind> cells = {
            {"lstm", tbptt::CellKind::kLstm}, {"lstmp", tbptt::CellKind::kLstmp},
            {"gru", tbptt::CellKind::kGru}};
        TORCH_CHECK_VALUE(cells.count(cell_name), "tbptt: cell must be 'lstm', 'lstmp' or 'gru', got '",
                          cell_name, "'");
        const tbptt::CellKind cell = cells.at(cell_name);
        const std::map<std::string, tbptt::StorageType> types = {
            {"float32", tbptt::StorageType::kFloat32}, {"float64", tbptt::StorageType::kFloat64},
            {"float16", tbptt::StorageType::kFloat16}, {"bfloat16", tbptt::StorageType::kBFloat16}};
        TORCH_CHECK_VALUE(types.count(dtype), "tbptt: dtype must be float32, float64, float16 or bfloat16, got ", dtype);
        TORCH_CHECK_VALUE(hidden >= 1 && batch >= 1, "tbptt: hidden and batch must be >= 1");
        TORCH_CHECK_VALUE((cell == tbptt::CellKind::kLstmp) == (proj_size > 0),
                          "tbptt: proj_size must be > 0 for the cell 'lstmp' and 0 for the others, "
                          "got ", proj_size, " for '", cell_name, "'");
        TORCH_CHECK_VALUE(proj_size < hidden, "tbptt: proj_size must be < hidden, got ", proj_size);
        tbptt::PersistentPlan plan;
        if (backend == "emulated") {
#ifdef TBPTT_WITH_EMULATION
          plan = tbptt::emulated::persistent_plans().plan_of(0, cell, types.at(dtype), hidden,
                                                             proj_size, batch);
#else
          TORCH_CHECK(false, "tbptt: built without the emulated kernels");
#endif
        } else {
          TORCH_CHECK_VALUE(backend == "cuda", "tbptt: backend must be 'cuda' or 'emulated'");
#ifdef TBPTT_WITH_CUDA
          plan = tbptt::cuda::persistent_plans().plan_of(c10::cuda::current_device(), cell,
                                                         types.at(dtype), hidden, proj_size, batch);
#else
          TORCH_CHECK(false, "tbptt: built without CUDA");
#endif
        }
        auto partition = [](const tbptt::PersistentPartition& part) {
          return std::map<std::string, int64_t>{
              {"blocks", part.blocks}, {"units", part.units}, {"threads", part.threads},
              {"batch_tile", part.batch_tile}, {"k_split", part.k_split},
              {"k_chunk", part.k_chunk}, {"shared_bytes", part.shared_bytes}};
        };
        pybind11::dict out;
        out["usable"] = plan.usable;
        out["reason"] = plan.reason;
        out["sms"] = plan.sms;
        out["capability"] = plan.capability;
        out["family"] = std::string(tbptt::arch_family_name(tbptt::arch_family(plan.capability)));
        const tbptt::PersistentRule& rule = tbptt::persistent_rule(plan.capability, types.at(dtype));
        out["rule"] = std::map<std::string, int64_t>{{"max_batch", rule.max_batch},
                                                     {"max_batch_hidden", rule.max_batch_hidden},
                                                     {"min_steps", rule.min_steps}};
        out["forward"] = partition(plan.forward);
        out["backward"] = partition(plan.backward);
        if (cell == tbptt::CellKind::kLstmp) {
          out["forward_projection"] = partition(plan.forward_projection);
          out["backward_projection"] = partition(plan.backward_projection);
        }
        return out;
      },
      "The persistent kernels' plan for one layer of a cell ('lstm', 'lstmp', 'gru') with H units "
      "and B rows (backend 'cuda': the current device; 'emulated': the simulated one).",
      pybind11::arg("backend"), pybind11::arg("hidden"), pybind11::arg("batch"),
      pybind11::arg("dtype"), pybind11::arg("cell") = "lstm", pybind11::arg("proj_size") = 0);
  m.def(
      "cuda_barrier_latency",
      [](int64_t blocks, int64_t threads, int64_t rounds, bool exchange, int64_t repeats) {
        pybind11::dict out;
#ifdef TBPTT_WITH_CUDA
        const tbptt::cuda::BarrierTiming t =
            tbptt::cuda::barrier_latency(blocks, threads, rounds, exchange, repeats);
        out["us_per_barrier"] = t.us_per_barrier;
        out["launch_us"] = t.launch_us;
        out["total_us"] = t.total_us;
        out["capacity"] = t.capacity;
        out["sink"] = t.sink;
#else
        TORCH_CHECK(false, "tbptt: built without CUDA: cuda_barrier_latency needs the CUDA build and a GPU");
#endif
        return out;
      },
      pybind11::arg("blocks"), pybind11::arg("threads"), pybind11::arg("rounds"),
      pybind11::arg("exchange") = true, pybind11::arg("repeats") = 20,
      "Grid-barrier latency on the current GPU (csrc/cuda/barrier_bench.cuh): us_per_barrier, "
      "launch_us (no barrier), total_us (rounds barriers), capacity, and the sink [blocks, "
      "threads] to check the exchange with.");
  m.def("compiled_with_emulation", [] {
#ifdef TBPTT_WITH_EMULATION
    return true;
#else
    return false;
#endif
  });
#ifdef TBPTT_WITH_EMULATION
  m.def(
      "set_emulation",
      [](bool enabled, int64_t seed, const std::string& device, int64_t sms, const std::string& path) {
        tbptt::emulated::configure(enabled, seed, device, sms, tbptt::parse_cuda_path(path));
      },
      pybind11::arg("enabled"), pybind11::arg("seed"), pybind11::arg("device"),
      pybind11::arg("sms"), pybind11::arg("path") = "auto",
      "Routes CPU tensors through the emulated CUDA kernels (seed < 0: deterministic "
      "schedule; device: a preset's name; sms <= 0: all of the device's; path: auto, "
      "persistent or stepwise).");
  m.def(
      "emulated_devices",
      [] {
        pybind11::dict out;
        for (const std::string& name : simt::emu::device_preset_names()) {
          const simt::emu::DeviceModel& d = *simt::emu::device_preset(name);
          pybind11::dict limits;
          limits["capability"] = d.major * 10 + d.minor;
          limits["sms"] = d.sms;
          limits["registers_per_sm"] = d.registers_per_sm;
          limits["shared_bytes_per_sm"] = d.shared_bytes_per_sm;
          limits["shared_bytes_per_block_optin"] = d.shared_bytes_per_block_optin;
          limits["threads_per_sm"] = d.threads_per_sm;
          limits["blocks_per_sm"] = d.blocks_per_sm;
          limits["threads_per_block"] = d.threads_per_block;
          out[pybind11::str(name)] = limits;
        }
        return out;
      },
      "The devices the emulator models, by name: their published limits.");
  m.def("emulator_fail_launches", &tbptt::emulated::fail_launches,
        "Launches of the named kernel fail with this cudaError_t value ('' : none).");
  m.def("emulator_clear_plans", [] { tbptt::emulated::persistent_plans().clear(); });
  m.def("emulation_active", &tbptt::emulated::active);
  m.def("emulation_stats", &tbptt::emulated::stats,
        "kernel -> [launches, block barriers, grid barriers, warp collectives] so far.");
  m.def("emulated_sixteen_bit", &tbptt::emulated::sixteen_bit_conversion);
  m.def("emulated_barrier_bench", &tbptt::emulated::barrier_bench, pybind11::arg("blocks"),
        pybind11::arg("threads"), pybind11::arg("rounds"), pybind11::arg("exchange") = true,
        "One launch of the grid-barrier microbenchmark on the simulated device: the sink "
        "[blocks, threads].");
  m.def("emulator_fault_names", &tbptt::emu_selftest::fault_names);
  m.def(
      "emulator_selftest",
      [](const std::string& fault, int n, int steps, int blocks, int threads) {
        const tbptt::emu_selftest::ToyRun run =
            tbptt::emu_selftest::run_toy_rnn(fault, n, steps, blocks, threads);
        return std::make_tuple(std::string(simt::status_name(run.status)), run.max_abs_diff);
      },
      "Runs the emulator's toy persistent RNN with a planted fault: (launch status, max |diff| "
      "from the reference); raises where the emulator reports the fault.");
#endif
}
