// The device backends that ops.cpp binds to each dispatch key, and the plain ATen GEMMs they
// may share.
#pragma once

#include <string>

#include "lstm_driver.h"

namespace tbptt {
// GEMMs through at::mm / addmm: cuBLAS on CUDA (current stream), the CPU BLAS on CPU.
namespace aten_gemm {
const GemmBackend& gemm();
}
namespace cpu {
const DeviceBackend& backend();
const GemmBackend& gemm();
// Which library the CPU GEMMs use: "onednn" (float32, where torch has it) or "aten".
// Set it between calls, not while a forward or backward runs.
void set_gemm_library(const std::string& name);
std::string gemm_library(at::ScalarType dtype);
}
#ifdef TBPTT_WITH_CUDA
namespace cuda {
const DeviceBackend& backend();
}
#endif
}  // namespace tbptt
