// Launch glue of the grid-barrier microbenchmark (barrier_bench.cuh), written once and compiled
// into both builds: tbptt::cuda (nvcc, barrier_bench.cu) and tbptt::emu (g++,
// csrc/emulation/barrier_bench_emu.cpp). No ATen. Each build includes it in exactly one
// translation unit; the launchers are declared for the ATen glue in csrc/cuda/lstm_kernels.h
// and csrc/emulation/emulated_kernels.h.
#pragma once

#include "cuda/barrier_bench.cuh"

namespace tbptt {
namespace SIMT_NS {

// Registers per thread the kernel is compiled for at most (scripts/check_ptxas.py holds the
// nvcc build to it; the emulator's occupancy uses it).
constexpr simt::KernelSpec kBarrierBench{"barrier_bench", 32};

// The most blocks of `threads` threads one cooperative launch of the benchmark may have on the
// current device (0 where the device takes no cooperative launch). Returns the query status.
simt::Status barrier_bench_capacity(int64_t threads, int64_t* blocks) {
  *blocks = 0;
  bool cooperative = false;
  simt::Status status = simt::device_supports_cooperative_launch(&cooperative);
  if (status != simt::kSuccess || !cooperative) return status;
  int sms = 0, per_sm = 0;
  if ((status = simt::device_sm_count(&sms)) != simt::kSuccess) return status;
  status = simt::max_active_blocks_per_sm(&per_sm, kBarrierBench, barrier_bench_kernel,
                                          simt::Dim3{static_cast<unsigned>(threads), 1, 1}, 0);
  if (status == simt::kSuccess) *blocks = static_cast<int64_t>(per_sm) * sms;
  return status;
}

// One cooperative launch of `blocks` x `threads` running `rounds` grid barriers. slots:
// [2, blocks, threads] u32 scratch; sink: [blocks, threads] u32 out. Returns the launch status.
simt::Status launch_barrier_bench(int64_t blocks, int64_t threads, int64_t rounds, bool exchange,
                                  uint32_t* slots, uint32_t* sink, simt::Stream stream) {
  const BarrierBenchParams params{rounds, exchange, slots, sink};
  return simt::launch_cooperative(kBarrierBench, barrier_bench_kernel,
                                  simt::Dim3{static_cast<unsigned>(blocks), 1, 1},
                                  simt::Dim3{static_cast<unsigned>(threads), 1, 1}, 0, stream, params);
}

}  // namespace SIMT_NS
}  // namespace tbptt
