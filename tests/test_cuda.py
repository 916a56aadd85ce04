"""CUDA-only checks: the CUDA path against the CPU path and the reference on identical inputs,
half/bfloat16 accuracy relative to plain PyTorch's own at that dtype, odd sizes, a second
stream, and peak device memory flat in the stream's length. Skipped without a GPU."""
import pytest
import torch

from tbptt_cuda import TruncatedLSTM

from helpers import (assert_records_close, assert_within_low_precision_bar, make_stream, rel_err,
                     run_both, stream_records)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


@pytest.mark.parametrize("H", [33, 64, 256], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("B,L,k2", [(1, 1, 1), (3, 4, 4), (5, 4, 5), (2, 3, 7)],
                         ids=["B1-L1-k2=1", "k2=L", "k2=L+1", "wraps"])
def test_cuda_matches_cpu_and_reference_float32(H, B, L, k2):
    cpu = TruncatedLSTM(7, H, 2, dtype=torch.float32)
    gpu = TruncatedLSTM(7, H, 2, dtype=torch.float32, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    chunks, resets = make_stream([L] * 9, B, 7, torch.float32, "cpu", reset_prob=0.1, seed=H)
    on_cpu = stream_records(cpu, chunks, resets, k2)
    on_gpu = stream_records(gpu, [c.cuda() for c in chunks],
                           [r.cuda() for r in resets], k2)
    for a, b in zip(on_gpu, on_cpu):
        for ta, tb in zip(a, b):
            assert rel_err(ta.cpu(), tb) <= 1e-5
    ours, ref = run_both(gpu, [c.cuda() for c in chunks], [r.cuda() for r in resets], [k2] * 9)
    assert_records_close(ours, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("H", [64, 256], ids=lambda h: f"H{h}")
def test_low_precision_error_relative_to_pytorch(dtype, H):
    exact = TruncatedLSTM(16, H, 2, dtype=torch.float64, device="cuda")
    ours = TruncatedLSTM(16, H, 2, dtype=dtype, device="cuda")
    plain = TruncatedLSTM(16, H, 2, dtype=dtype, device="cuda")
    ours.load_state_dict(exact.state_dict())
    plain.load_state_dict(exact.state_dict())
    chunks, resets = make_stream([8] * 4, 8, 16, torch.float64, "cuda", reset_prob=0.05)
    truth = stream_records(exact, chunks, resets, 16, reference=True)
    low_chunks = [c.to(dtype) for c in chunks]
    got = stream_records(ours, low_chunks, resets, 16)
    baseline = stream_records(plain, low_chunks, resets, 16, reference=True)
    assert_within_low_precision_bar(truth, got, baseline, dtype)


def test_second_stream_gives_the_same_result():
    lstm = TruncatedLSTM(5, 32, 2, k2=8, device="cuda")
    chunks, resets = make_stream([4] * 5, 3, 5, torch.float32, "cuda", reset_prob=0.1)
    default = stream_records(lstm, chunks, resets, 8)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        other = stream_records(lstm, chunks, resets, 8)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b in zip(default, other):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def _peak_bytes(steps, chunk=100, k2=200):
    lstm = TruncatedLSTM(32, 128, 2, k2=k2, device="cuda")
    opt = torch.optim.SGD(lstm.parameters(), lr=1e-3)
    x = torch.randn(chunk, 16, 32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    state = None
    for i in range(steps // chunk):
        out, state = lstm(x, state)
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_peak_memory_flat_from_1k_to_100k_steps():
    short = _peak_bytes(1_000)
    long = _peak_bytes(100_000)  # past the 65,535 steps where cuDNN stops
    assert abs(long - short) <= 0.05 * short, (short, long)
