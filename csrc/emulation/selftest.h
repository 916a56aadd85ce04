// The emulator's self-test kernels (selftest_kernels.cuh) run from Python: a planted fault by
// name, on the emulated device, against a plain C++ reference. Framework-free.
#pragma once

#include <string>
#include <vector>

namespace tbptt {
namespace emu_selftest {

// The faults of selftest_kernels.cuh by name: "none", "no-block-barrier", "no-grid-barrier",
// "shared-overrun", "divergent-barrier", "early-exit", "incomplete-mask", "uninitialised-read",
// "deadlock".
std::vector<std::string> fault_names();

struct ToyRun {
  int status;           // the launch status (a cudaError_t value)
  double max_abs_diff;  // largest |h_t - reference| over all steps (0 if the launch failed)
};

// The toy persistent RNN (n units, `steps` steps) on `blocks` x `threads`, cooperatively, with
// the named fault planted. Throws simt::emu::KernelError where the emulator catches the fault.
ToyRun run_toy_rnn(const std::string& fault, int n, int steps, int blocks, int threads);

}  // namespace emu_selftest
}  // namespace tbptt
