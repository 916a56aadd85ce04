"""TruncatedLSTM (with and without proj_size) and TruncatedGRU against
tbptt_cuda/reference.py: every schedule of the literature and the module's options, outputs and
all gradients by relative error."""
import pytest
import torch

from tbptt_cuda import TruncatedLSTM

from helpers import (assert_records_close, assert_within_low_precision_bar, make_rnn, make_stream,
                     random_state, run_both, stream_records)

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]

# (chunk lengths, k2 per chunk) for the named schedules, n = 24 steps.
SCHEDULES = {
    "BPTT(n,n)": ([24], [24]),
    "BPTT(1,n)": ([1] * 24, [24] * 24),
    "BPTT(k,k)-k2None": ([6] * 4, [None] * 4),
    "BPTT(k,k)-k2=k": ([6] * 4, [6] * 4),
    "BPTT(k,2k)": ([6] * 4, [12] * 4),
    "uneven-chunks": ([5, 1, 7, 3, 8], [9] * 5),
    "k2-beyond-stream": ([4, 4, 4], [100] * 3),
    "k2=L+1": ([3, 3, 3, 3], [4] * 4),
    "long-wrap": ([3] * 12, [5] * 12),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_layers", [1, 3], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_match_reference(schedule, num_layers, dtype, cell, device):
    lengths, k2s = SCHEDULES[schedule]
    rnn = make_rnn(cell, 4, 5, num_layers, device=device, dtype=dtype)
    chunks, resets = make_stream(lengths, 3, 4, dtype, device)
    ours, ref = run_both(rnn, chunks, resets, k2s)
    assert_records_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("use_state", [False, True], ids=["out_loss", "out+state_loss"])
def test_options_match_reference(use_state, bias, batch_first, num_layers, dtype, cell, device):
    rnn = make_rnn(cell, 3, 6, num_layers, bias=bias, batch_first=batch_first, device=device,
                   dtype=dtype)
    chunks, resets = make_stream([4, 2, 5, 4], 2, 3, dtype, device, reset_prob=0.15, seed=3)
    ours, ref = run_both(rnn, chunks, resets, [7, 7, 7, 7], use_state=use_state,
                         batch_first=batch_first)
    assert_records_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k2", [None, 4, 9], ids=lambda k: f"k2={k}")
def test_resets_and_explicit_initial_state(k2, dtype, cell, device):
    rnn = make_rnn(cell, 3, 4, 2, device=device, dtype=dtype)
    chunks, resets = make_stream([4, 4, 3], 5, 3, dtype, device, reset_prob=0.3, seed=7)
    resets[0][0, 1] = True  # a reset at the very first step cuts the gradient to h0 there
    ours, ref = run_both(rnn, chunks, resets, [k2] * 3, use_state=True,
                         explicit=random_state(rnn, 5, dtype, device))
    assert_records_close(ours, ref, dtype)
    assert ours[0]["h0_grad"][:, 1].abs().max() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_masks_reused_in_backward(dtype, cell, device):
    rnn = make_rnn(cell, 3, 5, 3, dropout=0.4, device=device, dtype=dtype)
    chunks, resets = make_stream([4, 3, 4], 2, 3, dtype, device, seed=11)
    ours, ref = run_both(rnn, chunks, resets, [8, 8, 8])
    assert_records_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_k2_changes_between_calls(dtype, device):
    # shrink, grow before the ring wrapped (all steps kept), switch to None and back
    lstm = TruncatedLSTM(2, 4, 2, device=device, dtype=dtype)
    chunks, resets = make_stream([3, 3, 2, 3, 3, 2], 2, 2, dtype, device, seed=5)
    ours, ref = run_both(lstm, chunks, resets, [9, 4, 20, 20, None, 6])
    # chunk 2 grows k2 to 20 after the ring of 5 slots dropped steps: the window starts at
    # the oldest kept step, not at the reference's; compare the chunks unaffected by that.
    assert_records_close(ours[:2], ref[:2], dtype)
    assert_records_close(ours[4:], ref[4:], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_k2_growth_before_wrap_matches(dtype, cell, device):
    rnn = make_rnn(cell, 2, 4, 1, device=device, dtype=dtype)
    chunks, resets = make_stream([2, 2, 3, 3], 2, 2, dtype, device, seed=6)
    ours, ref = run_both(rnn, chunks, resets, [4, 8, 10, 10])
    assert_records_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_sixteen_bit_streams_within_the_bar(dtype, cell, device):
    """16-bit storage, every cell: each record of a TBPTT(8, 16) stream with resets at most
    LOW_PRECISION_RATIO times as far from float64 as plain PyTorch at that dtype."""
    torch.manual_seed(0)
    exact = make_rnn(cell, 16, 32, 2, dtype=torch.float64, device=device)
    ours = make_rnn(cell, 16, 32, 2, dtype=dtype, device=device)
    plain = make_rnn(cell, 16, 32, 2, dtype=dtype, device=device)
    ours.load_state_dict(exact.state_dict())
    plain.load_state_dict(exact.state_dict())
    chunks, resets = make_stream([8] * 3, 8, 16, torch.float64, device, reset_prob=0.05)
    truth = stream_records(exact, chunks, resets, 16, reference=True)
    low = [c.to(dtype) for c in chunks]
    got = stream_records(ours, low, resets, 16)
    baseline = stream_records(plain, low, resets, 16, reference=True)
    assert_within_low_precision_bar(truth, got, baseline, dtype, check_dtype=True)
