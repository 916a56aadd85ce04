// The SIMT emulator's scheduler: fibers, block-serial scheduling, barriers, warp collectives,
// tensor-core products, shared-memory checks, the simulated device and the statistics.
// Framework-free C++17. See simt_emu.h for what it offers device code.
//
// Fibers: every emulated thread runs on its own small stack and switches to the scheduler
// only where it must wait (a barrier, a collective). The switch is ~20 instructions of
// assembly on x86-64 (glibc's swapcontext, the fallback elsewhere, makes a syscall per switch
// and is ~15x slower). All fibers of a launch run on the launching OS thread, one at a time.
//
// Sanitizers: under -fsanitize=thread each emulated thread is a TSan fiber; switches carry no
// synchronisation, barriers release on arrival and acquire on wake-up, so TSan sees exactly
// the ordering CUDA guarantees (none between blocks of a plain launch). Under
// -fsanitize=address the switches are announced to ASan.
#pragma GCC optimize("no-fast-math")

#include "emulation/simt_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define SIMT_EMU_TSAN 1
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_EMU_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                     size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* address, size_t size);
}
#endif

#if defined(__x86_64__) && !defined(SIMT_EMU_UCONTEXT)
#define SIMT_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if SIMT_EMU_ASM_SWITCH
// simt_emu_switch(save, load): saves the callee-saved registers, MXCSR and the x87 control
// word on the current stack, stores the stack pointer in *save, continues on stack `load`.
// simt_emu_fiber_start: the first return address of a new fiber; calls r13(r12).
asm(R"(
  .text
  .p2align 4
  .globl simt_emu_switch
  .hidden simt_emu_switch
  .type simt_emu_switch,@function
simt_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size simt_emu_switch,.-simt_emu_switch

  .p2align 4
  .globl simt_emu_fiber_start
  .hidden simt_emu_fiber_start
  .type simt_emu_fiber_start,@function
simt_emu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size simt_emu_fiber_start,.-simt_emu_fiber_start
)");
extern "C" void simt_emu_switch(void** save, void* load);
extern "C" void simt_emu_fiber_start();
#endif

#pragma GCC visibility push(hidden)

namespace simt {

const char* status_name(Status status) {
  switch (status) {
    case kSuccess: return "cudaSuccess";
    case kErrorInvalidValue: return "cudaErrorInvalidValue";
    case kErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case kErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case kErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case kErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaError (unknown code)";
  }
}

namespace emu {

thread_local const ThreadView* current_view = nullptr;

namespace {

// ---- settings and statistics ----------------------------------------------------------------

std::mutex& settings_mutex() {
  static std::mutex mutex;
  return mutex;
}
Config& settings() {
  static Config value;
  return value;
}
std::map<std::string, KernelStats>& stats_table() {
  static std::map<std::string, KernelStats> table;
  return table;
}
std::map<const void*, size_t>& shared_optin() {
  static std::map<const void*, size_t> table;
  return table;
}

#if SIMT_EMU_TSAN
// The scheduler's own bookkeeping is shared by all fibers without synchronisation (they run
// one at a time): keep it out of TSan's view.
struct IgnoreBookkeeping {
  IgnoreBookkeeping() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~IgnoreBookkeeping() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
};
#define SIMT_BOOKKEEPING IgnoreBookkeeping ignore_bookkeeping_
#define SIMT_TSAN_RELEASE(address) __tsan_release(address)
#define SIMT_TSAN_ACQUIRE(address) __tsan_acquire(address)
#else
#define SIMT_BOOKKEEPING
#define SIMT_TSAN_RELEASE(address)
#define SIMT_TSAN_ACQUIRE(address)
#endif

size_t stack_bytes() {
  static const size_t bytes = [] {
    size_t kib = 64;
#if SIMT_EMU_ASAN
    kib = 256;  // ASan's redzones make frames larger
#endif
    if (const char* env = std::getenv("TBPTT_EMU_STACK_KB")) kib = std::max(16L, std::atol(env));
    return kib * 1024;
  }();
  return bytes;
}

}  // namespace

// ---- types of a launch --------------------------------------------------------------------------

// A stack with an inaccessible guard page below it: an overflow faults instead of silently
// corrupting the neighbour's stack.
struct Stack {
  char* low = nullptr;  // first usable byte
  size_t size = 0;
};

class StackPool {
 public:
  ~StackPool() {
    for (const Stack& s : free_) munmap(s.low - page(), s.size + page());
  }
  Stack take() {
    if (!free_.empty()) {
      Stack s = free_.back();
      free_.pop_back();
      return s;
    }
    const size_t size = stack_bytes();
    void* memory = mmap(nullptr, size + page(), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) throw std::bad_alloc();
    mprotect(memory, page(), PROT_NONE);
    return Stack{static_cast<char*>(memory) + page(), size};
  }
  void give(const Stack& s) {
#if SIMT_EMU_ASAN
    __asan_unpoison_memory_region(s.low, s.size);  // frames abandoned by an aborted launch
#endif
    free_.push_back(s);
  }

