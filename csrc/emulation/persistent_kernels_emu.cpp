// g++'s build of the persistent kernels, their plan and launch glue for the SIMT emulator:
// tbptt::emu::*_persistent*. IEEE arithmetic like nvcc's default build (see
// lstm_kernels_emu.cpp).
#pragma GCC optimize("no-fast-math")

#include "cuda/persistent_launch.h"
#include "emulation/emulated_kernels.h"  // the declarations the ATen glue sees must match
