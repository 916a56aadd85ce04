"""The persistent kernels (csrc/cuda/persistent_kernels.cuh), run by the SIMT emulator, for every
cell (`CELLS`: the LSTM, the GRU, the LSTM with projections): against the reference over the
shapes, SM counts and schedules the partition must get right; the same results and ring contents
as the stepwise path; bit-identical under twenty schedules; the plan, its rule and its fallback
(no plan, a failed launch); one launch per layer per chunk and per window whatever their length,
and one grid barrier per step (two with a projection); the path setting."""
import os
import subprocess
import sys

import pytest
import torch

import tbptt_cuda
from tbptt_cuda import ARTBP, TruncatedLSTM, emulate_cuda, emulation

from helpers import (TOLERANCE, assert_records_close, assert_within_low_precision_bar, make_rnn,
                     make_stream, proj_size_for, rel_err, run_both, split_state, stream_records)

pytestmark = [pytest.mark.emulated, pytest.mark.skipif(
    not tbptt_cuda.build_info()["cuda_emulation"], reason="built without the emulated kernels")]

# (H, B, simulated SMs, layers, dropout, reset probability, dtype): every H, B and SM count the
# issue names appears; chunks of 1, 2 and 7 steps with k2 = 9 > k1 wrap the ring of 10 slots.
CASES = [
    (16, 1, 1, 1, 0.0, 0.0, torch.float64),
    (16, 17, 2, 3, 0.3, 0.2, torch.float64),
    (48, 3, 8, 2, 0.0, 0.2, torch.float64),
    (48, 8, 1, 1, 0.0, 0.1, torch.float32),
    (64, 8, 3, 2, 0.3, 0.0, torch.float32),
    (64, 1, 8, 1, 0.0, 0.0, torch.float64),
    (96, 3, 3, 1, 0.0, 0.3, torch.float64),
    (96, 17, 8, 2, 0.0, 0.1, torch.float32),
    (130, 17, 8, 1, 0.0, 0.2, torch.float64),
    (130, 3, 2, 2, 0.2, 0.1, torch.float32),
]
LENGTHS = [1, 2, 7, 2, 7, 1]
K2 = 9
CELLS = ["lstm", "gru", "lstmp"]  # lstmp: proj_size = helpers.proj_size_for(H)


def _case_id(case):
    H, B, sms, layers, dropout, reset, dtype = case
    return f"H{H}-B{B}-sms{sms}-L{layers}" + ("-drop" if dropout else "") + (
        "-resets" if reset else "") + ("-f64" if dtype == torch.float64 else "-f32")


def _ring(state):
    ring = state.history.ring
    return [t.clone() for t in (ring.gates, ring.cell, ring.hidden, ring.input, ring.flags, ring.mask)]


