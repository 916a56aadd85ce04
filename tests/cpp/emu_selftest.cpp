// The SIMT emulator's standalone test: framework-free, built by `make emulator-check` three
// times (plain, -fsanitize=thread, -fsanitize=address,undefined) on small grids.
//
//   emu_selftest check          correct kernels on several grids, orders and dtypes against
//                               plain C++ references; bit-identical over schedules; the LSTM
//                               step kernels of csrc/cuda against lstm_math.h on the CPU
//   emu_selftest faults         every planted fault is reported (or, for a missing grid
//                               barrier, gives wrong values), never a hang
//   emu_selftest sanitize       a smaller `check`, for the sanitizer builds (TSan fibers are slow)
//   emu_selftest fault NAME     run one faulty kernel once (for the sanitizer builds)
//   emu_selftest bench          cost of a barrier, a grid barrier, a shuffle, a launch
// Exit status 0: every check passed.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "emulation/emulated_kernels.h"
#include "emulation/selftest_kernels.cuh"
#include "tbptt/lstm_math.h"

#if __has_include(<cuda_fp16.h>) && !defined(SELFTEST_NO_TOOLKIT)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define SELFTEST_TOOLKIT 1
#endif

namespace {

using namespace selftest::emu;
using simt::emu::Config;
using simt::emu::KernelError;
using simt::emu::Order;

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL  %s\n", what.c_str());
  }
}

void set_schedule(Order order, uint64_t seed = 0, int sms = 132) {
  Config config = simt::emu::config();
  config.order = order;
  config.seed = seed;
  config.device.sms = sms;
  simt::emu::set_config(config);
}

// ---- the toy RNN --------------------------------------------------------------------------------

struct RnnRun {
  std::vector<float> out;
  std::vector<int> positives;
};

template <typename T>
float round_to(float value) {
  return static_cast<float>(T(value));
}
template <>
float round_to<float>(float value) {
  return value;
}

template <typename T, int kFault = kNone>
RnnRun run_rnn(int n, int steps, int blocks, int threads, const std::vector<float>& w,
               const std::vector<float>& h0, simt::Status* status = nullptr) {
  const int rows = (n + blocks - 1) / blocks;
  std::vector<float> h(2 * n, 0.0f);
  std::copy(h0.begin(), h0.end(), h.begin());
  RnnRun run;
  run.out.assign(static_cast<size_t>(steps) * n + (kFault == kGlobalOverrun ? 0 : 1), -7.0f);
  run.positives.assign(steps, 0);
  RnnParams p{n, steps, rows, w.data(), h.data(), run.out.data(), run.positives.data()};
  const size_t shared = rnn_shared_bytes<T>(n, rows);
  simt::set_max_dynamic_shared_bytes(rnn_kernel<T, kFault>, shared);
  const simt::Status s = simt::launch_cooperative(simt::KernelSpec{"rnn", 64}, rnn_kernel<T, kFault>,
                                                  simt::Dim3{unsigned(blocks), 1, 1},
                                                  simt::Dim3{unsigned(threads), 1, 1}, shared, nullptr, p);
  if (status) *status = s;
  if (kFault != kGlobalOverrun) run.out.pop_back();
  return run;
}

