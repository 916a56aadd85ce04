"""The SIMT emulator and tbptt_cuda.emulate_cuda(): the API, the statistics, 16-bit storage
against plain PyTorch, seeded schedules, and the planted faults of the emulator's self-test
kernels (csrc/emulation/selftest_kernels.cuh). The reference comparisons of every schedule
and option run on the emulated backend through the `device` fixture (conftest.py)."""
import pytest
import torch
from torch import nn

import tbptt_cuda
from tbptt_cuda import TruncatedLSTM, emulate_cuda
from tbptt_cuda import _backend

from helpers import assert_within_low_precision_bar, make_stream, stream_records

pytestmark = pytest.mark.skipif(not tbptt_cuda.build_info()["cuda_emulation"],
                                reason="built without the emulated kernels")


def test_build_info_reports_emulation():
    assert tbptt_cuda.build_info()["cuda_emulation"] is True


def test_statistics_count_the_launches_of_the_stepwise_path():
    lstm = TruncatedLSTM(3, 5, 2, k2=6)
    state = None
    with emulate_cuda(path="stepwise") as stats:
        for L in (4, 4):
            out, state = lstm(torch.randn(L, 2, 3), state)
            out.sum().backward()
    # forward: one pointwise launch per step and layer; backward: one per window step and
    # layer (windows of 4 and then 6 steps)
    assert stats.launches == {"forward_step": 2 * 8, "backward_step": 2 * (4 + 6)}
    assert stats.block_barriers == 0 and stats.grid_barriers == 0
    assert "forward_step" in repr(stats)


def test_outside_the_context_nothing_is_emulated():
    lstm = TruncatedLSTM(3, 5, k2=6)
    with emulate_cuda() as stats:
        pass
    lstm(torch.randn(2, 2, 3))
    assert stats.launches == {}
    assert not tbptt_cuda.emulation.active()
    # float16 outside the context: the CPU's own (stepwise) path, nothing emulated
    TruncatedLSTM(3, 5, dtype=torch.float16)(torch.randn(2, 2, 3, dtype=torch.float16))
    assert stats.launches == {}


def test_nested_contexts_restore_the_outer_settings():
    with emulate_cuda(seed=3) as outer:
        with emulate_cuda() as inner:
            TruncatedLSTM(2, 3)(torch.randn(1, 1, 2))
        assert tbptt_cuda.emulation.active()
        TruncatedLSTM(2, 3)(torch.randn(1, 1, 2))
    assert not tbptt_cuda.emulation.active()
    assert inner.launches == {"forward_step": 1}
    assert outer.launches == {"forward_step": 2}


@pytest.mark.parametrize("kwargs,match", [
    (dict(path="fast"), "path must be one of"),
    (dict(seed=-1), "seed must be None or an integer >= 0"),
    (dict(seed=1.5), "seed must be"),
    (dict(sms=0), "sms must be None or an integer >= 1"),
    (dict(sms=True), "sms must be"),
])
def test_bad_arguments_name_the_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        emulate_cuda(**kwargs)


def test_twenty_seeded_schedules_give_bit_identical_results():
    lstm = TruncatedLSTM(4, 37, 2, dropout=0.3, k2=7)
    chunks, resets = make_stream([5, 3, 5], 3, 4, torch.float32, "cpu", reset_prob=0.2, seed=2)
    results = []
    for seed in [None] + list(range(20)):
        torch.manual_seed(0)  # the same dropout masks
        with emulate_cuda(seed=seed):
            results.append(stream_records(lstm, chunks, resets, 7))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for ta, tb in zip(a, b):
                assert torch.equal(ta, tb)