 private:
  static size_t page() {
    static const size_t bytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return bytes;
  }
  std::vector<Stack> free_;
};

enum class State : uint8_t { kRunnable, kBlockBarrier, kCollective, kGridWait, kDone };
enum class BarrierKind : uint8_t { kSyncThreads, kGridArrive };
enum class GroupKind : uint8_t { kShuffle, kVote, kSyncWarp, kMma };

struct Launch;
struct Block;

struct Shadow {  // per byte of shared memory, for the racecheck
  uint32_t write_epoch;
  uint32_t read_epoch;
  uint16_t writer;
  uint16_t reader;
  uint16_t writer_warp_syncs;
  uint16_t reader_warp_syncs;
  uint8_t flags;
};
constexpr uint8_t kManyReaders = 1, kReadersInSeveralWarps = 2, kAtomicWrite = 4;

struct Thread {
  ThreadView view;
  Launch* launch = nullptr;
  Block* block = nullptr;
  unsigned linear = 0;  // index within the block
  State state = State::kRunnable;
  const char* file = "";  // where it waits
  int line = 0;
  // a pending warp collective
  GroupKind group = GroupKind::kShuffle;
  CollectiveKind kind = CollectiveKind::kShflIdx;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  MmaOperand mma_operand = MmaOperand::kFloat16;
  float* mma_d = nullptr;
  const uint32_t* mma_a = nullptr;
  const uint32_t* mma_b = nullptr;
  const float* mma_c = nullptr;
  // grid
  unsigned token = 0;
  // the fiber
  Stack stack;
#if SIMT_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
};

struct Arena {
  std::vector<unsigned char> bytes;
  std::vector<Shadow> shadow;  // empty without racecheck
  Block* block = nullptr;
};

// A warp collective some lanes of `mask` have joined; `first` tells which call it is.
struct OpenCollective {
  unsigned mask;
  unsigned arrived;
  const Thread* first;
};

struct Warp {
  unsigned existing = 0;  // lanes that exist (a partial last warp has fewer)
  unsigned exited = 0;    // lanes that have finished
  uint16_t syncs = 0;     // completed __syncwarp, for the racecheck's ordering
  std::vector<OpenCollective> open;
};

struct Block {
  Dim3 index;
  unsigned linear = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  unsigned live = 0, finished = 0;
  // the block barrier being gathered
  unsigned barrier_waiting = 0;
  BarrierKind barrier_kind = BarrierKind::kSyncThreads;
  const char* barrier_file = "";
  int barrier_line = 0;
  const char* last_barrier_file = nullptr;  // for messages (nullptr: none yet)
  int last_barrier_line = 0;
  uint32_t first_epoch = 0, epoch = 0;  // racecheck epochs of this block
  // the grid barrier
  unsigned grid_arrivals = 0;  // completed grid_arrive calls
  unsigned grid_waiting = 0;
  bool parked = false;
  unsigned wait_token = 0;
  const char* grid_file = "";
  int grid_line = 0;
  Arena arena;
  char tsan_sync = 0;  // address for TSan's release/acquire at this block's barriers
};

struct Launch {
  LaunchRequest request;
  Config config;
  unsigned threads_per_block = 0;
  std::vector<std::unique_ptr<Block>> blocks;
  std::exception_ptr error;
  bool aborted = false;
  uint32_t epoch_counter = 0;
  unsigned grid_phases_done = 0;
  KernelStats counts;
  std::mt19937_64 rng;
  // TSan sync objects: the launch's start (set-up -> every fiber), its end (every fiber ->
  // the launcher; a different object, or block-serial order would order the blocks), grid
  // barriers.
  char tsan_start = 0;
  char tsan_end = 0;
  char tsan_grid_sync = 0;
#if SIMT_EMU_ASM_SWITCH
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_context;
#endif
  void* scheduler_tsan_fiber = nullptr;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
};

namespace {

thread_local StackPool stack_pool;
thread_local Launch* current_launch = nullptr;
thread_local Thread* current_thread = nullptr;

// ---- messages ---------------------------------------------------------------------------------

std::string dims(Dim3 d) {
  std::ostringstream s;
  s << "(" << d.x << "," << d.y << "," << d.z << ")";
  return s.str();
}

std::string where(const char* file, int line) {
  std::string f = file ? file : "?";
  const size_t cut = f.find("csrc/");
  if (cut != std::string::npos) f = f.substr(cut);
  return f + ":" + std::to_string(line);
}

std::string who(const Thread& t) {
  return "kernel " + std::string(t.launch->request.kernel.name) + ", block " +
         dims(t.view.block_idx) + ", thread " + dims(t.view.thread_idx);
}

std::string hex(unsigned value) {
  std::ostringstream s;
  s << "0x" << std::hex << value;
  return s.str();
}

[[noreturn]] void fail(const Thread& t, const std::string& what) {
  throw KernelError("simt emulator: " + who(t) + ": " + what);
}

// ---- fiber switching --------------------------------------------------------------------------

void fiber_main(Thread* t);

#if SIMT_EMU_ASM_SWITCH
extern "C" void simt_emu_fiber_entry(void* thread) { fiber_main(static_cast<Thread*>(thread)); }
#else
void fiber_entry_ucontext(unsigned high, unsigned low) {
  const uintptr_t address = (static_cast<uintptr_t>(high) << 32) | low;
  fiber_main(reinterpret_cast<Thread*>(address));
}
#endif

void init_fiber(Thread& t) {
  t.stack = stack_pool.take();
#if SIMT_EMU_ASM_SWITCH
  // Initial frame, popped by simt_emu_switch: [mxcsr|fpucw] r15 r14 r13 r12 rbx rbp [return],
  // the return slot 8 bytes below a 16-byte boundary so that the entry call is aligned.
  uintptr_t top = reinterpret_cast<uintptr_t>(t.stack.low + t.stack.size) & ~uintptr_t(15);
  uint64_t* slot = reinterpret_cast<uint64_t*>(top - 24);
  slot[0] = reinterpret_cast<uint64_t>(&simt_emu_fiber_start);
  slot[-1] = 0;                                                         // rbp
  slot[-2] = 0;                                                         // rbx
  slot[-3] = reinterpret_cast<uint64_t>(&t);                            // r12: the argument
  slot[-4] = reinterpret_cast<uint64_t>(&simt_emu_fiber_entry);        // r13: the entry
  slot[-5] = 0;                                                         // r14
  slot[-6] = 0;                                                         // r15
  uint32_t control[2];
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(control[1]));
  std::memcpy(&slot[-7], control, 8);
  t.sp = &slot[-7];
#else
  getcontext(&t.context);
  t.context.uc_stack.ss_sp = t.stack.low;
  t.context.uc_stack.ss_size = t.stack.size;
  t.context.uc_link = nullptr;
  const uintptr_t address = reinterpret_cast<uintptr_t>(&t);
  makecontext(&t.context, reinterpret_cast<void (*)()>(&fiber_entry_ucontext), 2,
              static_cast<unsigned>(address >> 32), static_cast<unsigned>(address & 0xffffffffu));
#endif
#if SIMT_EMU_TSAN
  t.tsan_fiber = __tsan_create_fiber(0);
#endif
}

void release_fiber(Thread& t) {
#if SIMT_EMU_TSAN
  if (t.tsan_fiber) __tsan_destroy_fiber(t.tsan_fiber);
  t.tsan_fiber = nullptr;
#endif
  if (t.stack.low) stack_pool.give(t.stack);
  t.stack = Stack{};
}

// Scheduler -> thread t; returns when t waits or has finished.
void run_thread(Launch& launch, Thread& t) {
  SIMT_BOOKKEEPING;
  current_thread = &t;
  current_view = &t.view;
#if SIMT_EMU_ASAN
  __sanitizer_start_switch_fiber(&launch.scheduler_fake_stack, t.stack.low, t.stack.size);
#endif
#if SIMT_EMU_TSAN
  __tsan_switch_to_fiber(t.tsan_fiber, 1 /* no synchronisation */);
#endif
#if SIMT_EMU_ASM_SWITCH
  simt_emu_switch(&launch.scheduler_sp, t.sp);
#else
  swapcontext(&launch.scheduler_context, &t.context);
#endif
#if SIMT_EMU_ASAN
  __sanitizer_finish_switch_fiber(launch.scheduler_fake_stack, nullptr, nullptr);
#endif
  current_thread = nullptr;
  current_view = nullptr;
}

// Thread -> scheduler. `forever`: the thread has finished and will never be resumed.
void yield_to_scheduler(Thread& t, bool forever) {
  void* scheduler_stack;
  void* scheduler_fiber;
  {
    // (a scope, not the whole function: a finished thread's fiber never returns here, and
    // TSan insists that a fiber ends with its ignores closed)
    SIMT_BOOKKEEPING;
    Launch& launch = *t.launch;
#if SIMT_EMU_ASM_SWITCH
    scheduler_stack = launch.scheduler_sp;
#else
    scheduler_stack = &launch.scheduler_context;
#endif
    scheduler_fiber = launch.scheduler_tsan_fiber;
#if SIMT_EMU_ASAN
    __sanitizer_start_switch_fiber(forever ? nullptr : &t.asan_fake_stack,
                                   launch.scheduler_stack_bottom, launch.scheduler_stack_size);
#endif
  }
  (void)forever;
  (void)scheduler_fiber;
#if SIMT_EMU_TSAN
  __tsan_switch_to_fiber(scheduler_fiber, 1);
#endif
#if SIMT_EMU_ASM_SWITCH
  simt_emu_switch(&t.sp, scheduler_stack);
#else
  swapcontext(&t.context, static_cast<ucontext_t*>(scheduler_stack));
#endif
  SIMT_BOOKKEEPING;
#if SIMT_EMU_ASAN
  __sanitizer_finish_switch_fiber(t.asan_fake_stack, nullptr, nullptr);
#endif
  current_thread = &t;
  current_view = &t.view;
}

Thread& self() {
  if (current_thread == nullptr) throw KernelError("simt: device function called outside a kernel");
  return *current_thread;
}

// The running thread waits in `state` until another thread or the scheduler makes it runnable.
void wait_as(Thread& t, State state, const char* file, int line) {
  t.state = state;
  t.file = file;
  t.line = line;
  yield_to_scheduler(t, false);
}

const char* state_name(const Thread& t) {
  switch (t.state) {
    case State::kRunnable: return "running";
    case State::kBlockBarrier:
      return t.block->barrier_kind == BarrierKind::kGridArrive ? "the grid barrier's arrival"
                                                               : "__syncthreads";
    case State::kCollective:
      switch (t.group) {
        case GroupKind::kShuffle: return "a warp shuffle";
        case GroupKind::kVote: return "a warp vote";
        case GroupKind::kSyncWarp: return "__syncwarp";
        case GroupKind::kMma: return "a tensor-core mma";
      }
      return "a warp collective";
    case State::kGridWait: return "the grid barrier";
    case State::kDone: return "exited";
  }
  return "?";
}

// ---- a thread's end ---------------------------------------------------------------------------

void on_thread_finished(Thread& t) {
  Block& b = *t.block;
  t.state = State::kDone;
  ++b.finished;
  --b.live;
  if (b.barrier_waiting > 0) {
    fail(t, "exited while " + std::to_string(b.barrier_waiting) + " thread(s) of its block wait at " +
                (b.barrier_kind == BarrierKind::kGridArrive ? "the grid barrier" : "__syncthreads") +
                " at " + where(b.barrier_file, b.barrier_line) +
                ": every thread of a block must reach every block barrier");
  }
  if (b.grid_waiting > 0) {
    fail(t, "exited while " + std::to_string(b.grid_waiting) +
                " thread(s) of its block wait at the grid barrier at " +
                where(b.grid_file, b.grid_line));
  }
  Warp& warp = b.warps[t.linear / kWarpSize];
  const unsigned bit = 1u << t.view.lane;
  warp.exited |= bit;
  for (const OpenCollective& open : warp.open) {
    if (open.mask & bit) {
      fail(t, "exited while lane " + std::to_string(open.first->view.lane) +
                  " of its warp waits for it at " + state_name(*open.first) + " at " +
                  where(open.first->file, open.first->line) + " (mask " + hex(open.mask) + ")");
    }
  }
}

void fiber_main(Thread* t) {
  Launch& launch = *t->launch;
  {
    SIMT_BOOKKEEPING;
#if SIMT_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &launch.scheduler_stack_bottom,
                                    &launch.scheduler_stack_size);
#endif
  }
  SIMT_TSAN_ACQUIRE(&launch.tsan_start);
  try {
    launch.request.run_thread(launch.request.context);
    SIMT_TSAN_RELEASE(&launch.tsan_end);
    SIMT_BOOKKEEPING;
    on_thread_finished(*t);
  } catch (...) {
    SIMT_BOOKKEEPING;
    if (!launch.error) launch.error = std::current_exception();
    launch.aborted = true;
    t->state = State::kDone;
  }
  yield_to_scheduler(*t, true);
  std::abort();  // never resumed
}

// ---- block barriers ---------------------------------------------------------------------------

void complete_block_barrier(Block& b) {
  for (Thread& peer : b.threads) {
    if (peer.state == State::kBlockBarrier) peer.state = State::kRunnable;
  }
  if (b.barrier_kind == BarrierKind::kGridArrive) ++b.grid_arrivals;
  b.barrier_waiting = 0;
  b.epoch = ++b.threads.front().launch->epoch_counter;
  b.last_barrier_file = b.barrier_file;
  b.last_barrier_line = b.barrier_line;
}

// Gathers every thread of the block at one barrier (kind + call site); the last to arrive
// releases the others and goes on without a switch.
void gather_block(Thread& t, BarrierKind kind, const char* file, int line) {
  Block& b = *t.block;
  if (b.finished > 0) {
    for (const Thread& peer : b.threads) {
      if (peer.state == State::kDone) {
        fail(t, std::string("reaches ") +
                    (kind == BarrierKind::kGridArrive ? "the grid barrier" : "__syncthreads") +
                    " at " + where(file, line) + " but thread " + dims(peer.view.thread_idx) +
                    " of its block has exited: every thread of a block must reach every block "
                    "barrier (on a GPU this hangs or is undefined)");
      }
    }
  }
  if (b.grid_waiting > 0) {
    fail(t, "reaches __syncthreads at " + where(file, line) + " while " +
                std::to_string(b.grid_waiting) + " thread(s) of its block wait at the grid barrier at " +
                where(b.grid_file, b.grid_line) + ": deadlock");
  }
  if (b.barrier_waiting == 0) {
    b.barrier_kind = kind;
    b.barrier_file = file;
    b.barrier_line = line;
  } else if (b.barrier_kind != kind || b.barrier_line != line ||
             std::strcmp(b.barrier_file, file) != 0) {
    fail(t, std::string("divergent barrier: it waits at ") +
                (kind == BarrierKind::kGridArrive ? "the grid barrier" : "__syncthreads") + " at " +
                where(file, line) + ", " + std::to_string(b.barrier_waiting) +
                " other thread(s) of its block at " +
                (b.barrier_kind == BarrierKind::kGridArrive ? "the grid barrier" : "__syncthreads") +
                " at " + where(b.barrier_file, b.barrier_line));
  }
  SIMT_TSAN_RELEASE(&b.tsan_sync);
  if (++b.barrier_waiting == b.live) {
    complete_block_barrier(b);
    if (kind == BarrierKind::kSyncThreads) ++t.launch->counts.block_barriers;
  } else {
    wait_as(t, State::kBlockBarrier, file, line);
  }
  SIMT_TSAN_ACQUIRE(&b.tsan_sync);
}

// ---- warp collectives -------------------------------------------------------------------------

// Computes the results of a collective whose lanes `mask` have all arrived.
void resolve_collective(Block& b, unsigned warp_base, unsigned mask) {
  Thread* lanes[kWarpSize] = {};
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if (mask & (1u << lane)) lanes[lane] = &b.threads[warp_base + lane];
  }
  const Thread& first = *lanes[__builtin_ctz(mask)];
  if (first.group == GroupKind::kMma) {
    // Gather A (16x16, row-major), B (16x8, column-major) and C (16x8) from the fragments in
    // the layout of PTX's mma.m16n8k16 (groupID = lane / 4, tig = lane % 4):
    //   A: a0,a1 (row g, cols 2*tig + {0,1}); a2,a3 (row g+8); a4,a5 (row g, cols +8); a6,a7
    //   B: b0,b1 (rows 2*tig + {0,1}, col g); b2,b3 (rows +8)
    //   C/D: c0,c1 (row g, cols 2*tig + {0,1}); c2,c3 (row g+8)
    float a[16][16], bm[16][8], c[16][8];
    auto unpack = [&](uint32_t word, int half) {
      const uint16_t bits = static_cast<uint16_t>(half ? word >> 16 : word & 0xffffu);
      return first.mma_operand == MmaOperand::kFloat16 ? half_bits_to_float(bits)
                                                       : bfloat16_bits_to_float(bits);
    };
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      const Thread& t = *lanes[lane];
      const unsigned g = lane / 4, tig = lane % 4;
      for (int i = 0; i < 8; ++i) {
        const unsigned row = g + ((i / 2) % 2) * 8;
        const unsigned col = tig * 2 + (i % 2) + (i / 4) * 8;
        a[row][col] = unpack(t.mma_a[i / 2], i % 2);
      }
      for (int i = 0; i < 4; ++i) {
        const unsigned row = tig * 2 + (i % 2) + (i / 2) * 8;
        bm[row][g] = unpack(t.mma_b[i / 2], i % 2);
      }
      for (int i = 0; i < 4; ++i) c[g + (i / 2) * 8][tig * 2 + (i % 2)] = t.mma_c[i];
    }
    float d[16][8];
    for (int row = 0; row < 16; ++row) {
      for (int col = 0; col < 8; ++col) {
        // Products of 16-bit values are exact in double, and so is their sum here: one
        // rounding to float, in a fixed order (the hardware's order is unspecified).
        double sum = c[row][col];
        for (int k = 0; k < 16; ++k) sum += double(a[row][k]) * double(bm[k][col]);
        d[row][col] = static_cast<float>(sum);
      }
    }
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      const unsigned g = lane / 4, tig = lane % 4;
      for (int i = 0; i < 4; ++i) lanes[lane]->mma_d[i] = d[g + (i / 2) * 8][tig * 2 + (i % 2)];
    }
  } else if (first.group == GroupKind::kVote) {
    unsigned ballot = 0;
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      if (lanes[lane] && lanes[lane]->value) ballot |= 1u << lane;
    }
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      if (!lanes[lane]) continue;
      switch (first.kind) {
        case CollectiveKind::kBallot: lanes[lane]->result = ballot; break;
        case CollectiveKind::kAny: lanes[lane]->result = ballot != 0; break;
        default: lanes[lane]->result = ballot == mask; break;  // kAll
      }
    }
  } else if (first.group == GroupKind::kShuffle) {
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      Thread* t = lanes[lane];
      if (!t) continue;
      const int width = t->width;
      const int segment = static_cast<int>(lane) & ~(width - 1);
      const int position = static_cast<int>(lane) & (width - 1);
      int source = static_cast<int>(lane);
      switch (t->kind) {
        case CollectiveKind::kShflIdx: source = segment + (t->arg & (width - 1)); break;
        case CollectiveKind::kShflUp:
          if (position >= t->arg) source = static_cast<int>(lane) - t->arg;
          break;
        case CollectiveKind::kShflDown:
          if (position + t->arg < width) source = static_cast<int>(lane) + t->arg;
          break;
        default:  // kShflXor
          source = static_cast<int>(lane) ^ t->arg;
          if ((source & ~(width - 1)) != segment) source = static_cast<int>(lane);
          break;
      }
      if (!(mask & (1u << source))) {
        fail(*t, "warp shuffle at " + where(t->file, t->line) + " reads lane " +
                     std::to_string(source) + ", which is not in its mask " + hex(mask) +
                     " (the value is undefined on a GPU)");
      }
      t->result = lanes[source]->value;
    }
  }
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if (lanes[lane]) lanes[lane]->state = State::kRunnable;
  }
}

