// The device layer: everything kernel code (csrc/cuda/*.cuh) may use besides plain C++ and
// lstm_math.h. Under nvcc it maps to CUDA (intrinsics, cooperative_groups, PTX); under g++ to
// the SIMT emulator (csrc/emulation/simt_emu.h), which runs the same kernel source on the CPU.
//
//   indices      simt::thread_idx() block_idx() block_dim() grid_dim() lane_id()  (simt::Dim3)
//   barriers     sync_block() (= __syncthreads), sync_warp(mask), sync_grid(),
//                grid_arrive() -> GridToken, grid_wait(token)   (cooperative launches only)
//   warp         shfl shfl_up shfl_down shfl_xor (mask, value, lane/delta, width), ballot any all
//   atomics      atomic_add(T* | shared element, v), load_acquire, store_release, fence
//   shared       shared_array<T>(byte_offset, count, "name") -> SharedArray<T>: the block's
//                dynamic shared memory, carved by the kernel at offsets the launcher sized;
//                a struct holding SharedArrays is declared `struct SIMT_DEVICE_TYPE Name`
//   tensor cores mma_m16n8k16<float16|bfloat16>(d, a, b, c) and its fragment maps (mma_layout)
//   types        simt::float16, simt::bfloat16 (convert explicitly: tbptt::convert),
//                bits_of(v) -> uint16_t, pack_pair(low, high) -> uint32_t
//   host side    launch / launch_cooperative(KernelSpec, kernel, grid, block, smem, stream,
//                params...), set_max_dynamic_shared_bytes, max_active_blocks_per_sm,
//                kernel_uses_local_memory, device_sm_count, device_max_shared_bytes_optin,
//                device_supports_cooperative_launch, device_compute_capability, status_name
//
// Kernel code must not use (the emulator cannot see or model it, or nvcc-only syntax):
//   - threadIdx / blockIdx / __syncthreads / __shfl_*_sync & co. directly: use simt::;
//   - static `__shared__` arrays or `extern __shared__`: use simt::shared_array;
//   - `__ldg` / `const __restrict__` loads of data that other blocks write during the kernel
//     (the read-only path may return stale values), `__device__` / `__constant__` globals
//     (pass everything through the params struct, by value);
//   - spin-waits or flags polled across threads or blocks, hand-made grid barriers (the
//     emulator does not preempt: they hang it; on a GPU they deadlock without co-residency);
//   - inline PTX, `__CUDA_ARCH__` branches, `<<<>>>` or cooperative_groups in .cuh files;
//   - warp collectives on partial warps (blockDim a multiple of 32) or with lanes that exit;
//   - reliance on block order, or on blocks running together outside a cooperative launch;
//   - implicit half/bfloat16 conversions (PyTorch builds with them disabled).
// Kernels live in `namespace tbptt { namespace SIMT_NS {` (cuda for nvcc, emu for the
// emulator): templated kernels are weak symbols, one namespace per build keeps them apart.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tbptt/numeric.h"

#if defined(__CUDACC__)

#include <cooperative_groups.h>
#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define SIMT_NS cuda
#define SIMT_DEVICE_TYPE
#define SIMT_KERNEL __global__
#define SIMT_DEVICE __device__ __forceinline__
#define SIMT_LAUNCH_BOUNDS(threads, min_blocks) __launch_bounds__(threads, min_blocks)

