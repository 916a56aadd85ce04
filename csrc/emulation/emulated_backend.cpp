// The emulated CUDA backend: csrc/cuda's kernels (stepwise and persistent), built for the SIMT
// emulator, on CPU tensors, with the GEMMs through ATen on the CPU (as the CUDA backend's go through ATen to cuBLAS).
// ops.cpp binds it to the CPU dispatch key while tbptt_cuda.emulate_cuda() is active.
#include <ATen/ATen.h>

#include <c10/util/StringUtil.h>

#include <atomic>
#include <vector>

#include "backends.h"
#include "emulation/emulated_kernels.h"
#include "emulation/simt_emu.h"

namespace tbptt {
namespace emulated {
namespace {

std::atomic<bool> active_flag{false};
std::atomic<int> path_setting{static_cast<int>(CudaPath::kAuto)};

void check_launch(int status, const char* kernel) {
  TORCH_CHECK(status == simt::kSuccess, "tbptt (emulated CUDA): launch of ", kernel,
              " failed: ", simt::status_name(status));
}

void forward_step(const ForwardStepParams& params, at::ScalarType storage) {
  check_launch(emu::launch_forward_step(params, storage_type_of(storage), nullptr), "forward_step");
}

void backward_step(const BackwardStepParams& params, at::ScalarType storage) {
  check_launch(emu::launch_backward_step(params, storage_type_of(storage), nullptr), "backward_step");
}


int plan(int64_t hidden, int64_t projection, int64_t batch, CellKind cell, StorageType storage,
         PersistentPlan* out) {
  return emu::plan_persistent(hidden, projection, batch, cell, storage, out);
}
CudaPath path() { return static_cast<CudaPath>(path_setting.load(std::memory_order_relaxed)); }
int64_t device() { return 0; }
void* stream() { return nullptr; }

const PersistentLaunchers& launchers() {
  static const PersistentLaunchers bound{&persistent_plans(), path, device, stream,
                                         emu::launch_persistent_forward,
                                         emu::launch_persistent_backward};
  return bound;
}

}  // namespace

bool active() { return active_flag.load(std::memory_order_relaxed); }

void configure(bool enabled, int64_t seed, const std::string& device, int64_t sms, CudaPath path) {
  simt::emu::Config config = simt::emu::config();
  config.order = seed < 0 ? simt::emu::Order::kForward : simt::emu::Order::kRandom;
  config.seed = seed < 0 ? 0 : static_cast<uint64_t>(seed);
  const simt::emu::DeviceModel* preset = simt::emu::device_preset(device);
  TORCH_CHECK_VALUE(preset != nullptr, "emulate_cuda: device must be one of ",
                    c10::Join(", ", simt::emu::device_preset_names()), ", got '", device, "'");
  simt::emu::DeviceModel model = *preset;
  if (sms > 0) model.sms = static_cast<int>(sms);  // a part of the GPU (MPS, a smaller SKU)
  if (std::string(model.name) != config.device.name || model.sms != config.device.sms) {
    persistent_plans().clear();  // another device
  }
  config.device = model;
  simt::emu::set_config(config);
  path_setting.store(static_cast<int>(path), std::memory_order_relaxed);
  active_flag.store(enabled, std::memory_order_relaxed);
}

PersistentPlans& persistent_plans() {
  static PersistentPlans plans("the emulated device", plan, simt::status_name);
  return plans;
}

void fail_launches(const std::string& kernel, int status) {
  simt::emu::Config config = simt::emu::config();
  config.failing_kernel = kernel;
  config.failing_status = status;
  simt::emu::set_config(config);
}

std::map<std::string, std::vector<int64_t>> stats() {
  std::map<std::string, std::vector<int64_t>> table;
  for (const auto& entry : simt::emu::stats()) {
    const simt::emu::KernelStats& s = entry.second;
    table[entry.first] = {static_cast<int64_t>(s.launches), static_cast<int64_t>(s.block_barriers),
                          static_cast<int64_t>(s.grid_barriers),
                          static_cast<int64_t>(s.warp_collectives)};
  }
  return table;
}

at::Tensor sixteen_bit_conversion(const at::Tensor& values, bool bfloat16) {
  TORCH_CHECK(values.scalar_type() == at::kFloat && values.device().is_cpu(),
              "tbptt: expects a float32 CPU tensor");
  const at::Tensor input = values.contiguous();
  at::Tensor bits = at::empty(input.sizes(), input.options().dtype(at::kShort));
  const float* in = input.data_ptr<float>();
  int16_t* out = bits.data_ptr<int16_t>();
  for (int64_t i = 0; i < input.numel(); ++i) {
    out[i] = static_cast<int16_t>(bfloat16 ? simt::emu::float_to_bfloat16_bits(in[i])
                                           : simt::emu::float_to_half_bits(in[i]));
  }
  return bits;
}

at::Tensor barrier_bench(int64_t blocks, int64_t threads, int64_t rounds, bool exchange) {
  check_barrier_bench_args(blocks, threads, rounds);
  std::vector<uint32_t> slots(static_cast<size_t>(2 * blocks * threads), 0);
  std::vector<uint32_t> sink(static_cast<size_t>(blocks * threads), 0);
  const int status =
      emu::launch_barrier_bench(blocks, threads, rounds, exchange, slots.data(), sink.data(), nullptr);
  if (status != simt::kSuccess) {
    int64_t capacity = 0;
    emu::barrier_bench_capacity(threads, &capacity);
    TORCH_CHECK(false, "tbptt (emulated CUDA): launch of barrier_bench (", blocks, " blocks of ",
                threads, " threads) failed: ", simt::status_name(status), "; the simulated device (",
                simt::emu::config().device.sms, " SMs) holds ", capacity, " such blocks at once");
  }
  at::Tensor out = at::empty({blocks, threads}, at::TensorOptions().dtype(at::kLong));
  int64_t* values = out.data_ptr<int64_t>();
  for (size_t i = 0; i < sink.size(); ++i) values[i] = sink[i];
  return out;
}

const DeviceBackend& backend() {
  static const DeviceBackend emulated_backend{{forward_step, backward_step}, aten_gemm::gemm(),
                                              persistent_backend<launchers>()};
  return emulated_backend;
}

}  // namespace emulated
}  // namespace tbptt
