// nvcc's build of the grid-barrier microbenchmark and its launch glue: tbptt::cuda::*barrier_bench*.
#include "cuda/barrier_bench_launch.h"
#include "cuda/lstm_kernels.h"  // the declarations the ATen glue sees must match