namespace simt {

using float16 = __half;
using bfloat16 = __nv_bfloat16;

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
using Status = cudaError_t;
constexpr Status kSuccess = cudaSuccess;
constexpr Status kErrorCooperativeLaunchTooLarge = cudaErrorCooperativeLaunchTooLarge;
using Stream = cudaStream_t;
inline const char* status_name(Status status) { return cudaGetErrorName(status); }

struct KernelSpec {
  const char* name;
  int registers;
};

SIMT_DEVICE Dim3 thread_idx() { return Dim3{threadIdx.x, threadIdx.y, threadIdx.z}; }
SIMT_DEVICE Dim3 block_idx() { return Dim3{blockIdx.x, blockIdx.y, blockIdx.z}; }
SIMT_DEVICE Dim3 block_dim() { return Dim3{blockDim.x, blockDim.y, blockDim.z}; }
SIMT_DEVICE Dim3 grid_dim() { return Dim3{gridDim.x, gridDim.y, gridDim.z}; }
SIMT_DEVICE unsigned lane_id() {
  return ((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x) % kWarpSize;
}

SIMT_DEVICE void sync_block() { __syncthreads(); }
SIMT_DEVICE void sync_warp(unsigned mask = kFullMask) { __syncwarp(mask); }

using GridToken = unsigned;
SIMT_DEVICE GridToken grid_arrive() { return cooperative_groups::this_grid().barrier_arrive(); }
SIMT_DEVICE void grid_wait(GridToken token) {
  cooperative_groups::this_grid().barrier_wait(static_cast<GridToken&&>(token));
}
SIMT_DEVICE void sync_grid() { cooperative_groups::this_grid().sync(); }

template <typename T>
SIMT_DEVICE T shfl(unsigned mask, T value, int src_lane, int width = kWarpSize) {
  return __shfl_sync(mask, value, src_lane, width);
}
template <typename T>
SIMT_DEVICE T shfl_up(unsigned mask, T value, unsigned delta, int width = kWarpSize) {
  return __shfl_up_sync(mask, value, delta, width);
}
template <typename T>
SIMT_DEVICE T shfl_down(unsigned mask, T value, unsigned delta, int width = kWarpSize) {
  return __shfl_down_sync(mask, value, delta, width);
}
template <typename T>
SIMT_DEVICE T shfl_xor(unsigned mask, T value, int lane_mask, int width = kWarpSize) {
  return __shfl_xor_sync(mask, value, lane_mask, width);
}
SIMT_DEVICE unsigned ballot(unsigned mask, bool predicate) { return __ballot_sync(mask, predicate); }
SIMT_DEVICE bool any(unsigned mask, bool predicate) { return __any_sync(mask, predicate); }
SIMT_DEVICE bool all(unsigned mask, bool predicate) { return __all_sync(mask, predicate); }

template <typename T>
SIMT_DEVICE T atomic_add(T* address, T value) {
  return atomicAdd(address, value);
}
template <typename T>
SIMT_DEVICE T load_acquire(const T* address) {
  return ::cuda::atomic_ref<T, ::cuda::thread_scope_device>(*const_cast<T*>(address))
      .load(::cuda::memory_order_acquire);
}
template <typename T>
SIMT_DEVICE void store_release(T* address, T value) {
  ::cuda::atomic_ref<T, ::cuda::thread_scope_device>(*address).store(value, ::cuda::memory_order_release);
}
SIMT_DEVICE void fence() { __threadfence(); }

SIMT_DEVICE uint16_t bits_of(float16 value) { return __half_as_ushort(value); }
SIMT_DEVICE uint16_t bits_of(bfloat16 value) { return __bfloat16_as_ushort(value); }

template <typename T>
using SharedArray = T*;
template <typename T>
SIMT_DEVICE T* shared_array(size_t byte_offset, int64_t /*count*/, const char* /*name*/ = nullptr) {
  extern __shared__ __align__(16) unsigned char simt_dynamic_shared[];
  return reinterpret_cast<T*>(simt_dynamic_shared + byte_offset);
}

// D = A B + C on tensor cores; fragments as in simt::mma_layout below.
template <typename Operand>
SIMT_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                              const float (&c)[4]);
template <>
SIMT_DEVICE void mma_m16n8k16<bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                        const uint32_t (&b)[2], const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}
template <>
SIMT_DEVICE void mma_m16n8k16<float16>(float (&d)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2], const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

namespace detail {
template <typename T>
struct identity {
  using type = T;
};
}  // namespace detail

// Host side. The launch status of <<<>>> is read with cudaGetLastError (clears it).
template <typename... Params>
Status launch(const KernelSpec&, void (*kernel)(Params...), Dim3 grid, Dim3 block,
              size_t shared_bytes, Stream stream, typename detail::identity<Params>::type... params) {
  kernel<<<dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), shared_bytes, stream>>>(
      params...);
  return cudaGetLastError();
}

template <typename... Params>
Status launch_cooperative(const KernelSpec&, void (*kernel)(Params...), Dim3 grid, Dim3 block,
                          size_t shared_bytes, Stream stream,
                          typename detail::identity<Params>::type... params) {
  void* arguments[] = {static_cast<void*>(&params)..., nullptr};
  const Status status = cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel), dim3(grid.x, grid.y, grid.z),
      dim3(block.x, block.y, block.z), arguments, shared_bytes, stream);
  if (status != cudaSuccess) cudaGetLastError();  // clear the sticky-free launch error
  return status;
}