def _stream(path, sms, H, B, layers, dropout, reset_prob, dtype, seed=None, lengths=LENGTHS,
            history="activations", artbp=None, k2=K2, cell="lstm"):
    """Runs a stream of `cell` under emulation; returns (per-chunk records, final ring, stats)."""
    torch.manual_seed(0)
    lstm = make_rnn(cell, 5, H, layers, dropout=dropout, k2=k2, history=history, artbp=artbp,
                    dtype=dtype)
    chunks, resets = make_stream(lengths, B, 5, dtype, "cpu", reset_prob=reset_prob, seed=1)
    gen = torch.Generator().manual_seed(2)
    state, records = None, []
    with emulate_cuda(path=path, sms=sms, seed=seed) as stats:
        torch.manual_seed(3)  # the same dropout masks on both paths
        for x, reset in zip(chunks, resets):
            x = x.clone().requires_grad_()
            lstm.zero_grad(set_to_none=True)
            if artbp is not None:
                with artbp.force(min(artbp.cap, 12)):
                    out, state = lstm(x, state, reset=reset)
            else:
                out, state = lstm(x, state, reset=reset)
            w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
            h, c = split_state(state)
            loss = (out * w).sum() + h.sum() * 0.5
            if c is not None:
                loss = loss + (c ** 2).sum() * 0.25
            loss.backward()
            records.append([out.detach(), h.detach()] + ([] if c is None else [c.detach()])
                           + [x.grad] + [p.grad.clone() for p in lstm.parameters()])
    return records, _ring(state), stats


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference_over_shapes_and_sm_counts(case, cell):
    H, B, sms, layers, dropout, reset_prob, dtype = case
    lstm = make_rnn(cell, 5, H, layers, dropout=dropout, dtype=dtype)
    chunks, resets = make_stream(LENGTHS, B, 5, dtype, "cpu", reset_prob=reset_prob, seed=4)
    with emulate_cuda(path="persistent", sms=sms) as stats:
        ours, ref = run_both(lstm, chunks, resets, [K2] * len(LENGTHS), use_state=True)
    assert_records_close(ours, ref, dtype)
    plan = emulation.plan(H, B, dtype, sms=sms, cell=cell, proj_size=proj_size_for(H))
    assert plan["usable"] and plan["forward"]["blocks"] <= sms
    # one launch per layer per chunk, each way; the stepwise kernels never ran
    assert stats.launches == {"persistent_forward": layers * len(LENGTHS),
                              "persistent_backward": layers * len(LENGTHS)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[9]], ids=_case_id)
def test_both_paths_write_the_same_ring_and_results(case, cell):
    H, B, sms, layers, dropout, reset_prob, dtype = case
    fused, fused_ring, _ = _stream("persistent", sms, H, B, layers, dropout, reset_prob, dtype,
                                   cell=cell)
    step, step_ring, stats = _stream("stepwise", sms, H, B, layers, dropout, reset_prob, dtype,
                                     cell=cell)
    assert set(stats.launches) == {"forward_step", "backward_step"}
    tol = TOLERANCE[dtype]
    for a_chunk, b_chunk in zip(fused, step):
        for a, b in zip(a_chunk, b_chunk):
            assert rel_err(a, b) <= tol
    for a, b in zip(fused_ring, step_ring):  # gates, c, h, x, flags, masks of every slot
        assert a.shape == b.shape
        if a.dtype == torch.uint8:
            assert torch.equal(a, b)
        elif a.numel():
            assert rel_err(a, b) <= tol


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_sixteen_bit_paths_agree_to_their_rounding(dtype, cell):
    fused, _, stats = _stream("persistent", 3, 48, 8, 2, 0.0, 0.1, dtype, cell=cell)
    step, _, _ = _stream("stepwise", 3, 48, 8, 2, 0.0, 0.1, dtype, cell=cell)
    assert stats.launches["persistent_forward"] == 2 * len(LENGTHS)
    for a_chunk, b_chunk in zip(fused, step):
        for a, b in zip(a_chunk, b_chunk):
            assert a.dtype == b.dtype
            assert rel_err(a, b) <= 3e-2  # a few 16-bit roundings of different sums


# (H, B, SMs): K padded to 16 (H = 130: G = 520), batch rows padded to the tiles (B = 1, 17),
# a last block with fewer units, k split over warps or (H = 130 on 2 SMs: 68 units a block)
# more tiles than warps, taken in turn.
SIXTEEN_BIT_CASES = [(16, 1, 1), (48, 17, 3), (130, 3, 8), (96, 8, 2), (64, 40, 8), (130, 5, 2)]
# The GRU: 3u gate rows a block (u = 4: 12, not a whole 16-row tile; u = 68: 204), G = 3H
# (H = 130: 390, not a multiple of 16). The LSTM with projections: K = P = 8, 65, 24 (padded to
# 16s), P columns a block 2, 9, 12 (blocks without any at H = 16 on 4 SMs: P = 8 over 4 blocks).
GRU_SIXTEEN_BIT_CASES = [(16, 1, 4), (130, 3, 8), (130, 5, 2)]
LSTMP_SIXTEEN_BIT_CASES = [(16, 1, 4), (130, 3, 8), (48, 17, 3)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cell,case", [("lstm", c) for c in SIXTEEN_BIT_CASES]
                         + [("gru", c) for c in GRU_SIXTEEN_BIT_CASES]
                         + [("lstmp", c) for c in LSTMP_SIXTEEN_BIT_CASES],
                         ids=lambda c: c if isinstance(c, str) else "H{}-B{}-sms{}".format(*c))