template <typename T>
std::vector<float> rnn_reference(int n, int steps, const std::vector<float>& w, const std::vector<float>& h0) {
  std::vector<double> h(h0.begin(), h0.end()), next(n);
  std::vector<float> out;
  for (int t = 0; t < steps; ++t) {
    for (int r = 0; r < n; ++r) {
      double acc = 0;
      for (int k = 0; k < n; ++k) acc += double(round_to<T>(w[r * n + k])) * h[k];
      next[r] = std::tanh(acc);
    }
    for (int r = 0; r < n; ++r) {
      h[r] = static_cast<float>(next[r]);  // the kernel keeps h in float
      out.push_back(static_cast<float>(next[r]));
    }
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
  return worst;
}

struct Problem {
  std::vector<float> w, h0;
};

Problem make_problem(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p;
  for (int i = 0; i < n * n; ++i) p.w.push_back(normal(rng) * 1.5f / std::sqrt(float(n)));
  for (int i = 0; i < n; ++i) p.h0.push_back(normal(rng) * 0.5f);
  return p;
}

struct Shape {
  int n, steps, blocks, threads;
};

template <typename T>
void check_rnn(const char* dtype, double tolerance,
               std::initializer_list<Shape> shapes = {Shape{48, 5, 3, 64}, Shape{130, 4, 8, 128},
                                                      Shape{33, 3, 1, 32}}) {
  for (const Shape& s : shapes) {
    const Problem pr = make_problem(s.n, 7);
    const std::vector<float> reference = rnn_reference<T>(s.n, s.steps, pr.w, pr.h0);
    std::vector<float> first;
    std::vector<int> first_positives;
    const char* names[] = {"forward", "reverse", "random 1", "random 2", "random 3"};
    for (int schedule = 0; schedule < 5; ++schedule) {
      set_schedule(schedule == 0 ? Order::kForward : schedule == 1 ? Order::kReverse : Order::kRandom,
                   static_cast<uint64_t>(schedule));
      const RnnRun run = run_rnn<T>(s.n, s.steps, s.blocks, s.threads, pr.w, pr.h0);
      const std::string what = std::string("rnn<") + dtype + "> n=" + std::to_string(s.n) + " grid " +
                               std::to_string(s.blocks) + "x" + std::to_string(s.threads) + " " + names[schedule];
      expect(max_abs_diff(run.out, reference) <= tolerance,
             what + ": max |diff| " + std::to_string(max_abs_diff(run.out, reference)));
      int expected_positive = 0;
      for (int r = 0; r < s.n; ++r) expected_positive += run.out[r] > 0;
      expect(run.positives[0] == expected_positive, what + ": atomic count");
      if (schedule == 0) {
        first = run.out;
        first_positives = run.positives;
      } else {
        expect(std::memcmp(first.data(), run.out.data(), first.size() * sizeof(float)) == 0,
               what + ": not bit-identical to the forward schedule");
        expect(first_positives == run.positives, what + ": atomic counts differ by schedule");
      }
    }
  }
  set_schedule(Order::kForward);
}

// ---- the block/grid sum, axpy, mma ----------------------------------------------------------------

void check_sum() {
  for (int blocks : {1, 3, 5}) {
    const int n = 5000, threads = 128;
    std::vector<float> x(n), partial(blocks, -1.0f), total(1, -1.0f);
    std::vector<unsigned> votes(blocks, 7u);
    std::mt19937 rng(blocks);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (float& v : x) v = uniform(rng);
    SumParams p{n, x.data(), partial.data(), total.data(), votes.data()};
    const simt::Status status = simt::launch_cooperative(
        simt::KernelSpec{"sum", 32}, sum_kernel<kNone>, simt::Dim3{unsigned(blocks), 1, 1},
        simt::Dim3{unsigned(threads), 1, 1}, threads / 32 * sizeof(float), nullptr, p);
    expect(status == simt::kSuccess, "sum: launch status");
    double expected = 0;
    for (float v : x) expected += v;
    expect(std::fabs(total[0] - expected) <= 1e-3, "sum over " + std::to_string(blocks) + " blocks: " +
                                                        std::to_string(total[0]) + " vs " + std::to_string(expected));
    // ballot of block 0's first warp: bit l set where lane l's strided partial sum is positive
    unsigned vote = 0;
    for (int lane = 0; lane < 32; ++lane) {
      float acc = 0.0f;
      for (int i = lane; i < n; i += blocks * threads) acc += x[i];
      if (acc > 0.0f) vote |= 1u << lane;
    }
    expect(votes[0] == vote, "ballot of block 0");
  }
}

template <typename T>
void check_axpy(const char* dtype) {
  const int n = 100003;
  std::vector<T> x(n), y(n), expected(n);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-4.0f, 4.0f);
  for (int i = 0; i < n; ++i) {
    x[i] = T(uniform(rng));
    y[i] = T(uniform(rng));
    expected[i] = T(1.5f * static_cast<float>(x[i]) + static_cast<float>(y[i]));
  }
  const simt::Status status = simt::launch(simt::KernelSpec{"axpy", 32}, axpy_kernel<T>,
                                           simt::Dim3{64, 1, 1}, simt::Dim3{256, 1, 1}, 0, nullptr,
                                           n, 1.5f, x.data(), y.data());
  expect(status == simt::kSuccess, "axpy: launch status");
  expect(std::memcmp(y.data(), expected.data(), n * sizeof(T)) == 0,
         std::string("axpy<") + dtype + "> differs from the same arithmetic on the CPU");
}