template <typename... Params>
Status set_max_dynamic_shared_bytes(void (*kernel)(Params...), size_t bytes) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <typename... Params>
Status max_active_blocks_per_sm(int* blocks, const KernelSpec&, void (*kernel)(Params...),
                                Dim3 block, size_t shared_bytes) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(kernel), static_cast<int>(block.x * block.y * block.z),
      shared_bytes);
}

inline Status device_sm_count(int* sms) {
  int device = 0;
  const Status status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

inline Status device_max_shared_bytes_optin(int* bytes) {
  int device = 0;
  const Status status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  return cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
}

// Whether the kernel as compiled for this device uses local memory (spilled registers).
template <typename... Params>
Status kernel_uses_local_memory(bool* uses, void (*kernel)(Params...)) {
  cudaFuncAttributes attributes{};
  const Status status = cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(kernel));
  *uses = status == cudaSuccess && attributes.localSizeBytes > 0;
  return status;
}

inline Status device_supports_cooperative_launch(bool* supported) {
  int device = 0, value = 0;
  Status status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&value, cudaDevAttrCooperativeLaunch, device);
  *supported = status == cudaSuccess && value != 0;
  return status;
}

// The current device's compute capability (8.0: A100; 8.6: A10, RTX 30; 8.9: L4, RTX 40;
// 9.0: H100, H200).
inline Status device_compute_capability(int* major, int* minor) {
  int device = 0;
  Status status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device);
  return status;
}

}  // namespace simt

// PyTorch compiles CUDA with the implicit half conversions switched off: convert explicitly.
namespace tbptt {
template <>
TBPTT_HD float convert<float, __half>(__half value) {
  return __half2float(value);
}
template <>
TBPTT_HD __half convert<__half, float>(float value) {
  return __float2half(value);
}
template <>
TBPTT_HD float convert<float, __nv_bfloat16>(__nv_bfloat16 value) {
  return __bfloat162float(value);
}
template <>
TBPTT_HD __nv_bfloat16 convert<__nv_bfloat16, float>(float value) {
  return __float2bfloat16(value);
}
}  // namespace tbptt

#else  // the SIMT emulator

#define SIMT_NS emu
// A struct of kernel code holding simt:: objects (SharedArray): hidden like the emulator's own
// types, which simt_emu.h declares under visibility(hidden) (g++ warns on a visible struct
// with hidden members).
#define SIMT_DEVICE_TYPE __attribute__((visibility("hidden")))
#define SIMT_KERNEL
#define SIMT_DEVICE inline
#define SIMT_LAUNCH_BOUNDS(threads, min_blocks)

#include "emulation/simt_emu.h"

#endif

namespace simt {

// Two 16-bit values in one register, `low` in the low half (an mma operand register).
template <typename T>
SIMT_DEVICE uint32_t pack_pair(T low, T high) {
  return static_cast<uint32_t>(bits_of(low)) | (static_cast<uint32_t>(bits_of(high)) << 16);
}

// Fragment maps of mma.m16n8k16.row.col with 16-bit operands (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"): lane l of the warp holds, with g = l / 4 and t = l % 4,
//   A [16 x 16], 8 values a0..a7 in 4 registers (two per register, low half first):
//       row = g + 8 * ((i / 2) % 2),   col = 2 t + (i % 2) + 8 * (i / 4)
//   B [16 x 8], 4 values b0..b3 in 2 registers:  row = 2 t + (i % 2) + 8 * (i / 2),  col = g
//   C, D [16 x 8] fp32, 4 values:                 row = g + 8 * (i / 2),  col = 2 t + (i % 2)
// The emulator implements the product with its own copy of these maps; tests hold both to
// CuTe's SM80_16x8x16 layouts.
namespace mma_layout {
TBPTT_HD constexpr int a_row(int lane, int i) { return lane / 4 + 8 * ((i / 2) % 2); }
TBPTT_HD constexpr int a_col(int lane, int i) { return 2 * (lane % 4) + (i % 2) + 8 * (i / 4); }
TBPTT_HD constexpr int b_row(int lane, int i) { return 2 * (lane % 4) + (i % 2) + 8 * (i / 2); }
TBPTT_HD constexpr int b_col(int lane, int /*i*/) { return lane / 4; }
TBPTT_HD constexpr int c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
TBPTT_HD constexpr int c_col(int lane, int i) { return 2 * (lane % 4) + (i % 2); }
}  // namespace mma_layout

}  // namespace simt
