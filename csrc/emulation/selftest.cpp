// See selftest.h. IEEE arithmetic, as the other emulated translation units.
#pragma GCC optimize("no-fast-math")

#include "emulation/selftest.h"

#include <cmath>
#include <random>
#include <stdexcept>

#include "emulation/selftest_kernels.cuh"

namespace tbptt {
namespace emu_selftest {
namespace {

using namespace selftest::emu;

template <int kFault>
ToyRun run(int n, int steps, int blocks, int threads) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n) * n), h(2 * static_cast<size_t>(n), 0.0f);
  for (float& v : w) v = normal(rng) * 1.5f / std::sqrt(float(n));
  for (int i = 0; i < n; ++i) h[i] = normal(rng) * 0.5f;
  const std::vector<float> h0(h.begin(), h.begin() + n);
  std::vector<float> out(static_cast<size_t>(steps) * n, 0.0f);
  std::vector<int> positives(steps, 0);
  const int rows = (n + blocks - 1) / blocks;
  RnnParams p{n, steps, rows, w.data(), h.data(), out.data(), positives.data()};
  const size_t shared = rnn_shared_bytes<float>(n, rows);
  simt::set_max_dynamic_shared_bytes(rnn_kernel<float, kFault>, shared);
  const simt::Status status = simt::launch_cooperative(
      simt::KernelSpec{"rnn", 64}, rnn_kernel<float, kFault>, simt::Dim3{unsigned(blocks), 1, 1},
      simt::Dim3{unsigned(threads), 1, 1}, shared, nullptr, p);
  if (status != simt::kSuccess) return ToyRun{status, 0.0};
  std::vector<double> state(h0.begin(), h0.end()), next(n);
  double worst = 0.0;
  for (int t = 0; t < steps; ++t) {
    for (int r = 0; r < n; ++r) {
      double acc = 0.0;
      for (int k = 0; k < n; ++k) acc += double(w[static_cast<size_t>(r) * n + k]) * state[k];
      next[r] = std::tanh(acc);
    }
    for (int r = 0; r < n; ++r) {
      state[r] = static_cast<float>(next[r]);
      worst = std::max(worst, std::fabs(next[r] - out[static_cast<size_t>(t) * n + r]));
    }
  }
  return ToyRun{status, worst};
}

struct Entry {
  const char* name;
  ToyRun (*run)(int, int, int, int);
};

const Entry kFaults[] = {
    {"none", run<kNone>},
    {"no-block-barrier", run<kNoBlockBarrier>},
    {"no-grid-barrier", run<kNoGridBarrier>},
    {"shared-overrun", run<kSharedOverrun>},
    {"divergent-barrier", run<kDivergentBarrier>},
    {"early-exit", run<kEarlyExit>},
    {"incomplete-mask", run<kIncompleteMask>},
    {"uninitialised-read", run<kUninitialisedRead>},
    {"deadlock", run<kDeadlock>},
};

}  // namespace

std::vector<std::string> fault_names() {
  std::vector<std::string> names;
  for (const Entry& e : kFaults) names.push_back(e.name);
  return names;
}

ToyRun run_toy_rnn(const std::string& fault, int n, int steps, int blocks, int threads) {
  for (const Entry& e : kFaults) {
    if (fault == e.name) return e.run(n, steps, blocks, threads);
  }
  throw std::invalid_argument("unknown self-test fault '" + fault + "'");
}

}  // namespace emu_selftest
}  // namespace tbptt
