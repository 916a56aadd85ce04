#include "persistent_dispatch.h"

#include <c10/util/Exception.h>

#include <atomic>

#include "backends.h"  // storage_type_of

namespace tbptt {

CudaPath parse_cuda_path(const std::string& name) {
  if (name == "auto") return CudaPath::kAuto;
  if (name == "persistent") return CudaPath::kPersistent;
  if (name == "stepwise") return CudaPath::kStepwise;
  TORCH_CHECK_VALUE(false, "tbptt: the CUDA path must be 'auto', 'persistent' or 'stepwise', got '",
                    name, "'");
}

const char* cuda_path_name(CudaPath path) {
  switch (path) {
    case CudaPath::kAuto: return "auto";
    case CudaPath::kPersistent: return "persistent";
    case CudaPath::kStepwise: return "stepwise";
  }
  return "?";
}

namespace {
std::atomic<int> cuda_path_setting{static_cast<int>(CudaPath::kAuto)};
}

CudaPath cuda_path() { return static_cast<CudaPath>(cuda_path_setting.load(std::memory_order_relaxed)); }
void set_cuda_path(CudaPath path) { cuda_path_setting.store(static_cast<int>(path), std::memory_order_relaxed); }

ArchFamily arch_family(int64_t capability) {
  if (capability >= 90) return ArchFamily::kHopper;
  if (capability == 80) return ArchFamily::kAmpere;
  return ArchFamily::kAmpereAda;
}

const char* arch_family_name(ArchFamily family) {
  switch (family) {
    case ArchFamily::kAmpere: return "sm_80";
    case ArchFamily::kAmpereAda: return "sm_86/sm_89";
    case ArchFamily::kHopper: return "sm_90";
  }
  return "?";
}

std::string unsupported_capability_message(int64_t capability, const std::string& device_name) {
  if (capability >= kMinCapability) return "";
  return "tbptt: " + device_name + " has compute capability " + std::to_string(capability / 10) +
         "." + std::to_string(capability % 10) + "; tbptt_cuda's CUDA kernels need 8.0 or newer "
         "(Ampere, Ada, Hopper: A100, A10, RTX 30/40, L4, H100). Run the module on the CPU "
         "(.cpu() and CPU tensors) instead.";
}

const PersistentRule& persistent_rule(int64_t capability, StorageType storage) {
  // Per family, the shapes where bench/gpu_model.py (a cost model: PREDICTIONS, no GPU has
  // measured them; `python bench/gpu_model.py --device all` prints these rows) has the
  // persistent kernels' forward+backward step below 0.8 x the stepwise path's, and the
  // shortest chunk or window that pays for their launches. sm_90 from the H100 model, sm_80
  // from the A100's; sm_86/sm_89 where every one of the A10, RTX 4090 and L4 models that has a
  // plan predicts a win (the L4 alone would admit shapes the A10 loses). Retune from
  // `make gpu-check` (it prints this table beside the measured crossover).
  //   FFMA (float32, float64): the per-step recurrent product runs on the CUDA cores of one
  //   block per SM, so it loses to cuBLAS once B*H passes a few hundred (FP64 on the 8.6/8.9
  //   parts runs at 1/64 rate on either path: the launches decide, and only narrow layers win).
  //   mma (16-bit): the tensor cores keep it ahead up to B*H = 512-1024.
  // {family, storage, B at most, B*H at most, L at least}
  using F = ArchFamily;
  using S = StorageType;
  static const PersistentRule rules[] = {
      {F::kHopper, S::kFloat32, 64, 512, 11},
      {F::kHopper, S::kFloat64, 32, 768, 37},
      {F::kHopper, S::kFloat16, 256, 1024, 10},
      {F::kHopper, S::kBFloat16, 256, 1024, 10},
      {F::kAmpere, S::kFloat32, 64, 384, 11},
      {F::kAmpere, S::kFloat64, 32, 512, 28},
      {F::kAmpere, S::kFloat16, 128, 768, 10},
      {F::kAmpere, S::kBFloat16, 128, 768, 10},
      {F::kAmpereAda, S::kFloat32, 64, 768, 33},
      {F::kAmpereAda, S::kFloat64, 4, 128, 9},
      {F::kAmpereAda, S::kFloat16, 128, 512, 9},
      {F::kAmpereAda, S::kBFloat16, 128, 512, 9},
  };
  const ArchFamily family = arch_family(capability);
  for (const PersistentRule& rule : rules) {
    if (rule.family == family && rule.storage == storage) return rule;
  }
  return rules[0];
}

PersistentPlans::Entry& PersistentPlans::entry(int64_t device, CellKind cell, StorageType storage,
                                               int64_t hidden, int64_t projection, int64_t batch) {
  const Key key{device, static_cast<int>(cell), static_cast<int>(storage), hidden, projection, batch};
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  Entry fresh;
  const int status = plan_(hidden, projection, batch, cell, storage, &fresh.plan);
  if (status != 0) {
    fresh.plan.usable = false;
    fresh.plan.reason = std::string("the device query failed: ") + status_name_(status);
  }
  return plans_.emplace(key, fresh).first->second;
}

const PersistentPlan* PersistentPlans::choose(CudaPath path, int64_t device, CellKind cell,
                                              StorageType storage, int64_t hidden,
                                              int64_t projection, int64_t batch, int64_t steps) {
  if (path == CudaPath::kStepwise) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  // the plan knows the device's family
  Entry& found = entry(device, cell, storage, hidden, projection, batch);
  if (path == CudaPath::kAuto) {
    const PersistentRule& rule = persistent_rule(found.plan.capability, storage);
    if (batch > rule.max_batch || batch * hidden > rule.max_batch_hidden || steps < rule.min_steps) {
      return nullptr;
    }
  }
  if (!found.plan.usable) {
    TORCH_CHECK(path != CudaPath::kPersistent, "tbptt: the CUDA path is forced to 'persistent' but ",
                "no persistent plan fits H=", hidden, ", B=", batch, " on ", device_name_, " ",
                device, ": ", found.plan.reason, ". Use set_cuda_path('auto') to fall back.");
    return nullptr;
  }
  if (found.dead && path == CudaPath::kAuto) return nullptr;
  return &found.plan;
}

void PersistentPlans::launch_failed(CudaPath path, const PersistentPlan* plan, const char* kernel,
                                    int status) {
  const PersistentPartition& part =
      std::string(kernel) == "persistent_backward" ? plan->backward : plan->forward;
  TORCH_CHECK(path != CudaPath::kPersistent, "tbptt: the CUDA path is forced to 'persistent' and ",
              "the launch of ", kernel, " (", part.blocks, " blocks) on ", device_name_,
              " failed: ", status_name_(status));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& entry : plans_) {
      if (&entry.second.plan == plan) entry.second.dead = true;
    }
  }
  TORCH_WARN("tbptt: the persistent kernel ", kernel, " could not be launched on ", device_name_,
             " (", status_name_(status), ": ", part.blocks,
             " co-resident blocks asked for; planned for ", plan->sms,
             " SMs). This shape runs the stepwise path from now on; results are the same.");
}

