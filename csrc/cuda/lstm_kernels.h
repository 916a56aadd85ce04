// Launchers of the CUDA kernels (csrc/cuda/lstm_launch.h, built by nvcc). Pure CUDA runtime
// API: no ATen here.
#pragma once

#include <cuda_runtime.h>

#include "tbptt/persistent.h"
#include "tbptt/window.h"

namespace tbptt {
namespace cuda {

// One forward step of one layer over B*H elements, on `stream`. Returns the launch status.
cudaError_t launch_forward_step(const ForwardStepParams& params, StorageType storage,
                                cudaStream_t stream);

// One backward step of one layer over B*H elements, on `stream`. Returns the launch status.
cudaError_t launch_backward_step(const BackwardStepParams& params, StorageType storage,
                                 cudaStream_t stream);

// Plans the persistent kernels of a layer of `cell` with H units, P projection columns (lstmp;
// else 0) and B rows on the current device (persistent_launch.h). Returns the status of the
// device queries.
cudaError_t plan_persistent(int64_t hidden, int64_t projection, int64_t batch, CellKind cell,
                            StorageType storage, PersistentPlan* plan);

// One layer's chunk forward / span backward in one cooperative launch, on `stream`.
cudaError_t launch_persistent_forward(const PersistentForwardParams& params, StorageType storage,
                                      cudaStream_t stream);
cudaError_t launch_persistent_backward(const PersistentBackwardParams& params,
                                       StorageType storage, cudaStream_t stream);

// The grid-barrier microbenchmark (barrier_bench_launch.h): the most co-resident blocks of
// `threads` threads on the current device, and one cooperative launch of `rounds` barriers.
// slots: [2, blocks, threads] u32 scratch; sink: [blocks, threads] u32 out.
cudaError_t barrier_bench_capacity(int64_t threads, int64_t* blocks);
cudaError_t launch_barrier_bench(int64_t blocks, int64_t threads, int64_t rounds, bool exchange,
                                 uint32_t* slots, uint32_t* sink, cudaStream_t stream);

}  // namespace cuda
}  // namespace tbptt
