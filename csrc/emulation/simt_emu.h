// The SIMT emulator: what csrc/tbptt/simt.h maps the device layer to when g++ compiles kernel
// source for the CPU. Framework-free C++17 (no ATen, no CUDA toolkit).
//
// Every CUDA thread of a launch is a user-space fiber; a block's fibers (for a cooperative
// launch, the whole grid's) are alive at once and switch at barriers and warp collectives.
// Scheduling is block-serial: one block runs until all its threads wait at the grid barrier
// or have finished, then the next, so a missing grid barrier shows as stale data. Misuse
// (divergent barriers, deadlock, a collective whose lanes do not all arrive, shared memory out
// of bounds or raced between barriers) throws simt::emu::KernelError naming the kernel, block,
// thread and source line. csrc/emulation/simt_emu.cpp is the scheduler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "emulation/simt_half.h"

#pragma GCC visibility push(hidden)

namespace simt {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Launch status: the numeric values of the cudaError_t codes the launchers can meet.
using Status = int;
constexpr Status kSuccess = 0;
constexpr Status kErrorInvalidValue = 1;
constexpr Status kErrorInvalidConfiguration = 9;
constexpr Status kErrorLaunchOutOfResources = 701;
constexpr Status kErrorCooperativeLaunchTooLarge = 720;
constexpr Status kErrorNotSupported = 801;
const char* status_name(Status status);

using Stream = void*;  // no streams: a launch runs to completion before it returns

// What the launcher declares of a kernel: its name (statistics, error messages) and the
// registers per thread it is compiled for (the simulated device's occupancy uses it; CI checks
// the nvcc build against it).
struct KernelSpec {
  const char* name;
  int registers;
};

namespace emu {

// Misuse of the device layer found while a kernel runs.
class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The simulated device (an H100 SXM's limits by default; device_preset() has the others).
struct DeviceModel {
  const char* name = "H100";
  int major = 9, minor = 0;                  // compute capability
  int sms = 132;
  int registers_per_sm = 65536;
  int shared_bytes_per_sm = 233472;          // 228 KiB
  int shared_bytes_per_block_optin = 232448; // 227 KiB, after set_max_dynamic_shared_bytes
  int shared_bytes_per_block_default = 49152;
  int threads_per_sm = 2048;
  int blocks_per_sm = 32;
  int threads_per_block = 1024;
  bool cooperative_launch = true;
};

// The published limits of the GPUs users train on (CUDA C++ Programming Guide, "Compute
// Capabilities" table, and each product's datasheet for the SM count), by name: "H100" (SXM5),
// "A100" (SXM4), "A10", "RTX4090", "L4". nullptr for any other name.
const DeviceModel* device_preset(const std::string& name);
// The presets' names, in the order above.
std::vector<std::string> device_preset_names();

enum class Order { kForward, kReverse, kRandom };

struct Config {
  DeviceModel device;
  Order order = Order::kForward;  // of blocks, and of threads within a block's sweep
  uint64_t seed = 0;              // for Order::kRandom
  bool racecheck = true;          // shared-memory hazard tracking
  // Fault injection: launches of the kernel of this name (KernelSpec::name) return
  // failing_status without running, as a launch the hardware refuses would. Empty: none.
  std::string failing_kernel;
  Status failing_status = kSuccess;
};

// Process-wide settings; change them between launches, not during one.
Config config();
void set_config(const Config& config);

// Per-kernel counts since the last reset_stats().
struct KernelStats {
  uint64_t launches = 0;
  uint64_t block_barriers = 0;  // completed __syncthreads, summed over blocks
  uint64_t grid_barriers = 0;   // completed grid-wide barriers
  uint64_t warp_collectives = 0;
};
std::map<std::string, KernelStats> stats();
void reset_stats();

// ---- the state of the running emulated thread ---------------------------------------------

struct Thread;  // scheduler-private

// The fields device code reads; the scheduler points `current_view` at the running thread's.
struct ThreadView {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
  unsigned lane;    // linear thread index % 32
  Thread* thread;
};

extern thread_local const ThreadView* current_view;

inline const ThreadView& view() {
  if (current_view == nullptr) throw KernelError("simt: device function called outside a kernel");
  return *current_view;
}

// Runtime entry points (simt_emu.cpp).
void block_barrier(const char* file, int line);
void warp_sync(unsigned mask, const char* file, int line);
unsigned grid_arrive(const char* file, int line);
void grid_wait(unsigned token, const char* file, int line);

enum class CollectiveKind : uint8_t { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
uint64_t warp_collective(CollectiveKind kind, unsigned mask, uint64_t value, int arg, int width,
                         const char* file, int line);

enum class MmaOperand : uint8_t { kFloat16, kBFloat16 };
void mma_m16n8k16(MmaOperand operand, float* d, const uint32_t* a, const uint32_t* b,
                  const float* c, const char* file, int line);

// Shared memory of the running block: bounds, race and poison checks.
struct Arena;  // scheduler-private
Arena* current_arena();
unsigned char* arena_base(Arena* arena);
size_t arena_bytes(Arena* arena);
enum class Access : uint8_t { kRead, kWrite, kAtomic };
// Checks an access of `bytes` bytes at byte `offset` of the arena, as element `index` of the
// carved array `name` (count elements); throws on out of bounds or a race.
void shared_access(Arena* arena, const char* name, int64_t index, int64_t count, size_t offset,
                   size_t bytes, Access access);
void check_carve(Arena* arena, const char* name, size_t offset, size_t bytes, size_t alignment);

// ---- launches ------------------------------------------------------------------------------

struct LaunchRequest {
  KernelSpec kernel;
  const void* kernel_id;  // identifies the kernel for set_max_dynamic_shared_bytes
  Dim3 grid, block;
  size_t shared_bytes;
  bool cooperative;
  void (*run_thread)(const void* context);  // runs the kernel body for the current thread
  const void* context;
};

Status launch(const LaunchRequest& request);
Status set_max_dynamic_shared_bytes(const void* kernel_id, size_t bytes);
int max_active_blocks_per_sm(const KernelSpec& kernel, Dim3 block, size_t shared_bytes);

}  // namespace emu

// ---- device layer (the g++ side of csrc/tbptt/simt.h) --------------------------------------

inline Dim3 thread_idx() { return emu::view().thread_idx; }
inline Dim3 block_idx() { return emu::view().block_idx; }
inline Dim3 block_dim() { return emu::view().block_dim; }
inline Dim3 grid_dim() { return emu::view().grid_dim; }
inline unsigned lane_id() { return emu::view().lane; }

inline void sync_block(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::block_barrier(file, line);
}
inline void sync_warp(unsigned mask = kFullMask, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  emu::warp_sync(mask, file, line);
}

// Grid-wide barrier of a cooperative launch, whole or split: every thread of every block calls
// grid_arrive, may work, then grid_wait with the token; writes before the arrive are visible to
// every block after the wait.
using GridToken = unsigned;
inline GridToken grid_arrive(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return emu::grid_arrive(file, line);
}
inline void grid_wait(GridToken token, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  emu::grid_wait(token, file, line);
}
inline void sync_grid(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::grid_wait(emu::grid_arrive(file, line), file, line);
}

namespace emu {
template <typename T>
uint64_t to_bits(T value) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of <= 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}
}  // namespace emu

template <typename T>
T shfl(unsigned mask, T value, int src_lane, int width = kWarpSize,
       const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return emu::from_bits<T>(emu::warp_collective(emu::CollectiveKind::kShflIdx, mask,
                                                emu::to_bits(value), src_lane, width, file, line));
}
template <typename T>
T shfl_up(unsigned mask, T value, unsigned delta, int width = kWarpSize,
          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return emu::from_bits<T>(emu::warp_collective(emu::CollectiveKind::kShflUp, mask,
                                                emu::to_bits(value), int(delta), width, file, line));
}
template <typename T>
T shfl_down(unsigned mask, T value, unsigned delta, int width = kWarpSize,
            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return emu::from_bits<T>(emu::warp_collective(emu::CollectiveKind::kShflDown, mask,
                                                emu::to_bits(value), int(delta), width, file, line));
}
template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask, int width = kWarpSize,
           const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return emu::from_bits<T>(emu::warp_collective(emu::CollectiveKind::kShflXor, mask,
                                                emu::to_bits(value), lane_mask, width, file, line));
}
inline unsigned ballot(unsigned mask, bool predicate, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  return static_cast<unsigned>(
      emu::warp_collective(emu::CollectiveKind::kBallot, mask, predicate, 0, kWarpSize, file, line));
}
inline bool any(unsigned mask, bool predicate, const char* file = __builtin_FILE(),
                int line = __builtin_LINE()) {
  return emu::warp_collective(emu::CollectiveKind::kAny, mask, predicate, 0, kWarpSize, file, line);
}
inline bool all(unsigned mask, bool predicate, const char* file = __builtin_FILE(),
                int line = __builtin_LINE()) {
  return emu::warp_collective(emu::CollectiveKind::kAll, mask, predicate, 0, kWarpSize, file, line);
}

// ---- atomics on global memory (fibers may later run on several OS threads: real atomics) ---

template <typename T>
T atomic_add(T* address, T value) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    T expected;
    __atomic_load(address, &expected, __ATOMIC_RELAXED);
    T desired = expected + value;
    while (!__atomic_compare_exchange(address, &expected, &desired, false, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
      desired = expected + value;
    }
    return expected;
  }
}
template <typename T>
T load_acquire(const T* address) {
  T value;
  __atomic_load(address, &value, __ATOMIC_ACQUIRE);
  return value;
}
template <typename T>
void store_release(T* address, T value) {
  __atomic_store(address, &value, __ATOMIC_RELEASE);
}
inline void fence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

