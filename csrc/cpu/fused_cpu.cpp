// The fused float32 CPU layers of the LSTM and the GRU: a layer's whole chunk forward, or a
// span's whole backward, in one OpenMP team, the structure of the persistent GPU kernels
// (csrc/cuda/persistent_kernels.cuh) with threads for blocks. Each thread owns blocks of
// kUnitBlock hidden units; per step it computes its units' share of the recurrent product with
// ATen's batch-reduce GEMM (cpublas::brgemm, oneDNN's micro-kernel) on a W_hh packed once per
// chunk, applies the cell's element functions (cells.h) to its units while the product is in
// cache, and meets the others at one barrier. The ring is written and read through window.h's
// rules, as on every path. Shapes: G = kGates H (4H LSTM, 3H GRU: `gates` below), R = 4H the
// width of a record and of a grad_gates row (cells.h).
//
// Forward, per step: tile [B, gates U] = h_{t-1} [B, H] @ packed [H, gates U] (the block's gate
// columns, interleaved: column g U + u is W_hh row g H + unit0 + u), copied into gates_h's
// gate-major columns, then the element pass. Barrier: h_t of every unit is in the other
// exchange slot. Backward, per step: the element pass on own units (dG_t into the window
// buffer), barrier, then dL/dh_{t-1}[:, own] = dG_t [B, G] @ W_hh[:, own] (K-blocked, W_hh with
// padded rows; dG_t's rows R apart: the GRU's dGh is the first 3H of each).
//
// bfloat16 (storage T = bf16, acc = float: the numerics of the CUDA 16-bit paths): the same
// schedule with bf16 operands (h_{t-1}, dG_t) and a bf16 W_hh packed per unit block in the
// VNNI layout oneDNN's bf16 brgemm reads (pairs of consecutive K rows interleaved: element
// (k, n) of a block's panel at (k / 2) * 2 ld + 2 n + k % 2), products accumulated in float32
// (AMX or AVX512-BF16), then rounded to bf16 where the stepwise path's GEMM output would be
// (gates_h, dL/dh_{t-1}); gate math and the cell state in float32 (lstm_math.h, acc_t =
// float); the ring holds bf16 gates, h and x and a float32 c. No K blocking (one kernel per
// shape: on AMX every change of kernel reloads the tile configuration); K = H must be even.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
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
#include <type_traits>
#include <vector>

#include "backends.h"
#include "tbptt/cells.h"

#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(_OPENMP) && defined(__x86_64__)
#define TBPTT_FUSED_CPU 1
#else
#define TBPTT_FUSED_CPU 0
#endif
#if TBPTT_FUSED_CPU && defined(CPUBLAS_BRGEMM_BF16BF16F32)
#define TBPTT_FUSED_CPU_BF16 1
#else
#define TBPTT_FUSED_CPU_BF16 0
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
// bfloat16: W_hh is half the bytes and the products run on AMX / AVX512-BF16; fused / stepwise
// per step (bf16, B = 32, 64-step chunks, one thread, notes/cpu_fastpath.md) was 0.90, 0.82, 0.81
// and 0.85 at H = 256, 512, 768 and 1024. Not measured above.
constexpr int64_t kMaxFusedHiddenBf16 = 1024;

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

// A weight W [rows, K] (W_hh [G, O]: rows = G = gates H, K = O the size of h; the LSTM with
// projections' W_hr [P, H]: gates 1) packed for one of the two products a team computes by
// unit (or column) blocks:
// Forward (h @ W^T, by blocks of the rows' units, units = rows / gates): [K, rows + pad] = W^T
// with each unit block's gates interleaved (column gates * unit0 + g * Ub + u is W row
// g * units + unit0 + u; Ub the block's units).
// Backward (x @ W, by blocks of W's K columns): [rows, K + pad] = W with padded rows.
// bfloat16 (VNNI, see the top): forward, per unit block, the panel [K, gates U] of its
// interleaved gate columns (ld gates U, kUnitBlock units a block whatever the block's own
// count); backward, per block of W's columns, the panel [rows, U] = W[:, block] (ld U).
enum class PackKind { kForward, kBackward, kForwardVnni, kBackwardVnni };

