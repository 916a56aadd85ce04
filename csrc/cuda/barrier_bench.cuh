// Grid-barrier latency microbenchmark (research/gpu_persistent.md §3 and "First run on a GPU"):
// one cooperative launch runs `rounds` grid barriers, the step the persistent kernels take
// once per timestep. With `exchange`, each round also moves data across blocks as they do:
// every thread writes one word before the barrier and reads, after it, the word the same
// thread of the next block wrote, so the barrier must order global memory, not only time.
// Device code only, against the device layer (tbptt/simt.h); nvcc builds it for the GPU, g++
// for the SIMT emulator (the launcher: barrier_bench_launch.h).
#pragma once

#include <cstdint>

#include "tbptt/simt.h"

namespace tbptt {
namespace SIMT_NS {

constexpr int kBarrierBenchMaxThreads = 1024;

struct BarrierBenchParams {
  int64_t rounds;
  bool exchange;
  uint32_t* slots;  // [2, blocks, threads]  round r's words in slot r & 1 (double-buffered as
                    //                       the persistent kernels' h exchange: one barrier a round)
  uint32_t* sink;   // [blocks, threads]     out: the sum (mod 2^32) of the words each thread read
};

// The word thread `thread` of block `block` writes in round `round`: unique per round and
// thread, never all zero. The sink a thread ends with is the sum of what its neighbour wrote.
TBPTT_HD uint32_t barrier_bench_word(int64_t block, int64_t thread, int64_t threads, int64_t round) {
  return static_cast<uint32_t>(block * threads + thread + round + 1);
}

// params: see BarrierBenchParams. Grid: any number of co-resident blocks; block: a multiple of 32
// threads, at most kBarrierBenchMaxThreads.
SIMT_KERNEL void SIMT_LAUNCH_BOUNDS(kBarrierBenchMaxThreads, 1)
    barrier_bench_kernel(const BarrierBenchParams p) {
  const int64_t tid = simt::thread_idx().x, threads = simt::block_dim().x;
  const int64_t block = simt::block_idx().x, blocks = simt::grid_dim().x;
  const int64_t next = (block + 1) % blocks;
  uint32_t seen = 0;
  for (int64_t r = 0; r < p.rounds; ++r) {
    uint32_t* slot = p.slots + (r & 1) * blocks * threads;  // [blocks, threads]
    if (p.exchange) slot[block * threads + tid] = barrier_bench_word(block, tid, threads, r);
    // Slot r & 1 was last read in round r - 2: every block finished that before it arrived at
    // round r - 1's barrier, so one barrier per round is enough.
    simt::sync_grid();
    if (p.exchange) seen += slot[next * threads + tid];
  }
  p.sink[block * threads + tid] = seen;
}

}  // namespace SIMT_NS
}  // namespace tbptt
