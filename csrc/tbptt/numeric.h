// TBPTT_HD (functions for host and device) and the storage <-> accumulation conversion that
// every backend shares. Framework-free.
#pragma once

#if defined(__CUDACC__)
#define TBPTT_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined, as under nvcc: the CPU loop vectorises only when the element functions are
// inlined into it, and the backward one is past GCC's own inlining limit.
#define TBPTT_HD inline __attribute__((always_inline))
#else
#define TBPTT_HD inline
#endif

namespace tbptt {

// Storage <-> accumulation conversion. simt.h specialises it for CUDA's __half and
// __nv_bfloat16 (PyTorch builds with their implicit conversions switched off); the emulator's
// 16-bit types convert by static_cast, like float and double.
template <typename To, typename From>
TBPTT_HD To convert(From value) {
  return static_cast<To>(value);
}

}  // namespace tbptt