inline uint16_t bits_of(float16 value) { return value.bits; }
inline uint16_t bits_of(bfloat16 value) { return value.bits; }

// ---- the block's dynamic shared memory ------------------------------------------------------

// One element of a shared array: every read and write is checked (bounds, races).
template <typename T>
class SharedRef {
 public:
  SharedRef(emu::Arena* arena, const char* name, size_t offset, int64_t index, int64_t count)
      : arena_(arena), name_(name), offset_(offset), index_(index), count_(count) {}
  operator T() const {
    emu::shared_access(arena_, name_, index_, count_, offset_, sizeof(T), emu::Access::kRead);
    T value;
    std::memcpy(&value, emu::arena_base(arena_) + offset_, sizeof(T));
    return value;
  }
  const SharedRef& operator=(const T& value) const {
    emu::shared_access(arena_, name_, index_, count_, offset_, sizeof(T), emu::Access::kWrite);
    std::memcpy(emu::arena_base(arena_) + offset_, &value, sizeof(T));
    return *this;
  }
  const SharedRef& operator=(const SharedRef& other) const { return *this = static_cast<T>(other); }
  const SharedRef& operator+=(const T& value) const { return *this = static_cast<T>(*this) + value; }
  const SharedRef& operator-=(const T& value) const { return *this = static_cast<T>(*this) - value; }
  const SharedRef& operator*=(const T& value) const { return *this = static_cast<T>(*this) * value; }
  // Atomic add on shared memory (atomics of different threads do not race with each other).
  T atomic_add(const T& value) const {
    emu::shared_access(arena_, name_, index_, count_, offset_, sizeof(T), emu::Access::kAtomic);
    T old;
    std::memcpy(&old, emu::arena_base(arena_) + offset_, sizeof(T));
    const T sum = old + value;
    std::memcpy(emu::arena_base(arena_) + offset_, &sum, sizeof(T));
    return old;
  }