// CuTe's SM80_16x8x16_F32{F16,BF16}{F16,BF16}F32_TN (cute/atom/mma_traits_sm80.hpp): layouts
// (thread, value) -> column-major (m, k) / (n, k) / (m, n) index, transcribed here as an
// independent check of simt::mma_layout and of the emulator's own copy of the maps:
//   ALayout = ((_4,_8),(_2,_2,_2)) : ((_32,_1),(_16,_8,_128))      on the 16x16 (m,k) tile
//   BLayout = ((_4,_8),(_2,_2))    : ((_16,_1),(_8,_64))           on the  8x16 (n,k) tile
//   CLayout = ((_4,_8),(_2,_2))    : ((_32,_1),(_16,_8))           on the 16x8  (m,n) tile
int cute_a(int lane, int v) {
  return (lane % 4) * 32 + (lane / 4) * 1 + (v % 2) * 16 + ((v / 2) % 2) * 8 + (v / 4) * 128;
}
int cute_b(int lane, int v) { return (lane % 4) * 16 + (lane / 4) * 1 + (v % 2) * 8 + (v / 2) * 64; }
int cute_c(int lane, int v) { return (lane % 4) * 32 + (lane / 4) * 1 + (v % 2) * 16 + (v / 2) * 8; }

void check_mma_layout() {
  namespace L = simt::mma_layout;
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < 8; ++v) {
      const int index = cute_a(lane, v);  // column-major 16x16: m + 16 k
      expect(L::a_row(lane, v) == index % 16 && L::a_col(lane, v) == index / 16,
             "mma A fragment map, lane " + std::to_string(lane) + " value " + std::to_string(v));
    }
    for (int v = 0; v < 4; ++v) {
      const int index = cute_b(lane, v);  // column-major 8x16 (n, k): n + 8 k
      expect(L::b_col(lane, v) == index % 8 && L::b_row(lane, v) == index / 8,
             "mma B fragment map, lane " + std::to_string(lane) + " value " + std::to_string(v));
      const int c_index = cute_c(lane, v);  // column-major 16x8: m + 16 n
      expect(L::c_row(lane, v) == c_index % 16 && L::c_col(lane, v) == c_index / 16,
             "mma C fragment map, lane " + std::to_string(lane) + " value " + std::to_string(v));
    }
  }
}

template <typename T>
void check_mma(const char* dtype) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::vector<T> a(256), b(128);
  std::vector<float> c(128), d(128, 0.0f);
  for (T& v : a) v = T(uniform(rng));
  for (T& v : b) v = T(uniform(rng));
  for (float& v : c) v = uniform(rng);
  const simt::Status status = simt::launch(simt::KernelSpec{"mma", 32}, mma_kernel<T>, simt::Dim3{1, 1, 1},
                                           simt::Dim3{32, 1, 1}, 0, nullptr,
                                           static_cast<const T*>(a.data()), static_cast<const T*>(b.data()),
                                           static_cast<const float*>(c.data()), d.data());
  expect(status == simt::kSuccess, "mma: launch status");
  double worst = 0;
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      double sum = c[m * 8 + n];
      for (int k = 0; k < 16; ++k) sum += double(static_cast<float>(a[m * 16 + k])) * static_cast<float>(b[k * 8 + n]);
      worst = std::max(worst, std::fabs(sum - d[m * 8 + n]));
    }
  }
  expect(worst <= 1e-5, std::string("mma<") + dtype + "> vs a plain product: " + std::to_string(worst));
}

// ---- the LSTM step kernels of csrc/cuda, against lstm_math.h in a plain loop ---------------------

