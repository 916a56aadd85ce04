// The fused float32 CPU layers: a layer's whole chunk forward, or a span's whole backward, in
// one OpenMP team, the structure of the persistent GPU kernels (csrc/cuda/persistent_kernels.cuh)
// with threads for blocks. Each thread owns blocks of kUnitBlock hidden units; per step it
// computes its units' share of the recurrent product with ATen's batch-reduce GEMM (cpublas::
// brgemm, oneDNN's micro-kernel) on a W_hh packed once per chunk, applies lstm_math.h's element
// functions to its units while the product is in cache, and meets the others at one barrier.
// The ring is written and read through window.h's rules, as on every path.
//
// Forward, per step: tile [B, 4U] = h_{t-1} [B, H] @ packed [H, 4U] (the block's gate columns,
// interleaved: column g U + u is W_hh row g H + unit0 + u), copied into gates_h's gate-major
// columns, then the element pass. Barrier: h_t of every unit is in the other exchange slot.
// Backward, per step: the element pass on own units (dG_t into the window buffer), barrier,
// then dL/dh_{t-1}[:, own] = dG_t [B, G] @ W_hh[:, own] (K-blocked, W_hh with padded rows).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "backends.h"
#include "tbptt/lstm_math.h"

#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(_OPENMP) && defined(__x86_64__)
#define TBPTT_FUSED_CPU 1
#else
#define TBPTT_FUSED_CPU 0
#endif

namespace tbptt {
namespace cpu {
namespace {

constexpr int64_t kUnitBlock = 32;  // U: hidden units per block (the brgemm N is 4U forward)
constexpr int64_t kKBlock = 256;    // K blocking of the products: a W panel stays in L2
constexpr int64_t kLeadPad = 16;    // floats on packed leading dimensions: rows 4 KiB apart
                                    // alias in L1 and L2
// A thread's share of a step's product must be at least this many flops to pay for the
// barrier it adds (~1 us; brgemm runs ~100 GFLOP/s per core here).
constexpr double kMinFlopsPerThread = 1.0e6;
// Above this H (W_hh over 4 MiB) the per-step product streams W_hh from L3 or memory on either
// path and the stepwise path's threaded element pass wins: at H = 1024, B = 32, 64-step chunks,
// fused / stepwise = 1.02 on 2 threads and 1.11 on 1 (notes/cpu_fastpath.md).
constexpr int64_t kMaxFusedHidden = 512;

std::atomic<bool> fused_enabled{true};

// ---- opt-in phase timing (bench/profile_cpu_step.py) ---------------------------------------

// Thread 0's time per phase (every thread runs the same schedule on its own blocks), and each
// layer call's wall time. Off, a phase costs one relaxed load.
enum Phase { kPack, kProduct, kElement, kBarrier, kForwardLayer, kBackwardLayer, kPhases };
const char* const kPhaseNames[kPhases] = {"pack",    "recurrent_product", "element_pass",
                                          "barrier", "forward_layers",    "backward_layers"};
std::atomic<bool> profiling{false};
std::atomic<int64_t> phase_ns[kPhases];

class PhaseClock {
 public:
  explicit PhaseClock(bool on) : on_(on) {
    if (on_) last_ = std::chrono::steady_clock::now();
  }
  // Adds the time since the last lap (or the start) to `phase`.
  void lap(Phase phase) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    phase_ns[phase].fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count(),
        std::memory_order_relaxed);
    last_ = now;
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point last_;
};

bool profiling_on() { return profiling.load(std::memory_order_relaxed); }

// ---- packed weights, cached while the weight is unchanged --------------------------------

// Forward: [H, 4H + pad] = W_hh^T with each unit block's gates interleaved (column
// blk * 4U + g * Ub + u is W_hh row g * H + blk * U + u; Ub the block's units).
// Backward: [G, H + pad] = W_hh with padded rows.
enum class PackKind { kForward, kBackward };

// Identifies a weight's contents: the tensor (weakly held: a freed one never matches), its data
// pointer and version counter (bumped by in-place updates, an optimizer's included), and a
// sample of its values (in-place changes through .data bypass the version counter).
constexpr int64_t kFingerprintValues = 64;

struct WeightKey {
  c10::weak_intrusive_ptr<c10::TensorImpl> tensor{c10::intrusive_ptr<c10::TensorImpl>()};
  const void* data = nullptr;
  int64_t version = -1;
  std::vector<float> sample;