bool same_collective(const Thread& a, const Thread& b) {
  return a.group == b.group && a.kind == b.kind && a.mask == b.mask && a.line == b.line &&
         std::strcmp(a.file, b.file) == 0;
}

// The running thread joins a warp collective; returns once all lanes of `mask` have joined.
void join_collective(Thread& t, GroupKind group, unsigned mask, const char* file, int line) {
  Block& b = *t.block;
  const unsigned warp_index = t.linear / kWarpSize, warp_base = warp_index * kWarpSize;
  const unsigned bit = 1u << t.view.lane;
  const unsigned existing = b.warps[warp_index].existing;
  const char* what = group == GroupKind::kSyncWarp ? "__syncwarp"
                     : group == GroupKind::kMma    ? "a tensor-core mma"
                     : group == GroupKind::kVote   ? "a warp vote"
                                                   : "a warp shuffle";
  if (!(mask & bit)) {
    fail(t, std::string(what) + " at " + where(file, line) + " with mask " + hex(mask) +
                " that leaves out the calling lane " + std::to_string(t.view.lane));
  }
  if (mask & ~existing) {
    fail(t, std::string(what) + " at " + where(file, line) + " with mask " + hex(mask) +
                " names lanes that do not exist (the warp has lanes " + hex(existing) +
                "; blockDim must be a multiple of 32 for full-mask collectives)");
  }
  Warp& warp = b.warps[warp_index];
  if (mask & warp.exited) {
    fail(t, std::string(what) + " at " + where(file, line) + " with mask " + hex(mask) + ": lane " +
                std::to_string(__builtin_ctz(mask & warp.exited)) + " has exited (incomplete mask)");
  }
  t.group = group;
  t.mask = mask;
  t.file = file;
  t.line = line;
  t.state = State::kCollective;
  ++t.launch->counts.warp_collectives;
  // Join the open collective of the same call and mask, or open one. Lanes may wait at other
  // collectives first (independent thread scheduling); a mismatch that can never resolve
  // leaves no thread runnable, which the scheduler reports as a deadlock with every wait site.
  size_t index = 0;
  while (index < warp.open.size() &&
         !(warp.open[index].mask == mask && same_collective(*warp.open[index].first, t))) {
    ++index;
  }
  if (index == warp.open.size()) warp.open.push_back(OpenCollective{mask, 0, &t});
  warp.open[index].arrived |= bit;
  if (warp.open[index].arrived == mask) {
    warp.open.erase(warp.open.begin() + static_cast<long>(index));
    resolve_collective(b, warp_base, mask);
    if (group == GroupKind::kSyncWarp) ++warp.syncs;
    t.state = State::kRunnable;
  } else {
    wait_as(t, State::kCollective, file, line);
  }
}

