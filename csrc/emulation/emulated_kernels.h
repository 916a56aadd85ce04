// Launchers of csrc/cuda's kernels built for the SIMT emulator (lstm_kernels_emu.cpp): the
// same launch glue as the CUDA build, run on the CPU. No ATen; no CUDA toolkit.
#pragma once

#include "tbptt/persistent.h"
#include "tbptt/window.h"

namespace tbptt {
namespace emu {

// One forward / backward step of one layer over B*H elements of CPU memory; `stream` is
// ignored. Return the launch status (a cudaError_t value; see simt::status_name). Misuse found
// while a kernel runs throws simt::emu::KernelError.
int launch_forward_step(const ForwardStepParams& params, StorageType storage, void* stream);
int launch_backward_step(const BackwardStepParams& params, StorageType storage, void* stream);

// The persistent kernels' plan on the simulated device, and their launches (see
// csrc/cuda/persistent_launch.h).
int plan_persistent(int64_t hidden, int64_t projection, int64_t batch, CellKind cell,
                    StorageType storage, PersistentPlan* plan);
int launch_persistent_forward(const PersistentForwardParams& params, StorageType storage, void* stream);
int launch_persistent_backward(const PersistentBackwardParams& params, StorageType storage, void* stream);

// The grid-barrier microbenchmark on the simulated device (see
// csrc/cuda/barrier_bench_launch.h).
int barrier_bench_capacity(int64_t threads, int64_t* blocks);
int launch_barrier_bench(int64_t blocks, int64_t threads, int64_t rounds, bool exchange,
                         uint32_t* slots, uint32_t* sink, void* stream);

}  // namespace emu
}  // namespace tbptt