def test_sixteen_bit_tensor_core_products_against_float64(cell, case, dtype):
    """float16 / bfloat16 multiply on (emulated) tensor cores, mma m16n8k16 with fp32
    accumulation: at most LOW_PRECISION_RATIO times plain PyTorch's error at that dtype, both
    measured against float64."""
    H, B, sms = case
    exact = make_rnn(cell, 5, H, 2, dtype=torch.float64)
    ours = make_rnn(cell, 5, H, 2, dtype=dtype)
    plain = make_rnn(cell, 5, H, 2, dtype=dtype)
    ours.load_state_dict(exact.state_dict())
    plain.load_state_dict(exact.state_dict())
    chunks, resets = make_stream([2, 7, 1], B, 5, torch.float64, "cpu", reset_prob=0.1, seed=8)
    truth = stream_records(exact, chunks, resets, K2, reference=True)
    low = [c.to(dtype) for c in chunks]
    with emulate_cuda(path="persistent", sms=sms) as stats:
        got = stream_records(ours, low, resets, K2)
    baseline = stream_records(plain, low, resets, K2, reference=True)
    for kernel in ("persistent_forward", "persistent_backward"):  # the mma warp collectives
        assert stats.per_kernel[kernel]["warp_collectives"] > 0
    assert_within_low_precision_bar(truth, got, baseline, dtype, check_dtype=True)


@pytest.mark.parametrize("cell", CELLS)
def test_thirty_two_bit_products_use_no_tensor_cores(cell):
    _, _, stats = _stream("persistent", 3, 48, 8, 1, 0.0, 0.0, torch.float32, lengths=[3], cell=cell)
    assert stats.per_kernel["persistent_forward"]["warp_collectives"] == 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("history", ["states", "checkpoints"])
def test_history_modes_and_artbp_on_the_persistent_path(history, cell):
    """The rebuilt pre-activations (states), the segment recompute (checkpoints) and ARTBP's
    carry factors reach the persistent kernels as on the stepwise path."""
    artbp = ARTBP(cap=14, c=0.3)
    args = (3, 24, 4, 2, 0.0, 0.2, torch.float64)
    fused, _, stats = _stream("persistent", *args, history=history, artbp=artbp, k2=8, cell=cell)
    step, _, _ = _stream("stepwise", *args, history=history, artbp=artbp, k2=8, cell=cell)
    assert "persistent_backward" in stats.launches
    for a_chunk, b_chunk in zip(fused, step):
        for a, b in zip(a_chunk, b_chunk):
            assert rel_err(a, b) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16-mma"])
def test_twenty_seeded_schedules_give_bit_identical_results(dtype, cell):
    runs = [_stream("persistent", 3, 40, 6, 2, 0.2, 0.2, dtype, seed=seed,
                    lengths=[3, 5], cell=cell)[0] for seed in [None] + list(range(20))]
    for other in runs[1:]:
        for a_chunk, b_chunk in zip(runs[0], other):
            for a, b in zip(a_chunk, b_chunk):
                assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [4, 64])