// Identifies a weight's contents: the tensor (weakly held: a freed one never matches), its data
// pointer and version counter (bumped by in-place updates, an optimizer's included), and a
// sample of its values (in-place changes through .data bypass the version counter).
constexpr int64_t kFingerprintValues = 64;

struct WeightKey {
  c10::weak_intrusive_ptr<c10::TensorImpl> tensor{c10::intrusive_ptr<c10::TensorImpl>()};
  const void* data = nullptr;
  int64_t version = -1;
  std::vector<char> sample;  // the sampled values' bytes (float32 or bfloat16)

  static WeightKey of(const at::Tensor& w) {
    WeightKey key;
    key.tensor = c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr());
    key.data = w.data_ptr();
    key.version = w._version();
    const char* values = static_cast<const char*>(w.data_ptr());
    const int64_t size = w.element_size();
    const int64_t n = w.numel(), stride = std::max<int64_t>(1, n / kFingerprintValues);
    for (int64_t i = 0; i < n; i += stride) {
      key.sample.insert(key.sample.end(), values + i * size, values + (i + 1) * size);
    }
    return key;
  }
  bool matches(const at::Tensor& w) const {
    const c10::intrusive_ptr<c10::TensorImpl> alive = tensor.lock();
    if (!alive || alive.get() != w.unsafeGetTensorImpl() || data != w.data_ptr() ||
        version != w._version()) {
      return false;
    }
    const char* values = static_cast<const char*>(w.data_ptr());
    const int64_t size = w.element_size();
    const int64_t n = w.numel(), stride = std::max<int64_t>(1, n / kFingerprintValues);
    if (static_cast<int64_t>(sample.size()) != (n + stride - 1) / stride * size) return false;
    size_t j = 0;
    for (int64_t i = 0; i < n; i += stride, j += size) {
      if (std::memcmp(values + i * size, &sample[j], size) != 0) return false;
    }
    return true;
  }
};

struct PackEntry {
  WeightKey key;
  PackKind kind;
  int64_t gates;
  at::Tensor packed;
};

std::mutex pack_mutex;
std::list<PackEntry> pack_cache;  // most recent first
constexpr size_t kPackCacheEntries = 8;
std::atomic<int64_t> packs_made{0};

// Element (k, n) of a VNNI panel with leading dimension ld (in columns; K even).
inline int64_t vnni_index(int64_t k, int64_t n, int64_t ld) { return (k / 2) * 2 * ld + 2 * n + (k & 1); }

at::Tensor make_vnni_pack(const at::Tensor& w, PackKind kind, int64_t gates) {
  const int64_t rows = w.size(0), K = w.size(1);
  const uint16_t* src = static_cast<const uint16_t*>(w.data_ptr());  // [rows, K] bf16 bits
  if (kind == PackKind::kForwardVnni) {
    const int64_t units = rows / gates, blocks = (units + kUnitBlock - 1) / kUnitBlock;
    const int64_t ld = gates * kUnitBlock, panel = K * ld;  // [K, gates U] per block
    at::Tensor packed = at::zeros({blocks * panel}, w.options());
    uint16_t* dst = static_cast<uint16_t*>(packed.data_ptr());
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t unit0 = blk * kUnitBlock, block_units = std::min(kUnitBlock, units - unit0);
      for (int64_t g = 0; g < gates; ++g) {
        for (int64_t u = 0; u < block_units; ++u) {
          const uint16_t* row = src + (g * units + unit0 + u) * K;
          uint16_t* out = dst + blk * panel;
          for (int64_t k = 0; k < K; ++k) out[vnni_index(k, g * block_units + u, ld)] = row[k];
        }
      }
    }
    return packed;
  }
  const int64_t blocks = (K + kUnitBlock - 1) / kUnitBlock;
  const int64_t ld = kUnitBlock, panel = rows * ld;  // [rows, U] per block of columns
  at::Tensor packed = at::zeros({blocks * panel}, w.options());
  uint16_t* dst = static_cast<uint16_t*>(packed.data_ptr());
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t col0 = blk * kUnitBlock, cols = std::min(kUnitBlock, K - col0);
    uint16_t* out = dst + blk * panel;
    for (int64_t k = 0; k < rows; ++k) {
      for (int64_t u = 0; u < cols; ++u) out[vnni_index(k, u, ld)] = src[k * K + col0 + u];
    }
  }
  return packed;
}

