// nvcc's build of the kernels and their launch glue: tbptt::cuda::launch_*.
#include "cuda/lstm_launch.h"
#include "cuda/lstm_kernels.h"  // the declarations the ATen glue sees must match