  static WeightKey of(const at::Tensor& w) {
    WeightKey key;
    key.tensor = c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr());
    key.data = w.data_ptr();
    key.version = w._version();
    const float* values = w.data_ptr<float>();
    const int64_t n = w.numel(), stride = std::max<int64_t>(1, n / kFingerprintValues);
    for (int64_t i = 0; i < n; i += stride) key.sample.push_back(values[i]);
    return key;
  }
  bool matches(const at::Tensor& w) const {
    const c10::intrusive_ptr<c10::TensorImpl> alive = tensor.lock();
    if (!alive || alive.get() != w.unsafeGetTensorImpl() || data != w.data_ptr() ||
        version != w._version()) {
      return false;
    }
    const float* values = w.data_ptr<float>();
    const int64_t n = w.numel(), stride = std::max<int64_t>(1, n / kFingerprintValues);
    size_t j = 0;
    for (int64_t i = 0; i < n; i += stride, ++j) {
      if (std::memcmp(&values[i], &sample[j], sizeof(float)) != 0) return false;
    }
    return true;
  }
};

struct PackEntry {
  WeightKey key;
  PackKind kind;
  at::Tensor packed;
};

std::mutex pack_mutex;
std::list<PackEntry> pack_cache;  // most recent first
constexpr size_t kPackCacheEntries = 8;
std::atomic<int64_t> packs_made{0};

at::Tensor make_pack(const at::Tensor& w, PackKind kind) {
  const int64_t G = w.size(0), H = w.size(1);
  if (kind == PackKind::kBackward) {
    at::Tensor packed = at::zeros({G, H + kLeadPad}, w.options());
    packed.narrow(1, 0, H).copy_(w);
    return packed;
  }
  at::Tensor packed = at::zeros({H, G + kLeadPad}, w.options());
  const float* src = w.data_ptr<float>();  // [G, H]
  float* dst = packed.data_ptr<float>();   // [H, G + pad]
  const int64_t ld = G + kLeadPad;
  for (int64_t unit0 = 0; unit0 < H; unit0 += kUnitBlock) {
    const int64_t block_units = std::min(kUnitBlock, H - unit0);
    for (int64_t g = 0; g < 4; ++g) {
      for (int64_t u = 0; u < block_units; ++u) {
        const float* row = src + (g * H + unit0 + u) * H;
        float* column = dst + 4 * unit0 + g * block_units + u;
        for (int64_t k = 0; k < H; ++k) column[k * ld] = row[k];
      }
    }
  }
  return packed;
}

at::Tensor packed_weight(const at::Tensor& w, PackKind kind) {
  std::lock_guard<std::mutex> lock(pack_mutex);
  for (auto it = pack_cache.begin(); it != pack_cache.end(); ++it) {
    if (it->kind == kind && it->key.matches(w)) {
      pack_cache.splice(pack_cache.begin(), pack_cache, it);
      return it->packed;
    }
  }
  pack_cache.remove_if([](const PackEntry& e) { return e.key.tensor.expired(); });
  PackEntry entry{WeightKey::of(w), kind, make_pack(w, kind)};
  packs_made.fetch_add(1);
  pack_cache.push_front(entry);
  if (pack_cache.size() > kPackCacheEntries) pack_cache.pop_back();
  return entry.packed;
}

// ---- the team ----------------------------------------------------------------------------

// Threads for a layer of H units and B rows: at most torch's intra-op threads, one unit block
// each at least, and kMinFlopsPerThread of a step's product each.
int64_t team_size(int64_t hidden, int64_t batch) {
  const int64_t blocks = (hidden + kUnitBlock - 1) / kUnitBlock;
  const double flops = 2.0 * batch * hidden * 4.0 * hidden;
  const int64_t by_work = std::max<int64_t>(1, static_cast<int64_t>(flops / kMinFlopsPerThread));
  return std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), blocks, by_work}));
}

// Runs body(thread, threads) on `threads` OpenMP threads (inline for one); body may hold
// `#pragma omp barrier`s, reached by every thread the same number of times.
template <typename Body>
void run_team(int64_t threads, Body&& body) {
  if (threads == 1) {
    body(0, 1);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(threads))
  body(omp_get_thread_num(), omp_get_num_threads());
#else
  body(0, 1);
#endif
}

inline void team_barrier(int64_t threads) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp barrier
  }
#endif
}

// The unit blocks [first, last) of thread `t` of `n`.
void own_blocks(int64_t hidden, int64_t t, int64_t n, int64_t* first, int64_t* last) {
  const int64_t blocks = (hidden + kUnitBlock - 1) / kUnitBlock;
  *first = blocks * t / n;
  *last = blocks * (t + 1) / n;
}