def test_launches_per_chunk_do_not_grow_with_its_length(L, cell):
    lstm = make_rnn(cell, 3, 32, 2, k2=L + 3)
    state = None
    with emulate_cuda(path="persistent", sms=4) as stats:
        for _ in range(2):
            out, state = lstm(torch.randn(L, 4, 3), state)
            out.sum().backward()
    # two chunks of two layers
    assert stats.launches == {"persistent_forward": 2 * 2, "persistent_backward": 2 * 2}
    per_kernel = stats.per_kernel
    # one grid barrier between steps forward; one per step backward (windows of L, L + 3); with
    # a projection one more a step each way (h needs all of m; dm needs all of dh_eff)
    per_step = 2 if cell == "lstmp" else 1
    assert per_kernel["persistent_forward"]["grid_barriers"] == 2 * 2 * (per_step * L - 1)
    assert per_kernel["persistent_backward"]["grid_barriers"] == 2 * per_step * (L + (L + 3))


@pytest.mark.parametrize("cell", ["gru", "lstmp"])
def test_auto_takes_the_persistent_kernels_for_a_cell_where_it_takes_them_for_the_lstm(cell):
    """The other cells follow the LSTM's rule rows: at a shape where "auto" takes the persistent
    kernels for an LSTM (float32, B = 3, H = 40, two chunks of 12 steps: one launch per layer
    per chunk each way) it takes them for the cell too, forced or not, with the stepwise path's
    results to float32 rounding."""
    args = (None, 40, 3, 2, 0.0, 0.1, torch.float32)
    _, _, lstm_stats = _stream("auto", *args, lengths=[12, 12], k2=16)
    assert lstm_stats.launches == {"persistent_forward": 4, "persistent_backward": 4}
    stepwise, _, stepwise_stats = _stream("stepwise", *args, lengths=[12, 12], k2=16, cell=cell)
    assert set(stepwise_stats.launches).isdisjoint(lstm_stats.launches)
    for path in ("persistent", "auto"):
        records, _, stats = _stream(path, *args, lengths=[12, 12], k2=16, cell=cell)
        assert stats.launches == lstm_stats.launches, path
        for a_chunk, b_chunk in zip(records, stepwise):
            for a, b in zip(a_chunk, b_chunk):
                assert rel_err(a, b) <= TOLERANCE[torch.float32], path


def test_auto_follows_the_rule_table():
    """auto takes the persistent kernels only inside persistent_rule's table
    (csrc/persistent_dispatch.cpp; float32: B <= 64, B*H <= 512, L >= 11; 16-bit: B <= 256,
    B*H <= 1024, L >= 10)."""
    def launched(H, B, L, dtype=torch.float32):
        lstm = TruncatedLSTM(2, H, k2=L, dtype=dtype)
        with emulate_cuda(sms=8) as stats:
            out, _ = lstm(torch.randn(L, B, 2, dtype=dtype))
            out.float().sum().backward()
        return set(stats.launches)
    persistent = {"persistent_forward", "persistent_backward"}
    stepwise = {"forward_step", "backward_step"}
    assert launched(16, 4, 11) == persistent
    assert launched(16, 4, 10) == stepwise  # too few steps to pay for the launches
    assert launched(4, 65, 11) == stepwise  # B > 64
    assert launched(130, 4, 11) == stepwise  # B*H > 512
    assert launched(32, 32, 10, torch.bfloat16) == persistent  # tensor cores: B*H <= 1024
    assert launched(32, 33, 10, torch.bfloat16) == stepwise