PersistentPlan PersistentPlans::plan_of(int64_t device, CellKind cell, StorageType storage,
                                        int64_t hidden, int64_t projection, int64_t batch) {
  std::lock_guard<std::mutex> lock(mutex_);
  return entry(device, cell, storage, hidden, projection, batch).plan;
}

void PersistentPlans::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  plans_.clear();
}

bool persistent_takes(const PersistentLaunchers& launchers, CellKind cell, int64_t hidden,
                      int64_t projection, int64_t batch, int64_t steps, at::ScalarType storage) {
  return launchers.plans->choose(launchers.path(), launchers.device(), cell,
                                 storage_type_of(storage), hidden, projection, batch,
                                 steps) != nullptr;
}

namespace {

// Plans, sets params.part (the forward or backward partition) and launches; false where the
// stepwise path must run.
template <typename Params, typename Launch>
bool run_persistent(const PersistentLaunchers& launchers, Params& params, at::ScalarType storage,
                    PersistentPartition PersistentPlan::*part,
                    PersistentPartition PersistentPlan::*part_projection, Launch launch,
                    const char* kernel) {
  const CudaPath path = launchers.path();
  const StorageType type = storage_type_of(storage);
  const PersistentPlan* plan = launchers.plans->choose(path, launchers.device(), params.cell_kind,
                                                       type, params.hidden, params.projection,
                                                       params.batch, params.steps);
  if (plan == nullptr) return false;
  params.part = plan->*part;
  params.part_projection = plan->*part_projection;
  const int status = launch(params, type, launchers.stream());
  if (status == 0) return true;
  launchers.plans->launch_failed(path, plan, kernel, status);
  return false;
}

}  // namespace

bool persistent_forward(const PersistentLaunchers& launchers, PersistentForwardParams& params,
                        at::ScalarType storage) {
  return run_persistent(launchers, params, storage, &PersistentPlan::forward,
                        &PersistentPlan::forward_projection, launchers.forward, "persistent_forward");
}

bool persistent_backward(const PersistentLaunchers& launchers, PersistentBackwardParams& params,
                         at::ScalarType storage) {
  return run_persistent(launchers, params, storage, &PersistentPlan::backward,
                        &PersistentPlan::backward_projection, launchers.backward,
                        "persistent_backward");
}

}  // namespace tbptt