at::Tensor make_pack(const at::Tensor& w, PackKind kind, int64_t gates) {
  if (kind == PackKind::kForwardVnni || kind == PackKind::kBackwardVnni) {
    return make_vnni_pack(w, kind, gates);
  }
  const int64_t rows = w.size(0), K = w.size(1);
  if (kind == PackKind::kBackward) {
    at::Tensor packed = at::zeros({rows, K + kLeadPad}, w.options());
    packed.narrow(1, 0, K).copy_(w);
    return packed;
  }
  const int64_t units = rows / gates;
  at::Tensor packed = at::zeros({K, rows + kLeadPad}, w.options());
  const float* src = w.data_ptr<float>();  // [rows, K]
  float* dst = packed.data_ptr<float>();   // [K, rows + pad]
  const int64_t ld = rows + kLeadPad;
  for (int64_t unit0 = 0; unit0 < units; unit0 += kUnitBlock) {
    const int64_t block_units = std::min(kUnitBlock, units - unit0);
    for (int64_t g = 0; g < gates; ++g) {
      for (int64_t u = 0; u < block_units; ++u) {
        const float* row = src + (g * units + unit0 + u) * K;
        float* column = dst + gates * unit0 + g * block_units + u;
        for (int64_t k = 0; k < K; ++k) column[k * ld] = row[k];
      }
    }
  }
  return packed;
}

// The packed form of w ([rows, K]; `gates` gate blocks of rows / gates units) for `kind`,
// made once while w is unchanged.
at::Tensor packed_weight(const at::Tensor& w, PackKind kind, int64_t gates) {
  std::lock_guard<std::mutex> lock(pack_mutex);
  for (auto it = pack_cache.begin(); it != pack_cache.end(); ++it) {
    if (it->kind == kind && it->gates == gates && it->key.matches(w)) {
      pack_cache.splice(pack_cache.begin(), pack_cache, it);
      return it->packed;
    }
  }
  pack_cache.remove_if([](const PackEntry& e) { return e.key.tensor.expired(); });
  PackEntry entry{WeightKey::of(w), kind, gates, make_pack(w, kind, gates)};
  packs_made.fetch_add(1);
  pack_cache.push_front(entry);
  if (pack_cache.size() > kPackCacheEntries) pack_cache.pop_back();
  return entry.packed;
}

// ---- the team ----------------------------------------------------------------------------

// Threads for a layer of H units and B rows whose step multiplies by `weights` elements (W_hh's
// 4H x H for the LSTM; the projection's W_hr too): at most torch's intra-op threads, one unit
// block each at least, and kMinFlopsPerThread of a step's products each.
int64_t team_size(int64_t hidden, int64_t batch, int64_t weights) {
  const int64_t blocks = (hidden + kUnitBlock - 1) / kUnitBlock;
  const double flops = 2.0 * batch * double(weights);
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

// C [M, N] = A [M, K] @ B [K, N] in float32, A bf16 row-major, B a bf16 VNNI panel (K even).
void product(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t lda,
             const c10::BFloat16* B, int64_t ldb, float* C, int64_t ldc) {
#if TBPTT_FUSED_CPU_BF16
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, false, A, B, C, /*is_vnni=*/true);
#endif
}