// ---- scheduling -------------------------------------------------------------------------------

std::vector<unsigned> visiting_order(Launch& launch, unsigned count) {
  std::vector<unsigned> order(count);
  for (unsigned i = 0; i < count; ++i) order[i] = i;
  if (launch.config.order == Order::kReverse) std::reverse(order.begin(), order.end());
  if (launch.config.order == Order::kRandom) std::shuffle(order.begin(), order.end(), launch.rng);
  return order;
}

std::string describe_waits(const Block& b) {
  std::map<std::string, unsigned> sites;
  for (const Thread& t : b.threads) {
    if (t.state == State::kDone) continue;
    sites[std::string(state_name(t)) + " at " + where(t.file, t.line)] += 1;
  }
  std::string text;
  for (const auto& entry : sites) {
    if (!text.empty()) text += "; ";
    text += std::to_string(entry.second) + " thread(s) at " + entry.first;
  }
  return text;
}

// Runs the block's threads until all have finished or all wait at the grid barrier.
void run_block(Launch& launch, Block& b) {
  while (true) {
    bool progressed = false;
    for (unsigned i : visiting_order(launch, static_cast<unsigned>(b.threads.size()))) {
      Thread& t = b.threads[i];
      if (t.state != State::kRunnable) continue;
      run_thread(launch, t);
      progressed = true;
      if (launch.aborted) return;
    }
    SIMT_BOOKKEEPING;
    if (b.live == 0) return;
    if (b.grid_waiting == b.live) {
      b.parked = true;
      return;
    }
    if (!progressed) {
      throw KernelError("simt emulator: kernel " + std::string(launch.request.kernel.name) +
                        ", block " + dims(b.index) + ": deadlock: no thread can go on (" +
                        describe_waits(b) + ")");
    }
  }
}

