// Which CUDA path runs a layer's recurrence: the stepwise one (a GEMM and a pointwise kernel
// per step) or the persistent kernels (one cooperative launch per layer per chunk / span).
// ATen-side glue shared by the CUDA backend (csrc/cuda/lstm_cuda.cpp) and the emulated one
// (csrc/emulation/emulated_backend.cpp): the path setting, the rule "auto" follows, the plans
// cached per device, and what happens when a launch fails.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <ATen/ATen.h>

#include "lstm_driver.h"  // PersistentBackend
#include "tbptt/persistent.h"

namespace tbptt {

// tbptt_cuda.set_cuda_path / TBPTT_CUDA_PATH: "auto" (the rule below), "persistent" (always,
// an error where no plan fits), "stepwise" (never).
enum class CudaPath : int { kAuto = 0, kPersistent = 1, kStepwise = 2 };
CudaPath parse_cuda_path(const std::string& name);  // raises on any other name
const char* cuda_path_name(CudaPath path);
// The setting of the CUDA backend (the emulated one has its own: emulate_cuda(path=...)).
CudaPath cuda_path();
void set_cuda_path(CudaPath path);

// The GPU families the rule table tells apart, by compute capability: what sets the persistent
// kernels' speed against cuBLAS differs between them (shared memory per SM, threads per SM,
// FP64 and tensor-core rates, SM count).
enum class ArchFamily : int {
  kAmpere = 0,    // 8.0: A100, A30 (164 KiB shared memory per SM, 2048 threads, full-rate FP64)
  kAmpereAda = 1, // 8.6, 8.7, 8.9: A10, RTX 30/40, L4, L40 (100 KiB, 1536 threads, FP64 1/64)
  kHopper = 2,    // 9.0 and newer: H100, H200 (228 KiB, 2048 threads); newer GPUs run the PTX
};
ArchFamily arch_family(int64_t capability);  // capability: major * 10 + minor
const char* arch_family_name(ArchFamily family);

// The kernels need compute capability 8.0 (mma.sync m16n8k16 on bfloat16, cooperative launch
// with the shared memory the plans ask for); the build's default architectures start there.
constexpr int64_t kMinCapability = 80;
// Empty where a GPU of this capability runs our kernels, else the error to raise (naming the
// device, its capability and what to do instead).
std::string unsupported_capability_message(int64_t capability, const std::string& device_name);

// When "auto" takes the persistent path (given a usable plan): one row per family and storage
// type. The figures come from bench/gpu_model.py's cost model of each family's reference GPU
// (a prediction until measured on a GPU: scripts/gpu_check.sh prints both paths side by side
// to retune them).
struct PersistentRule {
  ArchFamily family;
  StorageType storage;
  int64_t max_batch;         // B at most (cuDNN's persistent RNNs stop at 128 too)
  int64_t max_batch_hidden;  // B * H at most: each SM takes in ~B H T bytes of h per step and
                             // ~4 B H T of dG; beyond this a per-step GEMM streams them faster
  int64_t min_steps;         // L (forward) or W (backward) at least: a single step gains nothing
                             // from keeping W_hh resident
};
const PersistentRule& persistent_rule(int64_t capability, StorageType storage);

// Plans cached per (device, cell, storage type, H, P, B) for one build of the kernels (CUDA or the
// emulator). Thread-safe.
class PersistentPlans {
 public:
  using PlanFunction = int (*)(int64_t hidden, int64_t projection, int64_t batch, CellKind cell,
                               StorageType storage, PersistentPlan* plan);
  using StatusName = const char* (*)(int status);
  PersistentPlans(const char* device_name, PlanFunction plan, StatusName status_name)
      : device_name_(device_name), plan_(plan), status_name_(status_name) {}

  // The plan to launch for a layer of `steps` steps under `path`, or nullptr: run the stepwise
  // path. Raises where `path` is kPersistent and no plan fits this shape.
  // (projection: P of the LSTM with projections, else 0)
  const PersistentPlan* choose(CudaPath path, int64_t device, CellKind cell, StorageType storage,
                               int64_t hidden, int64_t projection, int64_t batch, int64_t steps);
  // A launch from `plan` returned `status` (nothing ran). kPersistent raises; kAuto warns
  // (once: the plan is marked dead and not launched again) and the caller runs the stepwise path.
  void launch_failed(CudaPath path, const PersistentPlan* plan, const char* kernel, int status);
  // The plan for a shape, computed if need be (inspection: tbptt_cuda's plan queries).
  PersistentPlan plan_of(int64_t device, CellKind cell, StorageType storage, int64_t hidden,
                         int64_t projection, int64_t batch);
  void clear();

 private:
  struct Entry {
    PersistentPlan plan;
    bool dead = false;
  };
  using Key = std::tuple<int64_t, int, int, int64_t, int64_t, int64_t>;
  Entry& entry(int64_t device, CellKind cell, StorageType storage, int64_t hidden,
               int64_t projection, int64_t batch);  // locked

  const char* device_name_;
  PlanFunction plan_;
  StatusName status_name_;
  std::mutex mutex_;
  std::map<Key, Entry> plans_;
};

// One build's persistent launchers (status 0: success), bound into the driver's
// PersistentBackend by persistent_takes / _forward / _backward below.
struct PersistentLaunchers {
  PersistentPlans* plans;
  CudaPath (*path)();
  int64_t (*device)();  // the current device's index
  void* (*stream)();    // the current stream
  int (*forward)(const PersistentForwardParams& params, StorageType storage, void* stream);
  int (*backward)(const PersistentBackwardParams& params, StorageType storage, void* stream);
};

bool persistent_takes(const PersistentLaunchers& launchers, CellKind cell, int64_t hidden,
                      int64_t projection, int64_t batch, int64_t steps, at::ScalarType storage);
bool persistent_forward(const PersistentLaunchers& launchers, PersistentForwardParams& params,
                        at::ScalarType storage);
bool persistent_backward(const PersistentLaunchers& launchers, PersistentBackwardParams& params,
                         at::ScalarType storage);

// The driver's PersistentBackend for the build whose launchers `launchers()` returns.
template <const PersistentLaunchers& (*launchers)()>
const PersistentBackend* persistent_backend() {
  static const PersistentBackend backend{
      [](CellKind cell, int64_t hidden, int64_t state_units, int64_t batch, int64_t steps,
         at::ScalarType storage) {
        const int64_t projection = cell == CellKind::kLstmp ? state_units : 0;
        return persistent_takes(launchers(), cell, hidden, projection, batch, steps, storage);
      },
      [](PersistentForwardParams& params, at::ScalarType storage, const at::Tensor&,
         const at::Tensor&) { return persistent_forward(launchers(), params, storage); },
      [](PersistentBackwardParams& params, at::ScalarType storage, const at::Tensor&,
         const at::Tensor&) { return persistent_backward(launchers(), params, storage); }};
  return &backend;
}

}  // namespace tbptt