template <typename T, typename acc_t>
void check_lstm_steps(tbptt::StorageType storage, const char* dtype) {
  const int B = 5, H = 37, G = 4 * H;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  auto values = [&](int count) {
    std::vector<T> v(count);
    for (T& x : v) x = tbptt::convert<T>(uniform(rng));
    return v;
  };
  auto cells = [&](int count) {
    std::vector<acc_t> v(count);
    for (acc_t& x : v) x = uniform(rng);
    return v;
  };
  const std::vector<T> gates_x = values(B * G), gates_h = values(B * G), grad_out = values(B * H),
                       grad_next = values(B * H), hidden_prev = values(B * H), stored_gates = values(B * G);
  const std::vector<acc_t> cell0 = cells(B * H), cell_now = cells(B * H), cell_prev = cells(B * H),
                           grad_cell0 = cells(B * H), held0 = cells(B * H);
  const std::vector<T> hidden0 = values(B * H);
  // Rows of every kind of step: B = 5 with flags per row (window.h): reset, hold, cut.
  const std::vector<uint8_t> flags_now = {tbptt::kFlagReset, tbptt::kFlagHold, 0, tbptt::kFlagCut,
                                          tbptt::kFlagReset | tbptt::kFlagHold};
  const std::vector<uint8_t> flags_next = {0, tbptt::kFlagReset, 0, 0, tbptt::kFlagReset};
  struct ForwardOut {
    std::vector<acc_t> cell;
    std::vector<T> hidden_next, out, ring_gates, ring_hidden;
    std::vector<acc_t> ring_cell;
  };
  auto forward = [&](bool emulated) {
    ForwardOut r{cell0, hidden0, std::vector<T>(B * H), std::vector<T>(B * G),
                 std::vector<T>(B * H), std::vector<acc_t>(B * H)};
    tbptt::ForwardStepParams p{};
    p.batch = B;
    p.hidden = H;
    p.gates_x = gates_x.data();
    p.gates_h = gates_h.data();
    p.cell = r.cell.data();
    p.hidden_prev = r.hidden_next.data();  // updated in place, as the stepwise path does
    p.hidden_next = r.hidden_next.data();
    p.out = r.out.data();
    p.ring_gates = r.ring_gates.data();
    p.ring_cell = r.ring_cell.data();
    p.ring_hidden = r.ring_hidden.data();
    p.flags = flags_now.data();
    p.flags_next = flags_next.data();
    if (emulated) {
      expect(tbptt::emu::launch_forward_step(p, storage, nullptr) == 0, "forward_step launch");
    } else {
      for (int row = 0; row < B; ++row)
        for (int unit = 0; unit < H; ++unit) tbptt::forward_step_element<T, acc_t>(p, row, unit);
    }
    return r;
  };
  struct BackwardOut {
    std::vector<acc_t> grad_cell, held;
    std::vector<T> grad_gates, seen;
  };
  auto backward = [&](bool emulated) {
    BackwardOut r{grad_cell0, held0, std::vector<T>(B * G), std::vector<T>(B * H)};
    tbptt::BackwardStepParams p{};
    p.batch = B;
    p.hidden = H;
    p.gates = stored_gates.data();
    p.cell = cell_now.data();
    p.cell_prev = cell_prev.data();
    p.hidden_prev = hidden_prev.data();
    p.flags = flags_now.data();
    p.flags_after = flags_next.data();
    p.carry_scale = 1.75;  // an ARTBP compensation factor
    p.gates_are_pre_activations = false;
    p.grad_out = grad_out.data();
    p.grad_hidden_next = grad_next.data();
    p.grad_hidden_held = r.held.data();
    p.grad_cell = r.grad_cell.data();
    p.grad_gates = r.grad_gates.data();
    p.hidden_prev_seen = r.seen.data();
    if (emulated) {
      expect(tbptt::emu::launch_backward_step(p, storage, nullptr) == 0, "backward_step launch");
    } else {
      for (int row = 0; row < B; ++row)
        for (int unit = 0; unit < H; ++unit) tbptt::backward_step_element<T, acc_t>(p, row, unit);
    }
    return r;
  };
  auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  const ForwardOut fe = forward(true), fc = forward(false);
  expect(same(fe.cell, fc.cell) && same(fe.hidden_next, fc.hidden_next) && same(fe.out, fc.out) &&
             same(fe.ring_gates, fc.ring_gates) && same(fe.ring_cell, fc.ring_cell) &&
             same(fe.ring_hidden, fc.ring_hidden),
         std::string("forward_step<") + dtype + "> emulated differs from lstm_math.h on the CPU");
  const BackwardOut be = backward(true), bc = backward(false);
  expect(same(be.grad_cell, bc.grad_cell) && same(be.held, bc.held) && same(be.grad_gates, bc.grad_gates) &&
             same(be.seen, bc.seen),
         std::string("backward_step<") + dtype + "> emulated differs from lstm_math.h on the CPU");
}