void setup_block(Launch& launch, Block& b, unsigned linear) {
  const LaunchRequest& r = launch.request;
  b.linear = linear;
  b.index = Dim3{linear % r.grid.x, (linear / r.grid.x) % r.grid.y, linear / (r.grid.x * r.grid.y)};
  const unsigned n = launch.threads_per_block;
  b.threads.resize(n);
  b.warps.assign((n + kWarpSize - 1) / kWarpSize, Warp{});
  for (unsigned w = 0; w < b.warps.size(); ++w) {
    const unsigned lanes = std::min<unsigned>(kWarpSize, n - w * kWarpSize);
    b.warps[w].existing = lanes == kWarpSize ? kFullMask : ((1u << lanes) - 1u);
  }
  for (unsigned i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.launch = &launch;
    t.block = &b;
    t.linear = i;
    t.state = State::kRunnable;
    t.view.thread_idx = Dim3{i % r.block.x, (i / r.block.x) % r.block.y, i / (r.block.x * r.block.y)};
    t.view.block_idx = b.index;
    t.view.block_dim = r.block;
    t.view.grid_dim = r.grid;
    t.view.lane = i % kWarpSize;
    t.view.thread = &t;
    init_fiber(t);
  }
  b.live = n;
  b.finished = 0;
  b.first_epoch = b.epoch = ++launch.epoch_counter;
  b.arena.block = &b;
  b.arena.bytes.assign(r.shared_bytes, 0xff);  // NaN in every floating-point type
  if (launch.config.racecheck && r.shared_bytes > 0) {
    b.arena.shadow.assign(r.shared_bytes, Shadow{});
  } else {
    b.arena.shadow.clear();
  }
  SIMT_TSAN_RELEASE(&launch.tsan_start);
}

