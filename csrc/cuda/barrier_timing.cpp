// ATen glue of the grid-barrier microbenchmark (barrier_bench.cuh) on a GPU: scratch from
// PyTorch's allocator, launches on the current stream, timed with CUDA events. What one grid
// barrier costs is the difference between a launch with `rounds` barriers and the same launch
// with none, divided by `rounds`.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <vector>

#include "backends.h"
#include "lstm_kernels.h"

namespace tbptt {
namespace cuda {
namespace {

// CUDA events released on every way out.
struct Events {
  std::vector<cudaEvent_t> events;
  explicit Events(int count) : events(count, nullptr) {
    for (cudaEvent_t& e : events) C10_CUDA_CHECK(cudaEventCreate(&e));
  }
  ~Events() {
    for (cudaEvent_t e : events) {
      if (e != nullptr) cudaEventDestroy(e);
    }
  }
};

double median(std::vector<float> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (double(values[n / 2 - 1]) + values[n / 2]);
}

}  // namespace

BarrierTiming barrier_latency(int64_t blocks, int64_t threads, int64_t rounds, bool exchange,
                              int64_t repeats) {
  TORCH_CHECK(c10::cuda::device_count() > 0,
              "tbptt: cuda_barrier_latency needs a CUDA GPU and there is none here "
              "(tbptt_cuda.emulation.barrier_bench runs the same kernel on the emulator)");
  check_barrier_bench_args(blocks, threads, rounds);
  TORCH_CHECK_VALUE(repeats >= 1, "tbptt: repeats must be >= 1, got ", repeats);
  int64_t capacity = 0;
  C10_CUDA_CHECK(barrier_bench_capacity(threads, &capacity));
  TORCH_CHECK(blocks <= capacity, "tbptt: ", blocks, " blocks of ", threads,
              " threads cannot all be resident at once on this GPU: it holds ", capacity,
              " (0: it takes no cooperative launch)");
  const at::TensorOptions options =
      at::TensorOptions().device(at::kCUDA, c10::cuda::current_device()).dtype(at::kInt);
  at::Tensor slots = at::zeros({2, blocks, threads}, options);  // [2, blocks, threads] u32
  at::Tensor sink = at::zeros({blocks, threads}, options);      // [blocks, threads] u32
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](int64_t r) {
    C10_CUDA_CHECK(launch_barrier_bench(blocks, threads, r, exchange,
                                        static_cast<uint32_t*>(slots.data_ptr()),
                                        static_cast<uint32_t*>(sink.data_ptr()), stream));
  };
  launch(1);  // warm-up: module load, the cooperative grid's workspace
  launch(rounds);
  Events marks(3);
  std::vector<float> empty_ms, full_ms;
  for (int64_t i = 0; i < repeats; ++i) {  // alternate the two launches
    C10_CUDA_CHECK(cudaEventRecord(marks.events[0], stream));
    launch(0);
    C10_CUDA_CHECK(cudaEventRecord(marks.events[1], stream));
    launch(rounds);
    C10_CUDA_CHECK(cudaEventRecord(marks.events[2], stream));
    C10_CUDA_CHECK(cudaEventSynchronize(marks.events[2]));
    float empty = 0.0f, full = 0.0f;
    C10_CUDA_CHECK(cudaEventElapsedTime(&empty, marks.events[0], marks.events[1]));
    C10_CUDA_CHECK(cudaEventElapsedTime(&full, marks.events[1], marks.events[2]));
    empty_ms.push_back(empty);
    full_ms.push_back(full);
  }
  BarrierTiming timing;
  timing.launch_us = 1e3 * median(empty_ms);
  timing.total_us = 1e3 * median(full_ms);
  timing.us_per_barrier = (timing.total_us - timing.launch_us) / double(rounds);
  timing.capacity = capacity;
  // The last launch's sums as unsigned 32-bit values (int32 on the device).
  timing.sink = sink.to(at::kCPU).to(at::kLong).bitwise_and(0xffffffffLL);
  return timing;
}

}  // namespace cuda
}  // namespace tbptt
