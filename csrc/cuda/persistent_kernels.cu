// nvcc's build of the persistent kernels, their plan and launch glue: tbptt::cuda::*_persistent*.
#include "cuda/persistent_launch.h"
#include "cuda/lstm_kernels.h"  // the declarations the ATen glue sees must match