void teardown_block(Block& b) {
  for (Thread& t : b.threads) release_fiber(t);
  b.threads.clear();
}

void run_plain(Launch& launch, unsigned blocks) {
  Block& b = *launch.blocks.front();
  for (unsigned linear : visiting_order(launch, blocks)) {
    setup_block(launch, b, linear);
    run_block(launch, b);
    teardown_block(b);
    if (launch.aborted) return;
  }
}

void run_cooperative(Launch& launch, unsigned blocks) {
  for (unsigned i = 0; i < blocks; ++i) setup_block(launch, *launch.blocks[i], i);
  while (true) {
    for (unsigned i : visiting_order(launch, blocks)) {
      Block& b = *launch.blocks[i];
      if (b.live == 0 || b.parked) continue;
      run_block(launch, b);
      if (launch.aborted) return;
    }
    SIMT_BOOKKEEPING;
    // Release the blocks whose grid barrier every block has arrived at.
    unsigned arrived_everywhere = ~0u;
    bool any_parked = false, any_live = false;
    for (const auto& b : launch.blocks) {
      arrived_everywhere = std::min(arrived_everywhere, b->grid_arrivals);
      any_parked |= b->parked;
      any_live |= b->live > 0;
    }
    if (!any_live) return;
    bool released = false;
    for (const auto& b : launch.blocks) {
      if (!b->parked || b->wait_token >= arrived_everywhere) continue;
      b->parked = false;
      b->grid_waiting = 0;
      for (Thread& t : b->threads) {
        if (t.state == State::kGridWait) t.state = State::kRunnable;
      }
      released = true;
    }
    while (launch.grid_phases_done < arrived_everywhere) {
      ++launch.grid_phases_done;
      ++launch.counts.grid_barriers;
    }
    if (!released && any_parked) {
      std::string late;
      for (const auto& b : launch.blocks) {
        if (b->grid_arrivals < arrived_everywhere + 1 && !b->parked) late += " " + dims(b->index);
      }
      const Block* waiting = nullptr;
      for (const auto& b : launch.blocks) {
        if (b->parked) waiting = b.get();
      }
      throw KernelError("simt emulator: kernel " + std::string(launch.request.kernel.name) +
                        ": deadlock at the grid barrier at " +
                        where(waiting->grid_file, waiting->grid_line) + ": block(s)" + late +
                        " exited without arriving at it");
    }
  }
}

int occupancy(const DeviceModel& device, const KernelSpec& kernel, unsigned threads,
              size_t shared_bytes) {
  if (threads == 0) return 0;
  const int warps = static_cast<int>((threads + kWarpSize - 1) / kWarpSize);
  int blocks = device.blocks_per_sm;
  blocks = std::min(blocks, device.threads_per_sm / (warps * kWarpSize));
  const int registers = std::max(1, kernel.registers);
  const int registers_per_warp = (registers * kWarpSize + 255) / 256 * 256;  // allocation unit
  blocks = std::min(blocks, (device.registers_per_sm / registers_per_warp) / warps);
  const size_t reserved = 1024;  // per block, on sm_80 and later
  blocks = std::min<int>(blocks, static_cast<int>(device.shared_bytes_per_sm / (shared_bytes + reserved)));
  return std::max(blocks, 0);
}

Status validate(const Launch& launch) {
  const LaunchRequest& r = launch.request;
  const DeviceModel& device = launch.config.device;
  if (r.block.x == 0 || r.block.y == 0 || r.block.z == 0 || r.block.z > 64 ||
      launch.threads_per_block > static_cast<unsigned>(device.threads_per_block)) {
    return kErrorInvalidConfiguration;
  }
  if (r.grid.x == 0 || r.grid.y == 0 || r.grid.z == 0 || r.grid.y > 65535 || r.grid.z > 65535 ||
      r.grid.x > 0x7fffffffu) {
    return kErrorInvalidConfiguration;
  }
  size_t shared_limit = static_cast<size_t>(device.shared_bytes_per_block_default);
  {
    std::lock_guard<std::mutex> lock(settings_mutex());
    const auto found = shared_optin().find(r.kernel_id);
    if (found != shared_optin().end()) shared_limit = std::max(shared_limit, found->second);
  }
  if (r.shared_bytes > shared_limit) return kErrorInvalidValue;
  if (static_cast<long>(r.kernel.registers) * launch.threads_per_block > device.registers_per_sm) {
    return kErrorLaunchOutOfResources;
  }
  if (r.cooperative) {
    if (!device.cooperative_launch) return kErrorNotSupported;
    const long blocks = static_cast<long>(r.grid.x) * r.grid.y * r.grid.z;
    const long fit = static_cast<long>(occupancy(device, r.kernel, launch.threads_per_block,
                                                 r.shared_bytes)) * device.sms;
    if (blocks > fit) return kErrorCooperativeLaunchTooLarge;
  }
  return kSuccess;
}

// Releases every fiber of a launch, also after an error left some suspended mid-kernel.
struct LaunchCleanup {
  Launch& launch;
  ~LaunchCleanup() {
    for (auto& b : launch.blocks) teardown_block(*b);
    current_launch = nullptr;
    current_thread = nullptr;
    current_view = nullptr;
  }
};

}  // namespace

// ---- public entry points ----------------------------------------------------------------------