// ---- 16-bit conversions against the CUDA toolkit's own (host code) -------------------------------

void check_half_conversions() {
#if SELFTEST_TOOLKIT
  uint64_t checked = 0, mismatches = 0;
  // every 65537th float bit pattern, plus the neighbourhoods of the edges
  std::vector<uint32_t> patterns;
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 65537) patterns.push_back(static_cast<uint32_t>(bits));
  for (uint32_t edge : {0x33000000u, 0x38800000u, 0x477fe000u, 0x477ff000u, 0x7f800000u, 0x00000001u, 0x3f800000u}) {
    for (int d = -4096; d <= 4096; ++d) {
      patterns.push_back(edge + d);
      patterns.push_back((edge + d) | 0x80000000u);
    }
  }
  for (uint32_t bits : patterns) {
    const float f = simt::emu::bits_float(bits);
    if (std::isnan(f)) continue;
    const __half h = __float2half_rn(f);
    const __nv_bfloat16 b = __float2bfloat16_rn(f);
    uint16_t hb, bb;
    std::memcpy(&hb, &h, 2);
    std::memcpy(&bb, &b, 2);
    mismatches += simt::emu::float_to_half_bits(f) != hb;
    mismatches += simt::emu::float_to_bfloat16_bits(f) != bb;
    checked += 2;
  }
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    __half h;
    __nv_bfloat16 b;
    const uint16_t v = static_cast<uint16_t>(bits);
    std::memcpy(&h, &v, 2);
    std::memcpy(&b, &v, 2);
    const float hf = __half2float(h), bf = __bfloat162float(b);
    if (!std::isnan(hf)) mismatches += simt::emu::float_bits(simt::emu::half_bits_to_float(v)) != simt::emu::float_bits(hf);
    if (!std::isnan(bf)) mismatches += simt::emu::float_bits(simt::emu::bfloat16_bits_to_float(v)) != simt::emu::float_bits(bf);
    checked += 2;
  }
  expect(mismatches == 0, "16-bit conversions: " + std::to_string(mismatches) + " of " + std::to_string(checked) +
                              " differ from the CUDA toolkit's");
#endif
}

// ---- planted faults ---------------------------------------------------------------------------

// Runs `body`; returns the KernelError message, or "" if none was thrown.
std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const KernelError& error) {
    return error.what();
  }
  return "";
}

void expect_error(const std::string& name, const std::function<void()>& body, const std::string& must_contain) {
  const std::string message = error_of(body);
  expect(!message.empty(), name + ": no error reported");
  expect(message.find(must_contain) != std::string::npos,
         name + ": message lacks \"" + must_contain + "\": " + message);
  expect(message.find("kernel rnn") != std::string::npos || message.find("kernel sum") != std::string::npos,
         name + ": message does not name the kernel: " + message);
  std::printf("  %-20s -> %s\n", name.c_str(), message.c_str());
}

