// g++'s build of csrc/cuda's kernels and launch glue for the SIMT emulator:
// tbptt::emu::launch_*. IEEE arithmetic like nvcc's default build (the project's -ffast-math
// would let g++ assume there is no NaN, and reassociate).
#pragma GCC optimize("no-fast-math")

#include "cuda/lstm_launch.h"
#include "emulation/emulated_kernels.h"  // the declarations the ATen glue sees must match
