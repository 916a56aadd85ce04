// The device backends that ops.cpp binds to each dispatch key, and the plain ATen GEMMs they
// may share.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "lstm_driver.h"
#include "persistent_dispatch.h"

namespace tbptt {

// The storage type a kernel launch is instantiated for.
inline StorageType storage_type_of(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return StorageType::kFloat32;
    case at::kDouble: return StorageType::kFloat64;
    case at::kHalf: return StorageType::kFloat16;
    case at::kBFloat16: return StorageType::kBFloat16;
    default:
      TORCH_CHECK(false, "tbptt: the CUDA kernels support float32, float64, float16 and bfloat16, got ", type);
  }
}

// GEMMs through at::mm / addmm: cuBLAS on CUDA (current stream), the CPU BLAS on CPU.
namespace aten_gemm {
const GemmBackend& gemm();
}
namespace cpu {
const DeviceBackend& backend();
const GemmBackend& gemm();
// Which library the CPU GEMMs use: "onednn" (float32, where torch has it) or "aten".
// Set it between calls, not while a forward or backward runs.
void set_gemm_library(const std::string& name);
std::string gemm_library(at::ScalarType dtype);
// The fused float32 layers (fused_cpu.cpp): a whole chunk's forward or span's backward of one
// layer in one OpenMP team, W_hh packed once per chunk for oneDNN's brgemm micro-kernel; the
// rest of the CPU backend falls back to the per-step loop where they decline. nullptr where
// this build has no brgemm.
const PersistentBackend* fused_layers();
// "auto" (fused where available, float32 and bfloat16) or "stepwise" (never); TBPTT_CPU_PATH.
void set_cpu_path(const std::string& name);
std::string cpu_path();
// Whether the fused layers would run now for this storage type (float32: brgemm present,
// oneDNN enabled, AVX2; bfloat16: also AVX512-BF16 or AMX-BF16 and the VNNI layout check;
// float16 and float64: never); else why not.
std::string fused_unavailable_reason(at::ScalarType storage = at::kFloat);
// Units [unit_begin, unit_end) of every row of one step, float32 or bfloat16 storage
// (lstm_cpu.cpp's vector loop).
void forward_units_float(const ForwardStepParams& p, int64_t unit_begin, int64_t unit_end);
void backward_units_float(const BackwardStepParams& p, int64_t unit_begin, int64_t unit_end);
void forward_units_bf16(const ForwardStepParams& p, int64_t unit_begin, int64_t unit_end);
void backward_units_bf16(const BackwardStepParams& p, int64_t unit_begin, int64_t unit_end);
// Threads that ran the tasks of one at::parallel_for over `tasks` tasks of grain 1, and the
// size of the fused layers' OpenMP team: the OpenMP build's test hooks.
int64_t parallel_for_threads(int64_t tasks);
int64_t fused_team_threads(int64_t hidden, int64_t batch);
// Packed weights the fused layers have made so far (their cache's test hook).
int64_t weight_packs_made();
// Seconds the fused layers spent per phase since the last call (thread 0's pack, recurrent
// product, element pass, barrier wait; each layer call's wall time), then turns the timing on
// or off (bench/profile_cpu_step.py).
std::map<std::string, double> fused_profile(bool enable);
}
// The grid-barrier microbenchmark's arguments (csrc/cuda/barrier_bench.cuh); raises on bad ones.
inline void check_barrier_bench_args(int64_t blocks, int64_t threads, int64_t rounds) {
  TORCH_CHECK_VALUE(blocks >= 1 && blocks <= 65535, "tbptt: barrier benchmark blocks must be in [1, 65535], got ", blocks);
  TORCH_CHECK_VALUE(threads >= 32 && threads <= 1024 && threads % 32 == 0,
                    "tbptt: barrier benchmark threads must be a multiple of 32 in [32, 1024], got ", threads);
  TORCH_CHECK_VALUE(rounds >= 1, "tbptt: barrier benchmark rounds must be >= 1, got ", rounds);
}

#ifdef TBPTT_WITH_CUDA
namespace cuda {
const DeviceBackend& backend();
PersistentPlans& persistent_plans();

// The grid-barrier microbenchmark on the current GPU (csrc/cuda/barrier_timing.cpp): medians
// over `repeats` interleaved pairs of cooperative launches, timed with CUDA events.
struct BarrierTiming {
  double us_per_barrier;  // (total_us - launch_us) / rounds
  double launch_us;       // a launch of the same grid with no barrier
  double total_us;        // a launch with `rounds` barriers
  int64_t capacity;       // co-resident blocks of this size the device holds
  at::Tensor sink;        // [blocks, threads] int64 (CPU): what each thread read (u32 sums)
};
// Raises where there is no GPU, or the grid cannot be co-resident.
BarrierTiming barrier_latency(int64_t blocks, int64_t threads, int64_t rounds, bool exchange,
                              int64_t repeats);
}  // namespace cuda
#endif
#ifdef TBPTT_WITH_EMULATION
// csrc/cuda's kernels run by the SIMT emulator on CPU tensors (tbptt_cuda.emulate_cuda()).
namespace emulated {
const DeviceBackend& backend();
bool active();
// enabled; seed < 0: the deterministic schedule, else a random one from that seed; device: a
// preset's name (simt::emu::device_preset: "H100", "A100", ...; raises on another); sms > 0:
// that many of its SMs instead of all; path: the CUDA path the emulated backend takes. Another
// device or SM count is a different simulated device: the plans are made again.
void configure(bool enabled, int64_t seed, const std::string& device, int64_t sms, CudaPath path);
PersistentPlans& persistent_plans();
// Launches of kernels named `kernel` fail with `status` (a cudaError_t value) until called
// with an empty name: the fallback's test hook.
void fail_launches(const std::string& kernel, int status);
// kernel -> {launches, block barriers, grid barriers, warp collectives} since the start.
std::map<std::string, std::vector<int64_t>> stats();
// The emulator's float -> float16 / bfloat16 conversion, as int16 bits (a test hook).
at::Tensor sixteen_bit_conversion(const at::Tensor& values, bool bfloat16);
// One launch of the grid-barrier microbenchmark on the simulated device: the sink,
// [blocks, threads] int64 (u32 sums). Raises where the launch fails.
at::Tensor barrier_bench(int64_t blocks, int64_t threads, int64_t rounds, bool exchange);
}  // namespace emulated
#endif
}  // namespace tbptt