// C [M, N] (+)= A [M, K] @ B [K, N], K-blocked (row-major, leading dimensions given).
void product(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc) {
#if TBPTT_FUSED_CPU
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    at::native::cpublas::brgemm(M, N, std::min(kKBlock, K - k0), lda, ldb, ldc, k0 > 0,
                                A + k0, B + k0 * ldb, C);
  }
#endif
}

// ---- forward and backward of one layer ---------------------------------------------------

bool forward_layer(PersistentForwardParams& p, at::ScalarType storage, const at::Tensor& w_hh) {
  const int64_t H = p.hidden, B = p.batch, G = 4 * H;
  const bool timed = profiling_on();
  PhaseClock layer_clock(timed), pack_clock(timed);
  const at::Tensor packed = packed_weight(w_hh, PackKind::kForward);  // [H, G + pad]
  pack_clock.lap(kPack);
  const float* wp = packed.data_ptr<float>();
  const int64_t ldw = G + kLeadPad;
  const int64_t threads = team_size(H, B);
  float* gates_h = static_cast<float*>(p.gates_h);  // [B, G]
  run_team(threads, [&](int64_t t, int64_t n) {
    int64_t first = 0, last = 0;
    own_blocks(H, t, n, &first, &last);
    PhaseClock clock(timed && t == 0);
    std::vector<float> tile(static_cast<size_t>(B * 4 * kUnitBlock));  // [B, 4U]
    for (int64_t s = 0; s < p.steps; ++s) {
      const float* h_prev = static_cast<const float*>(p.hidden_exchange) + (s & 1) * B * H;
      ForwardStepParams step;
      step.batch = B;
      step.hidden = H;
      step.gates_x = static_cast<const float*>(p.gates_x) + s * B * G;
      step.gates_h = gates_h;
      step.cell = p.cell;
      step.hidden_prev = h_prev;
      step.hidden_next = static_cast<float*>(p.hidden_exchange) + ((s + 1) & 1) * B * H;
      step.out = static_cast<float*>(p.out) + s * B * H;
      set_record_targets(step, p.record, s, sizeof(float), sizeof(float), p.scratch_gates,
                         p.scratch_cell, p.scratch_hidden);
      step.flags = p.flags != nullptr ? p.flags + s * B : p.no_flags;
      step.flags_next = (p.flags != nullptr && s + 1 < p.steps) ? p.flags + (s + 1) * B : p.no_flags;
      for (int64_t block = first; block < last; ++block) {
        const int64_t unit0 = block * kUnitBlock, units = std::min(kUnitBlock, H - unit0);
        product(B, 4 * units, H, h_prev, H, wp + 4 * unit0, ldw, tile.data(), 4 * units);
        clock.lap(kProduct);
        for (int64_t b = 0; b < B; ++b) {  // interleaved gates -> gates_h's gate-major columns
          for (int64_t g = 0; g < 4; ++g) {
            std::memcpy(gates_h + b * G + g * H + unit0, tile.data() + b * 4 * units + g * units,
                        sizeof(float) * units);
          }
        }
        forward_units_float(step, unit0, unit0 + units);
        clock.lap(kElement);
      }
      team_barrier(n);  // h_t of every unit written; slot s & 1 free again
      clock.lap(kBarrier);
    }
  });
  layer_clock.lap(kForwardLayer);
  (void)storage;
  return true;
}