namespace {

// Per compute capability (CUDA C++ Programming Guide, "Technical Specifications per Compute
// Capability"): 64K registers per SM everywhere; 8.0 and 9.0 hold 2048 threads and 32 blocks
// per SM, 8.6 1536 and 16, 8.9 1536 and 24; shared memory per SM / per block after opt-in:
// 8.0 164 / 163 KiB, 8.6 and 8.9 100 / 99 KiB, 9.0 228 / 227 KiB (the difference is the 1 KiB
// the hardware reserves per block). SM counts from the products' datasheets.
DeviceModel make_preset(const char* name, int major, int minor, int sms) {
  DeviceModel d;
  d.name = name;
  d.major = major;
  d.minor = minor;
  d.sms = sms;
  const int capability = major * 10 + minor;
  const int shared_kib = capability == 90 ? 228 : capability == 80 ? 164 : 100;
  d.shared_bytes_per_sm = shared_kib * 1024;
  d.shared_bytes_per_block_optin = (shared_kib - 1) * 1024;
  d.threads_per_sm = capability == 90 || capability == 80 ? 2048 : 1536;
  d.blocks_per_sm = capability == 86 ? 16 : capability == 89 ? 24 : 32;
  return d;
}

const std::vector<DeviceModel>& presets() {
  static const std::vector<DeviceModel> table = {
      make_preset("H100", 9, 0, 132),     // H100 SXM5 (the H200 has the same SMs and limits)
      make_preset("A100", 8, 0, 108),     // A100 SXM4 / PCIe
      make_preset("A10", 8, 6, 72),       // A10 / A10G (the RTX 30 series is 8.6 too)
      make_preset("RTX4090", 8, 9, 128),  // GeForce RTX 4090
      make_preset("L4", 8, 9, 58),
  };
  return table;
}

}  // namespace

const DeviceModel* device_preset(const std::string& name) {
  for (const DeviceModel& d : presets()) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::vector<std::string> device_preset_names() {
  std::vector<std::string> names;
  for (const DeviceModel& d : presets()) names.push_back(d.name);
  return names;
}

Config config() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  return settings();
}

void set_config(const Config& value) {
  std::lock_guard<std::mutex> lock(settings_mutex());
  settings() = value;
}

std::map<std::string, KernelStats> stats() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  return stats_table();
}

void reset_stats() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  stats_table().clear();
}

Status set_max_dynamic_shared_bytes(const void* kernel_id, size_t bytes) {
  std::lock_guard<std::mutex> lock(settings_mutex());
  if (bytes > static_cast<size_t>(settings().device.shared_bytes_per_block_optin)) {
    return kErrorInvalidValue;
  }
  shared_optin()[kernel_id] = bytes;
  return kSuccess;
}

int max_active_blocks_per_sm(const KernelSpec& kernel, Dim3 block, size_t shared_bytes) {
  return occupancy(config().device, kernel, block.x * block.y * block.z, shared_bytes);
}

Status launch(const LaunchRequest& request) {
  SIMT_BOOKKEEPING;  // the scheduler's side; kernels run in fibers, which are not ignored
  if (current_launch != nullptr) {
    throw KernelError(std::string("simt emulator: kernel ") + request.kernel.name +
                      " launched from inside kernel " + current_launch->request.kernel.name +
                      " (dynamic parallelism is not emulated)");
  }
  Launch launch;
  launch.request = request;
  launch.config = config();
  launch.threads_per_block = request.block.x * request.block.y * request.block.z;
  const Status status = validate(launch);
  if (status != kSuccess) return status;
  if (!launch.config.failing_kernel.empty() && launch.config.failing_kernel == request.kernel.name) {
    return launch.config.failing_status;
  }
  static std::atomic<uint64_t> launch_serial{0};
  launch.rng.seed(launch.config.seed * 0x9e3779b97f4a7c15ull + launch_serial++);
  if (launch.config.order != Order::kRandom) launch.rng.seed(0);
  const unsigned blocks = request.grid.x * request.grid.y * request.grid.z;
  const unsigned resident = request.cooperative ? blocks : 1;
  for (unsigned i = 0; i < resident; ++i) launch.blocks.push_back(std::make_unique<Block>());
  current_launch = &launch;
  {
    LaunchCleanup cleanup{launch};
#if SIMT_EMU_TSAN
    launch.scheduler_tsan_fiber = __tsan_get_current_fiber();
#endif
    if (request.cooperative) {
      run_cooperative(launch, blocks);
    } else {
      run_plain(launch, blocks);
    }
    SIMT_TSAN_ACQUIRE(&launch.tsan_end);
  }
  if (launch.error) std::rethrow_exception(launch.error);
  launch.counts.launches = 1;
  std::lock_guard<std::mutex> lock(settings_mutex());
  KernelStats& total = stats_table()[request.kernel.name];
  total.launches += launch.counts.launches;
  total.block_barriers += launch.counts.block_barriers;
  total.grid_barriers += launch.counts.grid_barriers;
  total.warp_collectives += launch.counts.warp_collectives;
  return kSuccess;
}

void block_barrier(const char* file, int line) {
  SIMT_BOOKKEEPING;
  gather_block(self(), BarrierKind::kSyncThreads, file, line);
}

void warp_sync(unsigned mask, const char* file, int line) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  join_collective(t, GroupKind::kSyncWarp, mask, file, line);
}

uint64_t warp_collective(CollectiveKind kind, unsigned mask, uint64_t value, int arg, int width,
                         const char* file, int line) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  const bool shuffle = kind == CollectiveKind::kShflIdx || kind == CollectiveKind::kShflUp ||
                       kind == CollectiveKind::kShflDown || kind == CollectiveKind::kShflXor;
  if (shuffle && (width < 1 || width > kWarpSize || (width & (width - 1)) != 0)) {
    fail(t, "warp shuffle at " + where(file, line) + " with width " + std::to_string(width) +
                " (must be a power of 2 up to 32)");
  }
  t.kind = kind;
  t.value = value;
  t.arg = arg;
  t.width = width;
  join_collective(t, shuffle ? GroupKind::kShuffle : GroupKind::kVote, mask, file, line);
  return t.result;
}

void mma_m16n8k16(MmaOperand operand, float* d, const uint32_t* a, const uint32_t* b,
                  const float* c, const char* file, int line) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  t.kind = CollectiveKind::kShflIdx;
  t.mma_operand = operand;
  t.mma_d = d;
  t.mma_a = a;
  t.mma_b = b;
  t.mma_c = c;
  join_collective(t, GroupKind::kMma, kFullMask, file, line);
}

unsigned grid_arrive(const char* file, int line) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  if (!t.launch->request.cooperative) {
    fail(t, "grid barrier at " + where(file, line) +
                " in a kernel not launched cooperatively (on a GPU this traps)");
  }
  SIMT_TSAN_RELEASE(&t.launch->tsan_grid_sync);
  gather_block(t, BarrierKind::kGridArrive, file, line);
  return t.block->grid_arrivals - 1;  // this arrival's phase
}