 private:
  emu::Arena* arena_;
  const char* name_;
  size_t offset_;
  int64_t index_, count_;
};

// A typed, bounded view of part of the block's dynamic shared memory (a T* under nvcc).
template <typename T>
class SharedArray {
 public:
  SharedArray() = default;
  SharedArray(emu::Arena* arena, const char* name, size_t offset, int64_t count)
      : arena_(arena), name_(name), offset_(offset), count_(count) {}
  SharedRef<T> operator[](int64_t i) const {
    return SharedRef<T>(arena_, name_, offset_ + static_cast<size_t>(i) * sizeof(T), i, count_);
  }
  SharedRef<T> operator*() const { return (*this)[0]; }
  // Pointer arithmetic: the view of elements [i, count).
  SharedArray operator+(int64_t i) const {
    return SharedArray(arena_, name_, offset_ + static_cast<size_t>(i) * sizeof(T), count_ - i);
  }

 private:
  emu::Arena* arena_ = nullptr;
  const char* name_ = "";
  size_t offset_ = 0;
  int64_t count_ = 0;
};

// `count` elements of T at `byte_offset` into the launch's dynamic shared memory. The launcher
// sizes the arena; carve offsets must be multiples of alignof(T) (16 keeps vector loads legal).
template <typename T>
SharedArray<T> shared_array(size_t byte_offset, int64_t count, const char* name = "shared") {
  emu::Arena* arena = emu::current_arena();
  emu::check_carve(arena, name, byte_offset, static_cast<size_t>(count) * sizeof(T), alignof(T));
  return SharedArray<T>(arena, name, byte_offset, count);
}