void check_faults() {
  const int n = 48, steps = 4, blocks = 3, threads = 64;
  const Problem pr = make_problem(n, 9);
  const std::vector<float> reference = rnn_reference<float>(n, steps, pr.w, pr.h0);
  expect_error("no block barrier", [&] { run_rnn<float, kNoBlockBarrier>(n, steps, blocks, threads, pr.w, pr.h0); },
               "no barrier");
  expect_error("shared overrun", [&] { run_rnn<float, kSharedOverrun>(n, steps, blocks, threads, pr.w, pr.h0); },
               "out of bounds: `h_prev`[48] of 48 elements");
  expect_error("divergent barrier", [&] { run_rnn<float, kDivergentBarrier>(n, steps, blocks, threads, pr.w, pr.h0); },
               "divergent barrier");
  expect_error("early exit", [&] { run_rnn<float, kEarlyExit>(n, steps, blocks, threads, pr.w, pr.h0); },
               "exited");
  expect_error("incomplete mask", [&] { run_rnn<float, kIncompleteMask>(n, steps, blocks, threads, pr.w, pr.h0); },
               "warp shuffle");
  expect_error("uninitialised read", [&] { run_rnn<float, kUninitialisedRead>(n, steps, blocks, threads, pr.w, pr.h0); },
               "uninitialised");
  expect_error("deadlock", [&] { run_rnn<float, kDeadlock>(n, steps, blocks, threads, pr.w, pr.h0); },
               "deadlock: no thread can go on");
  // A missing grid barrier: block-serial scheduling lets block 0 run every step before block 1
  // starts, so its h_{t-1} of the other blocks' rows is stale, in every schedule.
  for (Order order : {Order::kForward, Order::kReverse, Order::kRandom}) {
    set_schedule(order, 3);
    const RnnRun run = run_rnn<float, kNoGridBarrier>(n, steps, blocks, threads, pr.w, pr.h0);
    const double diff = max_abs_diff(run.out, reference);
    expect(diff > 1e-3, "no grid barrier: values not visibly wrong (max |diff| " + std::to_string(diff) + ")");
    std::printf("  %-20s -> wrong values, max |diff| %.3g (order %d)\n", "no grid barrier", diff, int(order));
  }
  set_schedule(Order::kForward);
  // An oversize cooperative grid: the same error code as CUDA, before anything runs.
  set_schedule(Order::kForward, 0, 2);  // 2 simulated SMs, 1 block per SM at 64 KiB of smem
  {
    simt::Status status = simt::kSuccess;
    const Problem big = make_problem(512, 1);
    run_rnn<float>(512, 1, 5, 256, big.w, big.h0, &status);  // rows 103 * 512 * 4 B: 1 block / SM
    expect(status == simt::kErrorCooperativeLaunchTooLarge,
           std::string("oversize cooperative grid: got ") + simt::status_name(status));
    std::printf("  %-20s -> %s\n", "oversize grid", simt::status_name(status));
    int per_sm = 0;
    simt::max_active_blocks_per_sm(&per_sm, simt::KernelSpec{"rnn", 64}, rnn_kernel<float, kNone>,
                                   simt::Dim3{256, 1, 1}, rnn_shared_bytes<float>(512, 103));
    expect(per_sm == 1, "occupancy at 208 KiB of shared memory: " + std::to_string(per_sm));
  }
  set_schedule(Order::kForward);
  // grid barrier in a plain launch
  {
    std::vector<float> sink(2);
    const std::string message = error_of([&] {
      simt::launch(simt::KernelSpec{"barrier", 32}, barrier_kernel<Round::kSyncGrid>, simt::Dim3{2, 1, 1},
                   simt::Dim3{32, 1, 1}, 0, nullptr, 1, sink.data());
    });
    expect(message.find("not launched cooperatively") != std::string::npos, "grid barrier in a plain launch: " + message);
  }
}

// ---- per-barrier cost -------------------------------------------------------------------------

template <Round kRound>
double ns_per_thread_round(int blocks, int threads, bool cooperative) {
  std::vector<float> sink(blocks);
  const int rounds = 200;
  auto run = [&](int r) {
    const auto start = std::chrono::steady_clock::now();
    if (cooperative) {
      simt::launch_cooperative(simt::KernelSpec{"barrier", 32}, barrier_kernel<kRound>, simt::Dim3{unsigned(blocks), 1, 1},
                               simt::Dim3{unsigned(threads), 1, 1}, 0, nullptr, r, sink.data());
    } else {
      simt::launch(simt::KernelSpec{"barrier", 32}, barrier_kernel<kRound>, simt::Dim3{unsigned(blocks), 1, 1},
                   simt::Dim3{unsigned(threads), 1, 1}, 0, nullptr, r, sink.data());
    }
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  };
  double best_full = 1e30, best_empty = 1e30;
  for (int i = 0; i < 5; ++i) {
    best_empty = std::min(best_empty, run(0));
    best_full = std::min(best_full, run(rounds));
  }
  return (best_full - best_empty) / (double(rounds) * blocks * threads);
}