def test_plans_on_the_simulated_h100():
    for H, B in [(16, 1), (130, 17), (768, 16), (1024, 64)]:
        plan = emulation.plan(H, B)
        assert plan["usable"], plan["reason"]
        for part in (plan["forward"], plan["backward"]):
            assert part["blocks"] * part["units"] >= H > (part["blocks"] - 1) * part["units"]
            assert part["blocks"] <= 132 and part["units"] % 4 == 0 or part["units"] == H
            assert part["threads"] % 32 == 0 and part["threads"] <= 256
            assert part["shared_bytes"] <= 227 * 1024
    assert emulation.plan(768, 16)["forward"]["units"] == 8  # 96 blocks, as the design study
    assert emulation.plan(1024, 16)["forward"]["blocks"] == 128
    big = emulation.plan(4096, 16)
    assert not big["usable"] and "shared memory" in big["reason"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_gru_plans_hold_three_quarters_of_the_lstms_weights(dtype):
    """The GRU's blocks keep 3u rows of W_hh forward and [u, 3H] columns backward: at the same
    units per block its weights take 3/4 of the LSTM's shared memory (padding aside: tensor
    cores pad the 3u rows to whole 16-row tiles, so with u = 4 both hold 16), and the backward
    reduction is G = 3H long."""
    elem = 4 if dtype == torch.float32 else 2
    for H, B in [(256, 8), (768, 16), (1024, 64)]:
        lstm, gru = emulation.plan(H, B, dtype), emulation.plan(H, B, dtype, cell="gru")
        assert lstm["usable"] and gru["usable"], gru["reason"]
        assert gru["forward"]["units"] == lstm["forward"]["units"]
        u = gru["forward"]["units"]
        assert gru["forward"]["shared_bytes"] >= 3 * u * H * elem
        if dtype == torch.float32 or 3 * u % 16 == 0:
            assert gru["forward"]["shared_bytes"] < lstm["forward"]["shared_bytes"]
        assert gru["forward"]["shared_bytes"] <= lstm["forward"]["shared_bytes"]
        assert gru["backward"]["k_chunk"] <= 3 * H
        assert gru["backward"]["shared_bytes"] >= u * 3 * H * elem
    with pytest.raises(ValueError, match="cell must be 'lstm', 'lstmp' or 'gru'"):
        emulation.plan(256, 8, cell="rnn_tanh")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_lstmp_plans_split_both_products_over_the_same_blocks(dtype):
    """The LSTM with projections: a block owns u of the H units (W_hh's 4u rows [4u, P]
    forward; W_hr's u columns [u, P] backward) and v = ceil(P / blocks) of the P columns (W_hr's
    v rows [v, H] forward; W_hh's v columns [v, 4H] backward); one launch each way takes the
    larger thread count and the shared memory of both products."""
    elem = 4 if dtype == torch.float32 else 2
    for H, P, B in [(256, 128, 8), (768, 384, 16), (1024, 512, 32)]:
        plan = emulation.plan(H, B, dtype, cell="lstmp", proj_size=P)
        assert plan["usable"], plan["reason"]
        f, fp = plan["forward"], plan["forward_projection"]
        b, bp = plan["backward"], plan["backward_projection"]
        blocks = f["blocks"]
        assert blocks == fp["blocks"] == b["blocks"] == bp["blocks"] == -(-H // f["units"])
        assert fp["units"] == b["units"] == -(-P // blocks) and bp["units"] == f["units"]
        assert f["threads"] == fp["threads"] and b["threads"] == bp["threads"]
        assert f["shared_bytes"] == fp["shared_bytes"] and b["shared_bytes"] == bp["shared_bytes"]
        u, v = f["units"], fp["units"]
        assert f["shared_bytes"] >= (4 * u * P + v * H) * elem
        assert b["shared_bytes"] >= (v * 4 * H + u * P) * elem
        assert f["shared_bytes"] <= 227 * 1024 and b["shared_bytes"] <= 227 * 1024
        assert b["k_chunk"] <= 4 * H and bp["k_chunk"] <= P
    with pytest.raises(ValueError, match="proj_size must be > 0 for the cell 'lstmp'"):
        tbptt_cuda._backend.load().persistent_plan("emulated", 64, 2, "float32", "lstm", 8)
    with pytest.raises(ValueError, match="proj_size must be < hidden"):
        emulation.plan(64, 2, cell="lstmp", proj_size=64)


def test_no_plan_falls_back_to_the_stepwise_path_with_the_same_results():
    """On one simulated SM, W_hh of H = 130 does not fit a block: auto runs the stepwise path
    for a shape its rule admits (float32, B*H = 390, 12 steps), and a forced persistent path
    says why it cannot."""
    assert not emulation.plan(130, 3, torch.float32, sms=1)["usable"]
    assert emulation.plan(130, 3, torch.float32, sms=8)["usable"]
    auto, _, stats = _stream("auto", 1, 130, 3, 1, 0.0, 0.0, torch.float32,
                             lengths=[12, 2], k2=12)
    assert set(stats.launches) == {"forward_step", "backward_step"}
    fused, _, _ = _stream("persistent", 8, 130, 3, 1, 0.0, 0.0, torch.float32,
                        lengths=[12, 2], k2=12)
    for a_chunk, b_chunk in zip(auto, fused):
        for a, b in zip(a_chunk, b_chunk):
            assert rel_err(a, b) <= TOLERANCE[torch.float32]
    with pytest.raises(RuntimeError, match=r"forced to 'persistent' but no persistent plan fits "
                                           r"H=130, B=3 .*shared memory"):
        _stream("persistent", 1, 130, 3, 1, 0.0, 0.0, torch.float32, lengths=[3], k2=12)


def test_a_failed_launch_warns_once_and_the_stepwise_path_gives_the_same_results():
    """A cooperative launch the device refuses (cudaErrorCooperativeLaunchTooLarge, as when MPS
    or another process holds SMs the plan counted on): warned once, the plan marked dead, the
    same call and every later one run stepwise, with the same results (float32 and chunks of 11
    and 12 steps: inside auto's rule)."""
    good, _, _ = _stream("persistent", 4, 24, 3, 2, 0.0, 0.2, torch.float32,
                         lengths=[11, 12, 2], k2=14)
    emulation.clear_plans()
    emulation.fail_launches("persistent_forward", 720)
    try:
        with pytest.warns(UserWarning, match=r"persistent_forward could not be launched .*"
                                             r"cudaErrorCooperativeLaunchTooLarge") as warned:
            fell_back, _, stats = _stream("auto", 4, 24, 3, 2, 0.0, 0.2, torch.float32,
                                          lengths=[11, 12, 2], k2=14)
        assert len([w for w in warned if "could not be launched" in str(w.message)]) == 1
        assert "persistent_forward" not in stats.launches
        assert stats.launches["forward_step"] == 2 * (11 + 12 + 2)
        with pytest.raises(RuntimeError, match=r"forced to 'persistent' and the launch of "
                                               r"persistent_forward .*failed"):
            _stream("persistent", 4, 24, 3, 2, 0.0, 0.2, torch.float32, lengths=[3], k2=12)
    finally:
        emulation.fail_launches(None)
        emulation.clear_plans()
    for a_chunk, b_chunk in zip(good, fell_back):
        for a, b in zip(a_chunk, b_chunk):
            assert rel_err(a, b) <= TOLERANCE[torch.float32]


def test_cuda_path_setting_and_its_errors():
    assert tbptt_cuda.cuda_path() == "auto"
    try:
        tbptt_cuda.set_cuda_path("stepwise")
        assert tbptt_cuda.cuda_path() == "stepwise"
    finally:
        tbptt_cuda.set_cuda_path("auto")
    with pytest.raises(ValueError, match="path must be one of"):
        tbptt_cuda.set_cuda_path("fast")
    with pytest.raises(ValueError, match="dtype must be"):
        tbptt_cuda._backend.load().persistent_plan("emulated", 16, 2, "int8")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            tbptt_cuda.cuda_plan(16, 2)


def test_environment_variable_sets_the_path_and_a_bad_value_names_it():
    code = "import tbptt_cuda; print(tbptt_cuda.cuda_path())"
    env = dict(os.environ, TBPTT_CUDA_PATH="persistent")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "persistent", out.stderr
    env["TBPTT_CUDA_PATH"] = "fastest"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "TBPTT_CUDA_PATH" in out.stderr and "'fastest'" in out.stderr