// What the float32 results of the products become in storage type T.
inline void store(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, sizeof(float) * n); }
// float32 -> bfloat16, rounded to nearest even (c10::BFloat16's rounding, NaN kept a NaN),
// with integer operations only so that the loop vectorises (this file is built with fast math).
inline void store(c10::BFloat16* dst, const float* src, int64_t n) {
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src);
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = in[i];
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    out[i] = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
  }
}

// On AMX the tile configuration a thread's brgemm calls loaded is released when its team ends.
inline void release_products(bool bf16) {
#if TBPTT_FUSED_CPU_BF16
  if (bf16) at::native::cpublas::brgemm_release(/*is_vnni=*/true);
#else
  (void)bf16;
#endif
}

inline void forward_units(const ForwardStepParams& p, int64_t begin, int64_t end, float*) {
  forward_units_float(p, begin, end);
}
inline void forward_units(const ForwardStepParams& p, int64_t begin, int64_t end, c10::BFloat16*) {
  forward_units_bf16(p, begin, end);
}
inline void backward_units(const BackwardStepParams& p, int64_t begin, int64_t end, float*) {
  backward_units_float(p, begin, end);
}
inline void backward_units(const BackwardStepParams& p, int64_t begin, int64_t end, c10::BFloat16*) {
  backward_units_bf16(p, begin, end);
}

// ---- forward and backward of one layer ---------------------------------------------------

// Blocks of kUnitBlock: the product of a block [B, n] into its place in out [B, ld_out] T,
// through the float tile for bfloat16 (the product is float32 either way).
template <typename T>
void product_into(int64_t B, int64_t n, int64_t K, const T* a, int64_t lda, const T* panel,
                  int64_t ldw, std::vector<float>& tile, T* out, int64_t ld_out) {
  if constexpr (std::is_same<T, float>::value) {
    product(B, n, K, a, lda, panel, ldw, out, ld_out);
    (void)tile;
  } else {
    product(B, n, K, a, lda, panel, ldw, tile.data(), n);
    for (int64_t b = 0; b < B; ++b) store(out + b * ld_out, tile.data() + b * n, n);
  }
}

// Where block `block` (first column col0) of a packed weight begins: float32 packs are one
// matrix (a column offset, `columns_per_unit` columns a unit), bfloat16 ones a panel of
// panel_rows x ld per block.
template <typename T>
const T* panel_of(const T* packed, int64_t block, int64_t col0, int64_t columns_per_unit,
                  int64_t panel_rows, int64_t ld) {
  if constexpr (std::is_same<T, float>::value) return packed + columns_per_unit * col0;
  return packed + block * panel_rows * ld;
}