double launch_us(int blocks, int threads) {
  std::vector<float> sink(blocks);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    simt::launch(simt::KernelSpec{"barrier", 32}, barrier_kernel<Round::kSyncBlock>, simt::Dim3{unsigned(blocks), 1, 1},
                 simt::Dim3{unsigned(threads), 1, 1}, 0, nullptr, 0, sink.data());
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

void bench() {
  std::printf("emulated grid      launch (us)  __syncthreads  grid barrier  __shfl_xor_sync   (ns per thread)\n");
  for (auto shape : {std::pair<int, int>{8, 128}, std::pair<int, int>{32, 256}}) {
    std::printf("%4d x %-4d      %9.1f  %13.1f  %12.1f  %15.1f\n", shape.first, shape.second,
                launch_us(shape.first, shape.second),
                ns_per_thread_round<Round::kSyncBlock>(shape.first, shape.second, false),
                ns_per_thread_round<Round::kSyncGrid>(shape.first, shape.second, true),
                ns_per_thread_round<Round::kShuffle>(shape.first, shape.second, false));
  }
}

// ---- one fault, for the sanitizer builds ------------------------------------------------------------

int run_one_fault(const std::string& name) {
  const int n = 48, steps = 3, blocks = 3, threads = 64;
  const Problem pr = make_problem(n, 9);
  Config config = simt::emu::config();
  config.racecheck = false;  // let the sanitizer, not the emulator, find it
  simt::emu::set_config(config);
  try {
    if (name == "no-grid-barrier") run_rnn<float, kNoGridBarrier>(n, steps, blocks, threads, pr.w, pr.h0);
    else if (name == "no-block-barrier") run_rnn<float, kNoBlockBarrier>(n, steps, blocks, threads, pr.w, pr.h0);
    else if (name == "global-overrun") run_rnn<float, kGlobalOverrun>(n, steps, blocks, threads, pr.w, pr.h0);
    else if (name == "none") run_rnn<float, kNone>(n, steps, blocks, threads, pr.w, pr.h0);
    else {
      std::printf("unknown fault %s\n", name.c_str());
      return 2;
    }
  } catch (const KernelError& error) {
    std::printf("emulator: %s\n", error.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  if (mode == "fault" && argc > 2) return run_one_fault(argv[2]);
  if (mode == "bench") {
    bench();
    return 0;
  }
  if (mode == "check" || mode == "all") {
    check_rnn<float>("float32", 2e-6);
    check_rnn<simt::float16>("float16", 2e-6);
    check_rnn<simt::bfloat16>("bfloat16", 2e-6);
    check_sum();
    check_axpy<float>("float32");
    check_axpy<simt::float16>("float16");
    check_axpy<simt::bfloat16>("bfloat16");
    check_mma_layout();
    check_mma<simt::float16>("float16");
    check_mma<simt::bfloat16>("bfloat16");
    check_lstm_steps<float, float>(tbptt::StorageType::kFloat32, "float32");
    check_lstm_steps<double, double>(tbptt::StorageType::kFloat64, "float64");
    check_lstm_steps<simt::float16, float>(tbptt::StorageType::kFloat16, "float16");
    check_lstm_steps<simt::bfloat16, float>(tbptt::StorageType::kBFloat16, "bfloat16");
    check_half_conversions();
    std::printf("check: %s\n", failures ? "FAILED" : "ok");
  }
  if (mode == "sanitize") {
    check_rnn<float>("float32", 2e-6, {Shape{48, 3, 3, 64}});
    check_rnn<simt::bfloat16>("bfloat16", 2e-6, {Shape{33, 2, 2, 32}});
    check_sum();
    check_axpy<float>("float32");
    check_mma<simt::bfloat16>("bfloat16");
    check_lstm_steps<float, float>(tbptt::StorageType::kFloat32, "float32");
    check_lstm_steps<simt::float16, float>(tbptt::StorageType::kFloat16, "float16");
    std::printf("sanitize: %s\n", failures ? "FAILED" : "ok");
  }
  if (mode == "faults" || mode == "all") {
    check_faults();
    std::printf("faults: %s\n", failures ? "FAILED" : "ok");
  }
  return failures ? 1 : 0;
}
