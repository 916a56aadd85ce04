// The plan and the launch glue of the persistent kernels (persistent_kernels.cuh), written once
// and compiled into both builds: tbptt::cuda (nvcc, persistent_kernels.cu) and tbptt::emu (g++,
// csrc/emulation/persistent_kernels_emu.cpp), so that the emulated run exercises the plan too.
// No ATen. Each build includes it in exactly one translation unit.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <string>
#include <utility>

#include "cuda/storage_dispatch.h"
#include "cuda/persistent_kernels.cuh"

namespace tbptt {
namespace SIMT_NS {

// Calls f with the traits (cells.h) of a cell's persistent kernels (the LSTM, the GRU, the
// LSTM with projections), or returns otherwise() (the internal projection pass).
template <typename F, typename Otherwise>
auto with_persistent_cell(CellKind cell, F&& f, Otherwise&& otherwise) {
  switch (cell) {
    case CellKind::kLstm: return f(LstmCell{});
    case CellKind::kGru: return f(GruCell{});
    case CellKind::kLstmp: return f(LstmpCell{});
    default: return otherwise();
  }
}

// Registers per thread the kernels are compiled for at most (ptxas -v over sm_80/86/89/90:
// forward 139-209, backward 97-239, the most for float64 and, backward, the LSTM with
// projections' two products; scripts/check_ptxas.py holds the nvcc build to them; the
// emulator's occupancy uses them). 256 threads of 240 registers fit an SM's 64K once: one
// block per SM, as the plans ask.
constexpr simt::KernelSpec kPersistentForward{"persistent_forward", 224};
constexpr simt::KernelSpec kPersistentBackward{"persistent_backward", 240};

// Fewest hidden units per block (units are given out in multiples of it): fewer make blocks
// too small to pay for their barrier.
constexpr int64_t kUnitsQuantum = 4;
// Backward dG columns staged at once, at most; a k slice is at least this many columns long.
constexpr int64_t kMaxKChunk = 1024;
constexpr int64_t kMinSliceLength = 8;

// Tensor cores: forward batch rows staged at once, at most (8 of them per output tile).
constexpr int64_t kMaxMmaBatchTile = 64;
constexpr int64_t kWarps = kPersistentMaxThreads / simt::kWarpSize;

inline int64_t storage_bytes(StorageType storage) {
  switch (storage) {
    case StorageType::kFloat64: return 8;
    case StorageType::kFloat32: return 4;
    default: return 2;
  }
}

inline int64_t accumulation_bytes(StorageType storage) {
  return storage == StorageType::kFloat64 ? 8 : 4;
}

// Fills the k split and the threads of a partition whose tile is set, over a reduction of
// `length`. FFMA: as many slices as kPersistentMaxThreads threads allow, each kMinSliceLength
// long at least. Tensor cores: a warp per (output tile, slice) while tiles are fewer than the
// warps, else 8 warps that take the tiles in turn. gates: the cell's kGates.
inline void split_reduction(PersistentPartition* part, int64_t length, int64_t gates,
                            bool backward) {
  if (part->tensor_cores) {
    const int64_t tiles = mma_tiles(part->batch_tile, part->units, gates, backward);
    part->k_split = tiles >= kWarps ? 1 : std::max<int64_t>(1, std::min(kWarps / tiles, length / 16));
    part->threads = simt::kWarpSize * (part->k_split == 1 ? std::min(tiles, kWarps) : tiles * part->k_split);
    return;
  }
  const int64_t items = thread_items(part->batch_tile, part->units);
  part->k_split = std::max<int64_t>(
      1, std::min<int64_t>(kPersistentMaxThreads / items, length / kMinSliceLength));
  part->threads = round_up_to(items * part->k_split, simt::kWarpSize);
}

// The largest batch tiles of the products over `units` output units per block (forward,
// backward), or false with *reason: FFMA, what the threads cover at kRowsPerThread rows each;
// tensor cores, forward kMaxMmaBatchTile, backward as many 16-row tiles as kMaxWarpTiles
// accumulators per warp hold.
inline bool largest_tiles(int64_t units, int64_t batch, bool tensor_cores, int64_t* forward_tile,
                          int64_t* backward_tile, std::string* reason) {
  if (units > kPersistentMaxThreads) {
    *reason = std::to_string(units) + " units per block exceed the kernels' " +
              std::to_string(kPersistentMaxThreads) + " threads";
    return false;
  }
  const int64_t n_tiles = round_up_to(units, 8) / 8;
  if (tensor_cores && n_tiles > kWarps * kMaxWarpTiles) {
    *reason = std::to_string(units) + " units per block exceed the tensor-core tiles of a block";
    return false;
  }
  *forward_tile = std::min<int64_t>(
      batch, tensor_cores ? kMaxMmaBatchTile
                          : kRowsPerThread * (kPersistentMaxThreads / std::max<int64_t>(units, 1)));
  *backward_tile = std::min<int64_t>(
      batch, tensor_cores ? 16 * std::max<int64_t>(1, kWarps * kMaxWarpTiles / n_tiles)
                          : *forward_tile);
  return true;
}

// A forward product's partition (units of `gates` gate blocks, a reduction of length k, its
// shared arrays from byte `base` on): the batch tile from max_tile, halved until base + its
// arrays fit `limit` (or 1). shared_bytes: base + its arrays.
inline void fit_forward(PersistentPartition* f, int64_t k, int64_t units, int64_t gates,
                        int64_t max_tile, bool tensor_cores, int64_t elem, int64_t acc,
                        int64_t base, int64_t limit) {
  f->units = units;
  f->tensor_cores = tensor_cores;
  f->k_chunk = k;
  for (f->batch_tile = max_tile;; f->batch_tile = (f->batch_tile + 1) / 2) {  // shrink to fit
    split_reduction(f, tensor_cores ? round_up_to(k, 16) / 16 * 16 : k, gates, false);
    f->shared_bytes = shared_layout(*f, k, gates, false, elem, acc, base).bytes;
    if (f->shared_bytes <= limit || f->batch_tile == 1) break;
  }
}

// A backward product's partition (a reduction of length k staged in k_chunk columns): the
// chunk from max_chunk (tensor cores: whole k steps of 16), halved until base + its arrays fit.
inline void fit_backward(PersistentPartition* b, int64_t k, int64_t units, int64_t gates,
                         int64_t tile, int64_t max_chunk, bool tensor_cores, int64_t elem,
                         int64_t acc, int64_t base, int64_t limit) {
  b->units = units;
  b->tensor_cores = tensor_cores;
  b->batch_tile = tile;
  const int64_t k_step = tensor_cores ? 16 : 1;
  for (b->k_chunk = std::min<int64_t>(round_up_to(k, k_step), max_chunk);;
       b->k_chunk = round_up_to((b->k_chunk + 1) / 2, k_step)) {
    split_reduction(b, b->k_chunk, gates, true);
    b->shared_bytes = shared_layout(*b, k, gates, true, elem, acc, base).bytes;
    if (b->shared_bytes <= limit || b->k_chunk <= 2 * kMinSliceLength) break;
  }
}

// The forward and backward partitions of a layer with `units` H units per block of a cell of
// `gates` gate blocks (and, with a projection of P > 0 columns, the projection's products:
// PersistentPlan), or false with plan->reason where they do not fit (threads, or
// `shared_limit` bytes of shared memory).
inline bool partition(int64_t hidden, int64_t projection, int64_t batch, int64_t units,
                      int64_t gates, StorageType storage, int64_t shared_limit,
                      PersistentPlan* plan) {
  const int64_t elem = storage_bytes(storage), acc = accumulation_bytes(storage);
  const bool tc = elem == 2;
  const int64_t blocks = (hidden + units - 1) / units;
  int64_t forward_tile = 0, backward_tile = 0;
  if (!largest_tiles(units, batch, tc, &forward_tile, &backward_tile, &plan->reason)) return false;
  PersistentPartition& f = plan->forward;
  PersistentPartition& b = plan->backward;
  if (projection == 0) {
    fit_forward(&f, hidden, units, gates, forward_tile, tc, elem, acc, 0, shared_limit);
    fit_backward(&b, gates * hidden, units, gates, backward_tile, kMaxKChunk, tc, elem, acc, 0,
                 shared_limit);
  } else {
    // Each block also owns `columns` of the P columns of h (the last ones maybe none).
    const int64_t P = projection, columns = (P + blocks - 1) / blocks;
    int64_t forward_cols_tile = 0, backward_cols_tile = 0;
    if (!largest_tiles(columns, batch, tc, &forward_cols_tile, &backward_cols_tile, &plan->reason)) {
      return false;
    }
    PersistentPartition& fp = plan->forward_projection;
    PersistentPartition& bp = plan->backward_projection;
    // Forward: h_{t-1} [B, P] W_hh^T over the H units, then m [B, H] W_hr^T over the P
    // columns, its arrays after the first's; shrink the first's tile until both fit.
    for (int64_t tile = forward_tile;; tile = (tile + 1) / 2) {
      fit_forward(&f, P, units, gates, tile, tc, elem, acc, 0, shared_limit);
      fit_forward(&fp, hidden, columns, 1, forward_cols_tile, tc, elem, acc, f.shared_bytes,
                  shared_limit);
      if (fp.shared_bytes <= shared_limit || f.batch_tile == 1) break;
    }
    // Backward: dG_t [B, G] W_hh over the P columns, then dh_eff [B, P] W_hr over the H units.
    for (int64_t chunk = kMaxKChunk;; chunk /= 2) {
      fit_backward(&b, gates * hidden, columns, gates, backward_cols_tile, chunk, tc, elem, acc,
                   0, shared_limit);
      fit_backward(&bp, P, units, 1, backward_tile, kMaxKChunk, tc, elem, acc, b.shared_bytes,
                   shared_limit);
      if (bp.shared_bytes <= shared_limit || b.k_chunk <= 2 * kMinSliceLength) break;
    }
    // One launch each way: the larger thread count, the shared bytes of both products.
    for (auto pair : {std::make_pair(&f, &fp), std::make_pair(&b, &bp)}) {
      PersistentPartition& first = *pair.first;
      PersistentPartition& second = *pair.second;
      first.threads = second.threads = std::max(first.threads, second.threads);
      first.shared_bytes = second.shared_bytes;
      second.blocks = blocks;
    }
  }
  f.blocks = b.blocks = blocks;
  if (f.shared_bytes > shared_limit || b.shared_bytes > shared_limit) {
    plan->reason = std::string(projection > 0 ? "W_hh's and W_hr's slices" : "W_hh's slice") +
                   " for " + std::to_string(units) + " units per block needs " +
                   std::to_string(std::max(f.shared_bytes, b.shared_bytes)) +
                   " bytes of shared memory; a block may have " + std::to_string(shared_limit);
    return false;
  }
  return true;
}

// Plans the persistent kernels of one layer of `cell` with H units, P projection columns (lstmp;
// else 0) and B rows on the current device:
// the fewest units per block (a multiple of kUnitsQuantum) that spread H over at most one block
// per SM, then the checks a cooperative launch needs (support, shared memory, occupancy of
// every block at once). Returns the status of the device queries; plan->usable says whether
// the persistent path can run, plan->reason why not.
simt::Status plan_persistent(int64_t hidden, int64_t projection, int64_t batch, CellKind cell,
                             StorageType storage, PersistentPlan* plan) {
  *plan = PersistentPlan{};
  const int64_t gates = with_persistent_cell(
      cell, [](auto traits) { return int64_t(decltype(traits)::kGates); }, [] { return int64_t(0); });
  bool cooperative = false;
  simt::Status status = simt::device_supports_cooperative_launch(&cooperative);
  if (status != simt::kSuccess) return status;
  int sms = 0, shared_limit = 0, major = 0, minor = 0;
  if ((status = simt::device_sm_count(&sms)) != simt::kSuccess) return status;
  if ((status = simt::device_max_shared_bytes_optin(&shared_limit)) != simt::kSuccess) return status;
  if ((status = simt::device_compute_capability(&major, &minor)) != simt::kSuccess) return status;
  plan->sms = sms;
  plan->capability = major * 10 + minor;
  if (!cooperative) {
    plan->reason = "the device does not support cooperative launches";
    return simt::kSuccess;
  }
  if (gates == 0 || (cell == CellKind::kLstmp) != (projection > 0)) {
    plan->reason = "no persistent kernels for this cell and proj_size";
    return simt::kSuccess;
  }
  // The fewest units per block that spread H over at most one block per SM.
  const int64_t units =
      std::min(hidden, round_up_to(std::max<int64_t>(1, (hidden + sms - 1) / sms), kUnitsQuantum));
  if (!partition(hidden, projection, batch, units, gates, storage, shared_limit, plan)) {
    return simt::kSuccess;
  }
  // Each kernel: compiled without spills for this device, its shared memory allowed, and
  // every block of the grid resident at once. Sets plan->reason where one is not.
  auto check = [&](const simt::KernelSpec& spec, auto kernel, const PersistentPartition& part) {
    bool spills = false;
    simt::Status s = simt::kernel_uses_local_memory(&spills, kernel);
    if (s != simt::kSuccess) return s;
    if (spills) {  // scripts/check_ptxas.py fails the build on this for sm_90; other archs
      plan->reason = std::string(spec.name) + " spills registers to local memory on this device";
      return s;
    }
    s = simt::set_max_dynamic_shared_bytes(kernel, static_cast<size_t>(part.shared_bytes));
    if (s != simt::kSuccess) return s;
    int per_sm = 0;
    s = simt::max_active_blocks_per_sm(&per_sm, spec, kernel,
                                       simt::Dim3{static_cast<unsigned>(part.threads), 1, 1},
                                       static_cast<size_t>(part.shared_bytes));
    if (s == simt::kSuccess && part.blocks > static_cast<int64_t>(per_sm) * sms) {
      plan->reason = std::string(spec.name) + " needs " + std::to_string(part.blocks) +
                     " co-resident blocks of " + std::to_string(part.threads) + " threads and " +
                     std::to_string(part.shared_bytes) + " bytes of shared memory; the device holds " +
                     std::to_string(per_sm * sms) + " (" + std::to_string(sms) + " SMs)";
    }
    return s;
  };
  status = with_persistent_cell(cell, [&](auto traits) {
    using Cell = decltype(traits);
    return with_storage_type(storage, [&](auto storage_tag, auto acc_tag) {
      using T = decltype(storage_tag);
      using acc_t = decltype(acc_tag);
      simt::Status s = check(kPersistentForward, persistent_forward_kernel<Cell, T, acc_t>, plan->forward);
      if (s != simt::kSuccess || !plan->reason.empty()) return s;
      return check(kPersistentBackward, persistent_backward_kernel<Cell, T, acc_t>, plan->backward);
    });
  }, [] { return simt::Status(simt::kSuccess); });
  plan->usable = status == simt::kSuccess && plan->reason.empty();
  return status;
}

// Launches `kernel_of(Cell{}, T{}, acc_t{})` (the instantiation for params.cell_kind and
// `storage`) cooperatively, with the grid, block and shared memory of params.part.
template <typename Params, typename KernelOf>
simt::Status launch_persistent(const simt::KernelSpec& spec, KernelOf kernel_of,
                               const Params& params, StorageType storage, simt::Stream stream) {
  return with_persistent_cell(params.cell_kind, [&](auto cell_tag) {
    return with_storage_type(storage, [&](auto storage_tag, auto acc_tag) {
      return simt::launch_cooperative(
          spec, kernel_of(cell_tag, storage_tag, acc_tag),
          simt::Dim3{static_cast<unsigned>(params.part.blocks), 1, 1},
          simt::Dim3{static_cast<unsigned>(params.part.threads), 1, 1},
          static_cast<size_t>(params.part.shared_bytes), stream, params);
    });
  }, [] { return simt::Status(1); });  // cudaErrorInvalidValue: no such kernels
}

// One layer's chunk forward in one cooperative launch (params.part from a usable plan of
// params.cell_kind).
simt::Status launch_persistent_forward(const PersistentForwardParams& params, StorageType storage,
                                       simt::Stream stream) {
  return launch_persistent(kPersistentForward, [](auto cell, auto storage_tag, auto acc_tag) {
    return persistent_forward_kernel<decltype(cell), decltype(storage_tag), decltype(acc_tag)>;
  }, params, storage, stream);
}

// One layer's span backward in one cooperative launch (params.part from a usable plan of
// params.cell_kind).
simt::Status launch_persistent_backward(const PersistentBackwardParams& params,
                                        StorageType storage, simt::Stream stream) {
  return launch_persistent(kPersistentBackward, [](auto cell, auto storage_tag, auto acc_tag) {
    return persistent_backward_kernel<decltype(cell), decltype(storage_tag), decltype(acc_tag)>;
  }, params, storage, stream);
}

}  // namespace SIMT_NS
}  // namespace tbptt
