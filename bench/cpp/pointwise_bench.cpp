// Microbenchmark of the CPU pointwise pass alone: lstm_math.h's forward and backward element
// functions over B x H in the same row loop as csrc/cpu/lstm_cpu.cpp (target_clones, omp
// simd), one thread, the ring slot advancing every step as in a chunk. Prints µs per step.
//   g++ -std=c++17 -O3 -ffast-math -fopenmp-simd -I<csrc> bench/cpp/pointwise_bench.cpp
//   ./a.out [B H steps]
// Compiled against two versions of csrc/tbptt it compares them (notes/ has the figures).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tbptt/lstm_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

using namespace tbptt;

CLONES void forward_rows(const ForwardStepParams& p) {
  for (int64_t row = 0; row < p.batch; ++row) {
#pragma omp simd
    for (int64_t unit = 0; unit < p.hidden; ++unit) forward_step_element<float, float>(p, row, unit);
  }
}
CLONES void backward_rows(const BackwardStepParams& p) {
  for (int64_t row = 0; row < p.batch; ++row) {
#pragma omp simd
    for (int64_t unit = 0; unit < p.hidden; ++unit) backward_step_element<float, float>(p, row, unit);
  }
}

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? std::atoi(argv[1]) : 16, H = argc > 2 ? std::atoi(argv[2]) : 256;
  const int steps = argc > 3 ? std::atoi(argv[3]) : 64, G = 4 * H;
  std::vector<float> gx(steps * B * G, 0.1f), gh(B * G, 0.2f), cell(B * H, 0.3f), hidden(B * H, 0.1f),
      out(steps * B * H), ring_gates(steps * B * G), ring_cell(steps * B * H), ring_hidden(steps * B * H),
      grad_out(B * H, 0.01f), grad_next(B * H, 0.02f), grad_cell(B * H, 0.0f), grad_gates(steps * B * G),
      seen(steps * B * H), held(B * H, 0.0f);
  for (size_t i = 0; i < gx.size(); ++i) gx[i] = 0.001f * float(i % 997) - 0.5f;
  std::vector<uint8_t> flags(B, 0), none(B, 0);
  for (int64_t b = 0; b < B; b += 5) flags[b] = 1;
  double best_f = 1e30, best_b = 1e30;
  for (int round = 0; round < 30; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) {
      ForwardStepParams p{};
      p.batch = B;
      p.hidden = H;
      p.gates_x = gx.data() + s * B * G;
      p.gates_h = gh.data();
      p.cell = cell.data();
      p.hidden_prev = hidden.data();
      p.hidden_next = hidden.data();
      p.out = out.data() + s * B * H;
      p.ring_gates = ring_gates.data() + s * B * G;
      p.ring_cell = ring_cell.data() + s * B * H;
      p.ring_hidden = ring_hidden.data() + s * B * H;
#ifdef TBPTT_BENCH_FLAGS  // the step-flags version of the params
      p.flags = none.data();
      p.flags_next = flags.data();
#else
      p.reset_next = flags.data();
#endif
      forward_rows(p);
    }
    auto t1 = std::chrono::steady_clock::now();
    for (int s = steps - 1; s >= 0; --s) {
      BackwardStepParams p{};
      p.batch = B;
      p.hidden = H;
      p.gates = ring_gates.data() + s * B * G;
      p.cell = ring_cell.data() + s * B * H;
      p.cell_prev = ring_cell.data() + (s > 0 ? s - 1 : 0) * B * H;
      p.hidden_prev = ring_hidden.data() + (s > 0 ? s - 1 : 0) * B * H;
#ifdef TBPTT_BENCH_FLAGS
      p.flags = flags.data();
      p.flags_after = none.data();
      p.grad_hidden_held = held.data();
#else
      p.reset = flags.data();
      p.reset_after = none.data();
#endif
      p.grad_out = grad_out.data();
      p.grad_hidden_next = grad_next.data();
      p.grad_cell = grad_cell.data();
      p.grad_gates = grad_gates.data() + s * B * G;
      p.hidden_prev_seen = seen.data() + s * B * H;
      backward_rows(p);
    }
    auto t2 = std::chrono::steady_clock::now();
    best_f = std::min(best_f, std::chrono::duration<double, std::micro>(t1 - t0).count() / steps);
    best_b = std::min(best_b, std::chrono::duration<double, std::micro>(t2 - t1).count() / steps);
  }
  std::printf("B=%ld H=%ld: forward %.2f us/step, backward %.2f us/step (best of 30 rounds of %d steps)\n",
              long(B), long(H), best_f, best_b, steps);
  return out[7] == 12345.0f;
}