@pytest.mark.parametrize("path", ["stepwise", "persistent"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("H", [16, 64], ids=lambda h: f"H{h}")
def test_sixteen_bit_storage_error_relative_to_pytorch(dtype, H, path):
    exact = TruncatedLSTM(16, H, 2, dtype=torch.float64)
    ours = TruncatedLSTM(16, H, 2, dtype=dtype)
    plain = TruncatedLSTM(16, H, 2, dtype=dtype)
    ours.load_state_dict(exact.state_dict())
    plain.load_state_dict(exact.state_dict())
    chunks, resets = make_stream([8] * 3, 8, 16, torch.float64, "cpu", reset_prob=0.05)
    truth = stream_records(exact, chunks, resets, 16, reference=True)
    low_chunks = [c.to(dtype) for c in chunks]
    with emulate_cuda(path=path) as stats:
        got = stream_records(ours, low_chunks, resets, 16)
    if path == "stepwise":
        assert stats.launches["forward_step"] == 2 * 8 * 3
    else:  # one launch per layer per chunk
        assert stats.launches == {"persistent_forward": 2 * 3, "persistent_backward": 2 * 3}
    baseline = stream_records(plain, low_chunks, resets, 16, reference=True)
    assert_within_low_precision_bar(truth, got, baseline, dtype, check_dtype=True)


@pytest.mark.parametrize("bfloat16", [False, True], ids=["float16", "bfloat16"])
def test_sixteen_bit_conversion_matches_torch(bfloat16):
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-2**31, 2**31 - 1, (1_000_000,), generator=gen, dtype=torch.int64)
    values = bits.to(torch.int32).view(torch.float32)
    edges = torch.tensor([0.0, -0.0, 2.0**-25, 2.0**-24, 1.5 * 2.0**-25, 2.0**-14, 65504.0, 65519.0,
                          65520.0, 1e30, float("inf"), -float("inf"), 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11])
    values = torch.cat([values, edges])
    values = values[~torch.isnan(values)]
    ours = _backend.load().emulated_sixteen_bit(values, bfloat16)
    theirs = values.to(torch.bfloat16 if bfloat16 else torch.float16).view(torch.int16)
    assert torch.equal(ours, theirs)


def test_readme_example_trains_to_the_cpu_losses():
    """The README's BPTT(k, 2k) example, shortened: the same losses under emulation."""
    def train(emulated):
        torch.manual_seed(0)
        k1, k2 = 32, 64
        lstm = TruncatedLSTM(1, 64, num_layers=2, k2=k2)
        head = nn.Linear(64, 1)
        opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=3e-3)
        t = torch.arange(640, dtype=torch.float32)
        phase = torch.rand(8, 1) * 6.28
        series = (torch.sin(0.07 * t + phase) + 0.1 * torch.randn(8, 640)).T.unsqueeze(-1)
        state, losses = None, []
        context = emulate_cuda() if emulated else torch.autograd.graph.saved_tensors_hooks(
            lambda x: x, lambda x: x)
        with context:
            for start in range(0, series.shape[0] - k1 - 1, k1):
                out, state = lstm(series[start:start + k1], state)
                loss = nn.functional.mse_loss(head(out), series[start + 1:start + k1 + 1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return torch.tensor(losses)

    cpu, emulated = train(False), train(True)
    assert len(cpu) == 19
    assert torch.allclose(cpu, emulated, rtol=1e-4, atol=1e-6), (cpu - emulated).abs().max()


# ---- the emulator catches planted faults in its self-test kernels ---------------------------------

def _selftest(fault, n=48, steps=4, blocks=3, threads=64):
    return _backend.load().emulator_selftest(fault, n, steps, blocks, threads)


def test_correct_selftest_kernel_matches_its_reference():
    status, diff = _selftest("none")
    assert status == "cudaSuccess" and diff < 1e-5


@pytest.mark.parametrize("fault,match", [
    ("no-block-barrier", r"kernel rnn, block \(0,0,0\), thread .*no barrier"),
    ("shared-overrun", r"kernel rnn, block \(\d,0,0\), thread \(48,0,0\): shared-memory write out of "
                       r"bounds: `h_prev`\[48\] of 48 elements"),
    ("divergent-barrier", r"kernel rnn, .*divergent barrier: .*selftest_kernels.cuh:\d+"),
    ("early-exit", r"kernel rnn, .*thread \(63,0,0\): exited while 63 thread\(s\) of its block wait "
                   r"at __syncthreads"),
    ("incomplete-mask", r"kernel rnn, .*lane 0 of its warp waits for it at a warp shuffle"),
    ("uninitialised-read", r"kernel rnn, .*read of `w_rows`\[0\] before any thread of its block wrote it"),
    ("deadlock", r"kernel rnn, block \(0,0,0\): deadlock: no thread can go on \(.*__syncthreads.*"
                 r"warp shuffle"),
])
def test_planted_fault_raises_naming_kernel_block_thread(fault, match):
    with pytest.raises(RuntimeError, match=match):
        _selftest(fault)


def test_missing_grid_barrier_gives_stale_values_under_every_schedule():
    # Blocks run one at a time until they reach the grid barrier: without it, block 0 runs
    # every step before block 1 starts and reads its rows of h before they are written.
    status, diff = _selftest("no-grid-barrier")
    assert status == "cudaSuccess" and diff > 0.1
    for seed in range(3):
        with emulate_cuda(seed=seed):
            assert _selftest("no-grid-barrier")[1] > 0.1
            assert _selftest("none")[1] < 1e-5


def test_oversize_cooperative_grid_returns_cudas_error():
    # 5 blocks of 208 KiB of shared memory: one per SM, so 2 simulated SMs hold 2 of them
    # and the launch is refused before anything runs; 5 SMs hold all 5.
    with emulate_cuda(sms=2):
        status, _ = _selftest("none", n=512, steps=1, blocks=5, threads=256)
        assert status == "cudaErrorCooperativeLaunchTooLarge"
    with emulate_cuda(sms=5):
        status, diff = _selftest("none", n=512, steps=1, blocks=5, threads=256)
        assert status == "cudaSuccess" and diff < 1e-5


def test_unknown_fault_name():
    with pytest.raises(ValueError, match="unknown self-test fault 'nope'"):
        _selftest("nope")