bool backward_layer(PersistentBackwardParams& p, at::ScalarType storage, const at::Tensor& w_hh) {
  const int64_t H = p.hidden, B = p.batch, G = 4 * H, W = p.steps;
  const bool timed = profiling_on();
  PhaseClock layer_clock(timed), pack_clock(timed);
  const at::Tensor packed = packed_weight(w_hh, PackKind::kBackward);  // [G, H + pad]
  pack_clock.lap(kPack);
  const float* wp = packed.data_ptr<float>();
  const int64_t ldw = H + kLeadPad;
  const int64_t threads = team_size(H, B);
  float* grad_hidden = static_cast<float*>(p.grad_hidden);  // [B, H]
  run_team(threads, [&](int64_t t, int64_t n) {
    int64_t first = 0, last = 0;
    own_blocks(H, t, n, &first, &last);
    PhaseClock clock(timed && t == 0);
    for (int64_t j = W - 1; j >= 0; --j) {
      BackwardStepParams step;
      step.batch = B;
      step.hidden = H;
      set_backward_sources(step, p.source, j, sizeof(float), sizeof(float));
      step.flags = p.flags + j * B;
      step.flags_after = j < W - 1 ? p.flags + (j + 1) * B : p.no_flags;
      step.carry_scale = p.carry_scales != nullptr ? p.carry_scales[j] : 1.0;
      step.grad_out = j >= p.grad_out_first
                          ? static_cast<const float*>(p.grad_out) + (j - p.grad_out_first) * B * H
                          : static_cast<const float*>(p.no_grad_out);
      step.grad_hidden_next = j == W - 1 ? p.grad_h_n : grad_hidden;
      step.grad_hidden_held = p.grad_held;
      step.grad_cell = p.grad_cell;
      step.grad_gates = static_cast<float*>(p.grad_gates) + j * B * G;
      step.hidden_prev_seen = static_cast<float*>(p.hidden_prev_seen) + j * B * H;
      for (int64_t block = first; block < last; ++block) {
        const int64_t unit0 = block * kUnitBlock, units = std::min(kUnitBlock, H - unit0);
        backward_units_float(step, unit0, unit0 + units);
      }
      clock.lap(kElement);
      team_barrier(n);  // dG_t of every unit written
      clock.lap(kBarrier);
      // dL/dh_{t-1}[:, own] = dG_t @ W_hh[:, own]: read by this thread's next element pass only
      const float* dg = static_cast<const float*>(step.grad_gates);
      for (int64_t block = first; block < last; ++block) {
        const int64_t unit0 = block * kUnitBlock, units = std::min(kUnitBlock, H - unit0);
        product(B, units, G, dg, G, wp + unit0, ldw, grad_hidden + unit0, H);
      }
      clock.lap(kProduct);
      // No barrier: the next step's element pass on these units reads only what this thread
      // wrote, and the dG row it writes is not the one the others may still be reading.
    }
  });
  layer_clock.lap(kBackwardLayer);
  (void)storage;
  return true;
}

std::atomic<bool>& path_flag() { return fused_enabled; }

bool takes(int64_t hidden, int64_t batch, int64_t steps, at::ScalarType storage) {
  (void)batch;
  (void)steps;
  return storage == at::kFloat && hidden <= kMaxFusedHidden && path_flag().load() &&
         fused_unavailable_reason().empty();
}

}  // namespace

std::string fused_unavailable_reason() {
#if !TBPTT_FUSED_CPU
  return "this build has no cpublas::brgemm, OpenMP or x86-64";
#else
  if (!at::hasMKLDNN()) return "torch was built without oneDNN";
  if (!at::globalContext().userEnabledMkldnn()) {
    return "torch.backends.mkldnn.enabled is False (brgemm would quietly fall back to one "
           "slow GEMM per call)";
  }
  if (!__builtin_cpu_supports("avx2")) return "the CPU lacks AVX2 (brgemm's micro-kernel needs it)";
  return "";
#endif
}

const PersistentBackend* fused_layers() {
#if TBPTT_FUSED_CPU
  static const PersistentBackend fused{takes, forward_layer, backward_layer};
  return &fused;
#else
  return nullptr;
#endif
}

void set_cpu_path(const std::string& name) {
  TORCH_CHECK_VALUE(name == "auto" || name == "stepwise",
                    "tbptt: the CPU path must be 'auto' or 'stepwise', got '", name, "'");
  path_flag().store(name == "auto");
}

std::string cpu_path() { return path_flag().load() ? "auto" : "stepwise"; }

int64_t parallel_for_threads(int64_t tasks) {
  std::mutex mutex;
  std::set<std::thread::id> seen;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    // long enough that a team of threads really shares the tasks
    volatile double sink = 0;
    for (int64_t i = begin; i < end; ++i) {
      for (int k = 0; k < 200000; ++k) sink = sink + k;
    }
    std::lock_guard<std::mutex> lock(mutex);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}

int64_t fused_team_threads(int64_t hidden, int64_t batch) {
  std::mutex mutex;
  std::set<std::thread::id> seen;
  run_team(team_size(hidden, batch), [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}

int64_t weight_packs_made() { return packs_made.load(); }

std::map<std::string, double> fused_profile(bool enable) {
  std::map<std::string, double> seconds;
  for (int i = 0; i < kPhases; ++i) seconds[kPhaseNames[i]] = phase_ns[i].exchange(0) * 1e-9;
  profiling.store(enable);
  return seconds;
}

}  // namespace cpu
}  // namespace tbptt