// The chunk forward of one layer (p.cell_kind: the LSTM, the GRU, or the LSTM with projections
// when p.projection > 0). One barrier a step; two with a projection: phase A (own H units: the
// recurrent product and the cell's element: c, and m for the projection), barrier, phase B (own
// P columns: m W_hr^T and the projection's element: h), barrier.
template <typename T>
bool forward_layer_t(PersistentForwardParams& p, const at::Tensor& w_hh, const at::Tensor& w_hr) {
  constexpr bool kBf16 = !std::is_same<T, float>::value;
  const int64_t gates = gates_of(p.cell_kind);
  const int64_t H = p.hidden, B = p.batch, G = gates * H;
  const int64_t P = p.projection, O = P > 0 ? P : H;  // O: h's width, the product's K
  const bool timed = profiling_on();
  PhaseClock layer_clock(timed), pack_clock(timed);
  const at::Tensor packed =  // float32: [O, G + pad]; bf16: an [O, gates U] VNNI panel per block
      packed_weight(w_hh, kBf16 ? PackKind::kForwardVnni : PackKind::kForward, gates);
  at::Tensor packed_hr;  // projection: float32 [H, P + pad] = W_hr^T; bf16 an [H, U] panel per block
  if (P > 0) packed_hr = packed_weight(w_hr, kBf16 ? PackKind::kForwardVnni : PackKind::kForward, 1);
  pack_clock.lap(kPack);
  const T* wp = static_cast<const T*>(packed.data_ptr());
  const T* wp_hr = P > 0 ? static_cast<const T*>(packed_hr.data_ptr()) : nullptr;
  const int64_t ldw = kBf16 ? gates * kUnitBlock : G + kLeadPad;
  const int64_t ld_hr = kBf16 ? kUnitBlock : P + kLeadPad;
  const int64_t threads = team_size(H, B, w_hh.numel() + (P > 0 ? w_hr.numel() : 0));
  T* gates_h = static_cast<T*>(p.gates_h);      // [B, G]
  T* hidden_m = static_cast<T*>(p.hidden_m);    // projection: [B, H] m_t
  T* projected = static_cast<T*>(p.projected);  // projection: [B, P] m_t W_hr^T
  run_team(threads, [&](int64_t t, int64_t n) {
    int64_t first = 0, last = 0, first_col = 0, last_col = 0;  // own blocks of H; of P
    own_blocks(H, t, n, &first, &last);
    if (P > 0) own_blocks(P, t, n, &first_col, &last_col);
    PhaseClock clock(timed && t == 0);
    std::vector<float> tile(static_cast<size_t>(B * gates * kUnitBlock));  // [B, gates U]
    for (int64_t s = 0; s < p.steps; ++s) {
      const T* h_prev = static_cast<const T*>(p.hidden_exchange) + (s & 1) * B * O;  // [B, O]
      ForwardStepParams step;
      step.cell_kind = p.cell_kind;
      step.batch = B;
      step.hidden = H;
      step.gates_x = static_cast<const T*>(p.gates_x) + s * B * G;
      step.gates_h = gates_h;
      step.bias_hn = p.bias_hn;
      step.cell = p.cell;
      step.hidden_prev = h_prev;
      step.hidden_next = static_cast<T*>(p.hidden_exchange) + ((s + 1) & 1) * B * O;
      T* out = static_cast<T*>(p.out) + s * B * O;  // [B, O]
      step.out = P > 0 ? hidden_m : out;
      set_record_targets(step, p.record, s, sizeof(T), p.scratch_gates, p.scratch_cell,
                         p.scratch_hidden);
      step.flags = p.flags != nullptr ? p.flags + s * B : p.no_flags;
      step.flags_next = (p.flags != nullptr && s + 1 < p.steps) ? p.flags + (s + 1) * B : p.no_flags;
      for (int64_t block = first; block < last; ++block) {
        const int64_t unit0 = block * kUnitBlock, units = std::min(kUnitBlock, H - unit0);
        const int64_t n_cols = gates * units;  // the block's columns, gates interleaved
        product(B, n_cols, O, h_prev, O, panel_of(wp, block, unit0, gates, O, ldw), ldw,
                tile.data(), n_cols);
        clock.lap(kProduct);
        for (int64_t b = 0; b < B; ++b) {  // interleaved gates -> gates_h's gate-major columns
          for (int64_t g = 0; g < gates; ++g) {
            store(gates_h + b * G + g * H + unit0, tile.data() + b * n_cols + g * units, units);
          }
        }
        forward_units(step, unit0, unit0 + units, static_cast<T*>(nullptr));
        clock.lap(kElement);
      }
      team_barrier(n);  // h_t (m_t with a projection) of every unit written
      clock.lap(kBarrier);
      if (P == 0) continue;  // slot s & 1 is free again
      ForwardStepParams projection = step;  // over [B, P]: h = m W_hr^T, hold, out, records
      projection.cell_kind = CellKind::kProjection;
      projection.hidden = P;
      projection.gates_h = projected;
      projection.out = out;
      for (int64_t block = first_col; block < last_col; ++block) {
        const int64_t col0 = block * kUnitBlock, cols = std::min(kUnitBlock, P - col0);
        product_into(B, cols, H, hidden_m, H, panel_of(wp_hr, block, col0, 1, H, ld_hr), ld_hr,
                     tile, projected + col0, P);
        clock.lap(kProduct);
        forward_units(projection, col0, col0 + cols, static_cast<T*>(nullptr));
        clock.lap(kElement);
      }
      team_barrier(n);  // h_t of every column written; m free again
      clock.lap(kBarrier);
    }
    release_products(kBf16);
  });
  layer_clock.lap(kForwardLayer);
  return true;
}