template <typename T>
T atomic_add(const SharedRef<T>& element, T value) {
  return element.atomic_add(value);
}

// ---- tensor cores ---------------------------------------------------------------------------

// D[16x8] = A[16x16] B[16x8] + C, fp32 accumulation; operands 16-bit, two per uint32 (low half
// first), in the fragment layouts of PTX's mma.sync.aligned.m16n8k16.row.col (see simt.h).
// A warp-wide collective: all 32 lanes must take part.
template <typename Operand>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4], const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  static_assert(std::is_same<Operand, float16>::value || std::is_same<Operand, bfloat16>::value,
                "mma operands are float16 or bfloat16");
  emu::mma_m16n8k16(std::is_same<Operand, float16>::value ? emu::MmaOperand::kFloat16
                                                         : emu::MmaOperand::kBFloat16,
                    d, a, b, c, file, line);
}

// ---- host side: launching -------------------------------------------------------------------

namespace emu {
template <typename T>
struct identity {
  using type = T;
};

template <typename... Params>
struct KernelCall {
  void (*kernel)(Params...);
  std::tuple<std::decay_t<Params>...> params;
  static void run(const void* context) {
    const KernelCall& call = *static_cast<const KernelCall*>(context);
    std::tuple<std::decay_t<Params>...> copy = call.params;  // each thread its own parameters
    std::apply(call.kernel, copy);
  }
};

template <typename... Params>
Status launch_call(const KernelSpec& spec, void (*kernel)(Params...), Dim3 grid, Dim3 block,
                   size_t shared_bytes, bool cooperative,
                   typename identity<Params>::type... params) {
  const KernelCall<Params...> call{kernel, std::tuple<std::decay_t<Params>...>(params...)};
  LaunchRequest request{spec, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes,
                        cooperative, &KernelCall<Params...>::run, &call};
  return launch(request);
}
}  // namespace emu

template <typename... Params>
Status launch(const KernelSpec& spec, void (*kernel)(Params...), Dim3 grid, Dim3 block,
              size_t shared_bytes, Stream /*stream*/, typename emu::identity<Params>::type... params) {
  return emu::launch_call(spec, kernel, grid, block, shared_bytes, false, params...);
}

template <typename... Params>
Status launch_cooperative(const KernelSpec& spec, void (*kernel)(Params...), Dim3 grid, Dim3 block,
                          size_t shared_bytes, Stream /*stream*/,
                          typename emu::identity<Params>::type... params) {
  return emu::launch_call(spec, kernel, grid, block, shared_bytes, true, params...);
}

template <typename... Params>
Status set_max_dynamic_shared_bytes(void (*kernel)(Params...), size_t bytes) {
  return emu::set_max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel), bytes);
}

// Blocks of `kernel` one SM holds at once with this block size and shared memory.
template <typename... Params>
Status max_active_blocks_per_sm(int* blocks, const KernelSpec& spec, void (*)(Params...),
                                Dim3 block, size_t shared_bytes) {
  *blocks = emu::max_active_blocks_per_sm(spec, block, shared_bytes);
  return kSuccess;
}

// The emulator has no local memory to spill to: compiled code is the host's.
template <typename... Params>
Status kernel_uses_local_memory(bool* uses, void (*)(Params...)) {
  *uses = false;
  return kSuccess;
}

// SMs of the (simulated) device, the shared memory a block may opt in to, and whether it takes
// cooperative launches.
inline Status device_sm_count(int* sms) {
  *sms = emu::config().device.sms;
  return kSuccess;
}
inline Status device_max_shared_bytes_optin(int* bytes) {
  *bytes = emu::config().device.shared_bytes_per_block_optin;
  return kSuccess;
}
inline Status device_supports_cooperative_launch(bool* supported) {
  *supported = emu::config().device.cooperative_launch;
  return kSuccess;
}
inline Status device_compute_capability(int* major, int* minor) {
  *major = emu::config().device.major;
  *minor = emu::config().device.minor;
  return kSuccess;
}

}  // namespace simt

#pragma GCC visibility pop
