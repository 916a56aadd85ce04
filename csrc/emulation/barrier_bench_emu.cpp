// g++'s build of the grid-barrier microbenchmark and its launch glue for the SIMT emulator:
// tbptt::emu::*barrier_bench*.
#pragma GCC optimize("no-fast-math")

#include "cuda/barrier_bench_launch.h"
#include "emulation/emulated_kernels.h"  // the declarations the ATen glue sees must match