// The span backward of one layer, newest step first. Without a projection: the element pass
// on own units (dG_t into the window buffer), barrier, dL/dh_{t-1}[:, own] = dG_t W_hh[:, own].
// With one: phase A (own P columns: the projection's element, dh_eff), barrier, phase B (own H
// units: dm = dh_eff W_hr[:, own], the LSTM's element with dL/dh = dm), barrier, phase C (own
// P columns: dL/dh_{t-1} = dG_t W_hh[:, own]), which the same thread's next phase A reads.
template <typename T>
bool backward_layer_t(PersistentBackwardParams& p, const at::Tensor& w_hh, const at::Tensor& w_hr) {
  constexpr bool kBf16 = !std::is_same<T, float>::value;
  const int64_t gates = gates_of(p.cell_kind);
  const int64_t H = p.hidden, B = p.batch, G = gates * H, R = kRecordsPerUnit * H, W = p.steps;
  const int64_t P = p.projection, O = P > 0 ? P : H;
  const bool timed = profiling_on();
  PhaseClock layer_clock(timed), pack_clock(timed);
  const at::Tensor packed =  // float32: [G, O + pad]; bf16: a [G, U] VNNI panel per block of O
      packed_weight(w_hh, kBf16 ? PackKind::kBackwardVnni : PackKind::kBackward, gates);
  at::Tensor packed_hr;  // projection: float32 [P, H + pad] = W_hr; bf16 a [P, U] panel per block of H
  if (P > 0) packed_hr = packed_weight(w_hr, kBf16 ? PackKind::kBackwardVnni : PackKind::kBackward, 1);
  pack_clock.lap(kPack);
  const T* wp = static_cast<const T*>(packed.data_ptr());
  const T* wp_hr = P > 0 ? static_cast<const T*>(packed_hr.data_ptr()) : nullptr;
  const int64_t ldw = kBf16 ? kUnitBlock : O + kLeadPad;
  const int64_t ld_hr = kBf16 ? kUnitBlock : H + kLeadPad;
  const int64_t threads = team_size(H, B, w_hh.numel() + (P > 0 ? w_hr.numel() : 0));
  T* grad_hidden = static_cast<T*>(p.grad_hidden);  // [B, O]
  T* grad_m = static_cast<T*>(p.grad_m);            // projection: [B, H] dm
  run_team(threads, [&](int64_t t, int64_t n) {
    int64_t first = 0, last = 0, first_col = 0, last_col = 0;  // own blocks of H; of O
    own_blocks(H, t, n, &first, &last);
    own_blocks(O, t, n, &first_col, &last_col);
    PhaseClock clock(timed && t == 0);
    std::vector<float> tile(kBf16 ? static_cast<size_t>(B * kUnitBlock) : 0);  // [B, U]
    for (int64_t j = W - 1; j >= 0; --j) {
      BackwardStepParams step;
      step.cell_kind = p.cell_kind;
      step.batch = B;
      step.hidden = H;
      set_backward_sources(step, p.source, j, sizeof(T), sizeof(float));
      step.flags = p.flags + j * B;
      step.flags_after = j < W - 1 ? p.flags + (j + 1) * B : p.no_flags;
      step.carry_scale = p.carry_scales != nullptr ? p.carry_scales[j] : 1.0;
      step.grad_out = j >= p.grad_out_first
                          ? static_cast<const T*>(p.grad_out) + (j - p.grad_out_first) * B * O
                          : static_cast<const T*>(p.no_grad_out);
      step.grad_hidden_next = j == W - 1 ? p.grad_h_n : grad_hidden;
      step.grad_hidden_held = p.grad_held;
      step.grad_cell = p.grad_cell;
      step.grad_gates = static_cast<T*>(p.grad_gates) + j * B * R;
      step.hidden_prev_seen = static_cast<T*>(p.hidden_prev_seen) + j * B * O;
      const T* grad_projected = nullptr;  // projection: [B, P] dh_eff of step j
      if (P > 0) {
        BackwardStepParams projection = step;  // over [B, P]
        projection.cell_kind = CellKind::kProjection;
        projection.hidden = P;
        projection.grad_gates = static_cast<T*>(p.grad_projected) + j * B * P;
        grad_projected = static_cast<const T*>(projection.grad_gates);
        for (int64_t block = first_col; block < last_col; ++block) {
          const int64_t col0 = block * kUnitBlock, cols = std::min(kUnitBlock, P - col0);
          backward_units(projection, col0, col0 + cols, static_cast<T*>(nullptr));
        }
        clock.lap(kElement);
        team_barrier(n);  // dh_eff of every column written
        clock.lap(kBarrier);
        // The LSTM's element over [B, H] with dL/dh = dm and nothing carried in h
        // (lstmp_math.h): h's inputs are zeros, its outputs scratch.
        step.cell_kind = CellKind::kLstm;
        step.hidden_prev = p.zeros_h;
        step.hidden_prev_seen = p.scratch_h;
        step.grad_out = grad_m;
        step.grad_hidden_next = p.zeros_h;
        step.grad_hidden_held = p.held_h;
      }
      for (int64_t block = first; block < last; ++block) {
        const int64_t unit0 = block * kUnitBlock, units = std::min(kUnitBlock, H - unit0);
        if (P > 0) {  // dm[:, own] = dh_eff [B, P] @ W_hr[:, own]
          product_into(B, units, P, grad_projected, P, panel_of(wp_hr, block, unit0, 1, P, ld_hr),
                       ld_hr, tile, grad_m + unit0, H);
          clock.lap(kProduct);
        }
        backward_units(step, unit0, unit0 + units, static_cast<T*>(nullptr));
      }
      clock.lap(kElement);
      team_barrier(n);  // dG_t of every unit written
      clock.lap(kBarrier);
      // dL/dh_{t-1}[:, own] = dG_t @ W_hh[:, own]: read by this thread's next element pass only
      const T* dg = static_cast<const T*>(step.grad_gates);  // [B, R]: columns [0, G) of each row
      for (int64_t block = first_col; block < last_col; ++block) {
        const int64_t col0 = block * kUnitBlock, cols = std::min(kUnitBlock, O - col0);
        product_into(B, cols, G, dg, R, panel_of(wp, block, col0, 1, G, ldw), ldw, tile,
                     grad_hidden + col0, O);
      }
      clock.lap(kProduct);
      // No barrier: the next step's first pass on these units (columns) reads only what this
      // thread wrote, and the dG row it writes is not the one the others may still be reading.
    }
    release_products(kBf16);
  });
  layer_clock.lap(kBackwardLayer);
  return true;
}