void grid_wait(unsigned token, const char* file, int line) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  if (!t.launch->request.cooperative) {
    fail(t, "grid barrier at " + where(file, line) +
                " in a kernel not launched cooperatively (on a GPU this traps)");
  }
  Block& b = *t.block;
  if (b.barrier_waiting > 0) {
    fail(t, "waits at the grid barrier at " + where(file, line) + " while " +
                std::to_string(b.barrier_waiting) + " thread(s) of its block wait at __syncthreads at " +
                where(b.barrier_file, b.barrier_line) + ": deadlock");
  }
  if (token >= b.grid_arrivals) {
    fail(t, "grid_wait at " + where(file, line) + " with a token of an arrival not yet made");
  }
  if (b.grid_waiting == 0) {
    b.grid_file = file;
    b.grid_line = line;
    b.wait_token = token;
  } else if (b.wait_token != token || b.grid_line != line || std::strcmp(b.grid_file, file) != 0) {
    fail(t, "divergent grid barrier: waits at " + where(file, line) + ", other threads of its "
                "block at " + where(b.grid_file, b.grid_line));
  }
  ++b.grid_waiting;
  wait_as(t, State::kGridWait, file, line);
  SIMT_TSAN_ACQUIRE(&t.launch->tsan_grid_sync);
}

// ---- shared memory ------------------------------------------------------------------------------

Arena* current_arena() { return &self().block->arena; }
unsigned char* arena_base(Arena* arena) { return arena->bytes.data(); }
size_t arena_bytes(Arena* arena) { return arena->bytes.size(); }

void check_carve(Arena* arena, const char* name, size_t offset, size_t bytes, size_t alignment) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  if (offset % alignment != 0) {
    fail(t, "shared array `" + std::string(name) + "` at byte offset " + std::to_string(offset) +
                " is not aligned to " + std::to_string(alignment) + " bytes");
  }
  if (offset + bytes > arena->bytes.size()) {
    fail(t, "shared array `" + std::string(name) + "` needs bytes [" + std::to_string(offset) +
                ", " + std::to_string(offset + bytes) + ") but the launch gave " +
                std::to_string(arena->bytes.size()) + " bytes of dynamic shared memory");
  }
}

void shared_access(Arena* arena, const char* name, int64_t index, int64_t count, size_t offset,
                   size_t bytes, Access access) {
  SIMT_BOOKKEEPING;
  Thread& t = self();
  Block& b = *arena->block;
  const char* verb = access == Access::kRead ? "read" : access == Access::kWrite ? "write" : "atomic";
  // Built only for an error message: this function runs at every shared-memory access.
  auto since = [&b]() {
    return b.last_barrier_file == nullptr
               ? std::string(" (before the block's first barrier)")
               : " (since the barrier at " + where(b.last_barrier_file, b.last_barrier_line) + ")";
  };
  if (index < 0 || index >= count || offset + bytes > arena->bytes.size()) {
    fail(t, "shared-memory " + std::string(verb) + " out of bounds: `" + name + "`[" +
                std::to_string(index) + "] of " + std::to_string(count) + " elements" + since());
  }
  if (arena->shadow.empty()) return;
  const uint32_t epoch = b.epoch;
  const uint16_t me = static_cast<uint16_t>(t.linear);
  const unsigned my_warp = t.linear / kWarpSize;
  const uint16_t my_syncs = b.warps[my_warp].syncs;
  // Another thread's access is ordered before this one if a block barrier separates them
  // (older epoch) or both are in this warp with a __syncwarp in between.
  auto ordered = [&](uint16_t other, uint16_t other_syncs) {
    return other / kWarpSize == my_warp && other_syncs != my_syncs;
  };
  auto race = [&](const char* kind, uint16_t other) {
    const Thread& peer = b.threads[other];
    fail(t, std::string(kind) + " race on shared memory `" + name + "`[" + std::to_string(index) +
                "] (byte " + std::to_string(offset) + "): this thread's " + verb + " and thread " +
                dims(peer.view.thread_idx) + "'s earlier access with no barrier between them" + since());
  };
  for (size_t i = 0; i < bytes; ++i) {
    Shadow& s = arena->shadow[offset + i];
    const bool written = s.write_epoch >= b.first_epoch && s.write_epoch != 0;
    if (access == Access::kRead) {
      if (!written) {
        fail(t, "shared-memory read of `" + std::string(name) + "`[" + std::to_string(index) +
                    "] before any thread of its block wrote it: uninitialised, or written later "
                    "with no barrier in between" + since());
      }
      if (s.write_epoch == epoch && s.writer != me && !ordered(s.writer, s.writer_warp_syncs)) {
        race("read-after-write", s.writer);
      }
      if (s.read_epoch != epoch) {
        s.read_epoch = epoch;
        s.reader = me;
        s.flags &= static_cast<uint8_t>(~(kManyReaders | kReadersInSeveralWarps));
      } else if (s.reader != me) {
        s.flags |= kManyReaders;
        if (s.reader / kWarpSize != my_warp) s.flags |= kReadersInSeveralWarps;
      }
      s.reader_warp_syncs = my_syncs;
    } else {
      const bool atomic = access == Access::kAtomic;
      if (s.write_epoch == epoch && s.writer != me && !ordered(s.writer, s.writer_warp_syncs) &&
          !(atomic && (s.flags & kAtomicWrite))) {
        race("write-after-write", s.writer);
      }
      if (s.read_epoch == epoch && ((s.flags & kManyReaders) || s.reader != me)) {
        const bool readers_ordered = !(s.flags & kReadersInSeveralWarps) &&
                                     ordered(s.reader, s.reader_warp_syncs);
        if (!readers_ordered) race("write-after-read", s.reader);
      }
      s.write_epoch = epoch;
      s.writer = me;
      s.writer_warp_syncs = my_syncs;
      s.flags = static_cast<uint8_t>(atomic ? (s.flags | kAtomicWrite) : (s.flags & ~kAtomicWrite));
    }
  }
}

}  // namespace emu
}  // namespace simt

#pragma GCC visibility pop