bool forward_layer(PersistentForwardParams& p, at::ScalarType storage, const at::Tensor& w_hh,
                   const at::Tensor& w_hr) {
  if (storage == at::kBFloat16) return forward_layer_t<c10::BFloat16>(p, w_hh, w_hr);
  return forward_layer_t<float>(p, w_hh, w_hr);
}

bool backward_layer(PersistentBackwardParams& p, at::ScalarType storage, const at::Tensor& w_hh,
                    const at::Tensor& w_hr) {
  if (storage == at::kBFloat16) return backward_layer_t<c10::BFloat16>(p, w_hh, w_hr);
  return backward_layer_t<float>(p, w_hh, w_hr);
}

std::atomic<bool>& path_flag() { return fused_enabled; }

// Whether oneDNN's bf16 brgemm, given a panel in the VNNI layout packed here, returns the
// product on this CPU: a small exact case, once per process ("" where it does). Guards the
// layout assumption on CPUs these tests never ran on (AVX512-BF16 without AMX).
std::string bf16_layout_check() {
#if TBPTT_FUSED_CPU_BF16
  static const std::string result = [] {
    constexpr int64_t M = 3, N = 16, K = 6;
    std::vector<c10::BFloat16> a(M * K), b(K * N);  // B as a VNNI panel, ld N
    std::vector<float> c(M * N, -1.0f);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < K; ++k) a[m * K + k] = c10::BFloat16(float((m + 2 * k) % 5 - 2));
    }
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = 0; n < N; ++n) b[vnni_index(k, n, N)] = c10::BFloat16(float((3 * k + n) % 7 - 3));
    }
    try {
      product(M, N, K, a.data(), K, b.data(), N, c.data(), N);
      release_products(true);
    } catch (const std::exception& e) {
      return std::string("oneDNN's bf16 brgemm failed on this CPU: ") + e.what();
    }
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        float want = 0;
        for (int64_t k = 0; k < K; ++k) want += float((m + 2 * k) % 5 - 2) * float((3 * k + n) % 7 - 3);
        if (c[m * N + n] != want) {
          return std::string("oneDNN's bf16 brgemm did not compute the VNNI layout's product on this CPU");
        }
      }
    }
    return std::string();
  }();
  return result;
#else
  return "this build's torch has no bf16 brgemm";
#endif
}

// Every cell (the LSTM with projections: state_units = P); bfloat16 needs even K in every
// product (H, and P).
bool takes(CellKind cell, int64_t hidden, int64_t state_units, int64_t batch, int64_t steps,
           at::ScalarType storage) {
  (void)cell;
  (void)batch;
  (void)steps;
  if (!path_flag().load()) return false;
  if (storage == at::kFloat) {
    return hidden <= kMaxFusedHidden && fused_unavailable_reason(at::kFloat).empty();
  }
  if (storage == at::kBFloat16) {
    return hidden % 2 == 0 && state_units % 2 == 0 && hidden <= kMaxFusedHiddenBf16 &&
           fused_unavailable_reason(at::kBFloat16).empty();
  }
  return false;
}

}  // namespace

std::string fused_unavailable_reason(at::ScalarType storage) {
#if !TBPTT_FUSED_CPU
  (void)storage;
  return "this build has no cpublas::brgemm, OpenMP or x86-64";
#else
  if (storage != at::kFloat && storage != at::kBFloat16) {
    return storage == at::kHalf
               ? "float16 runs the stepwise CPU path: oneDNN's float16 brgemm needs AMX-FP16 for the "
                 "packed layout (without it the VNNI panel gives wrong products)"
               : "the fused CPU layers take float32 and bfloat16 only";
  }
  if (!at::hasMKLDNN()) return "torch was built without oneDNN";
  if (!at::globalContext().userEnabledMkldnn()) {
    return "torch.backends.mkldnn.enabled is False (brgemm would quietly fall back to one "
           "slow GEMM per call)";
  }
  if (!__builtin_cpu_supports("avx2")) return "the CPU lacks AVX2 (brgemm's micro-kernel needs it)";
  if (storage == at::kBFloat16) {
    if (!__builtin_cpu_supports("avx512bf16") && !__builtin_cpu_supports("amx-bf16")) {
      return "the CPU has neither AVX512-BF16 nor AMX-BF16 (bfloat16 runs the stepwise path)";
    }
    return bf16_layout_check();
  }
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
  run_team(team_size(hidden, batch, 4 * hidden * hidden), [&](int64_t, int64_t) {
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
