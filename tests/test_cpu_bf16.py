"""Half precision on the CPU (issue 19): bfloat16 through the fused CPU layers (bf16 operands
and ring, float32 products, gate math and cell state: csrc/cpu/fused_cpu.cpp), float16 through
the stepwise CPU path, and torch.autocast("cpu", dtype=bfloat16) on a float32 module.

Accuracy is held to the 16-bit CUDA tests' bar (tests/test_emulation.py): against a float64
reference, our relative error at most LOW_PRECISION_RATIO times that of the plain-PyTorch
reference run in the same 16-bit dtype, plus 1e-4, for every output and gradient of a stream."""
import os

import pytest
import torch

from tbptt_cuda import TruncatedLSTM, _backend

from helpers import (assert_within_low_precision_bar, make_rnn, make_stream, rel_err, split_state,
                     stream_records)

BF16_FUSED = _backend.cpu_fused_reason("bfloat16") == ""
needs_bf16_fused = pytest.mark.skipif(
    not BF16_FUSED, reason=f"no fused bf16 CPU layers: {_backend.cpu_fused_reason('bfloat16')}")
TWO_CORES = (os.cpu_count() or 1) >= 2


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    if request.param == 2 and not TWO_CORES:
        pytest.skip("one core")
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _packs():
    return _backend.load().cpu_weight_packs_made()


def _within_bar(dtype, input_size, hidden, layers=2, batch=8, history="activations",
                chunk_lengths=(8, 8, 8), k2=16, autocast=False, seed=0, cell="lstm"):
    """Runs a stream (resets, k2 > chunk: TBPTT(k, 2k)) through a float64 reference, ours in
    `dtype` (or a float32 module under bf16 autocast) and the plain-PyTorch reference in `dtype`;
    asserts the 16-bit CUDA tests' error-ratio bar on every record. Returns our records."""
    torch.manual_seed(seed)
    exact = make_rnn(cell, input_size, hidden, layers, dtype=torch.float64)
    ours = make_rnn(cell, input_size, hidden, layers, history=history,
                    dtype=torch.float32 if autocast else dtype)
    plain = make_rnn(cell, input_size, hidden, layers, dtype=dtype)
    ours.load_state_dict(exact.state_dict())
    plain.load_state_dict(exact.state_dict())
    chunks, resets = make_stream(list(chunk_lengths), batch, input_size, torch.float64, "cpu",
                                 reset_prob=0.05, seed=seed)
    truth = stream_records(exact, chunks, resets, k2, reference=True)
    if autocast:
        with torch.autocast("cpu", dtype=dtype):
            got = stream_records(ours, [c.float() for c in chunks], resets, k2)
    else:
        got = stream_records(ours, [c.to(dtype) for c in chunks], resets, k2)
    baseline = stream_records(plain, [c.to(dtype) for c in chunks], resets, k2, reference=True)
    assert_within_low_precision_bar(truth, got, baseline, dtype)
    return got


def test_bf16_fused_is_available_where_the_cpu_has_bf16_products():
    """AVX512-BF16 or AMX-BF16 (and oneDNN on): the fused bf16 layers run; elsewhere the
    reason names what is missing and bfloat16 takes the stepwise path."""
    flags = _cpu_flags()
    reason = _backend.cpu_fused_reason("bfloat16")
    if _backend.cpu_fused_reason("float32") == "" and flags & {"avx512_bf16", "amx_bf16"}:
        assert reason == ""
    else:
        assert reason != ""


def test_float16_routes_to_the_stepwise_path():
    reason = _backend.cpu_fused_reason(torch.float16)
    assert "float16 runs the stepwise CPU path" in reason
    lstm = TruncatedLSTM(16, 64, dtype=torch.float16)
    before = _packs()
    out, state = lstm(torch.randn(8, 4, 16, dtype=torch.float16))
    out.float().sum().backward()
    assert _packs() == before  # the fused layers never ran (they pack W_hh per chunk)
    assert out.dtype == torch.float16 and lstm.weight_hh_l0.grad.dtype == torch.float16


# H = 16: one partial block; 64: two blocks; 100: 3 x 32 + 4; 256: 8 blocks (two threads share
# them); 33: odd H, which the bf16 kernels cannot take (K pairs): the stepwise path.
@pytest.mark.parametrize("hidden", [16, 64, 100, 256, 33])
def test_bf16_within_the_error_bar(hidden, threads):
    before = _packs()
    _within_bar(torch.bfloat16, 24, hidden, layers=2 if hidden <= 100 else 1)
    fused = BF16_FUSED and hidden % 2 == 0
    assert (_packs() > before) == fused


@pytest.mark.parametrize("cell", ["gru", "lstmp"])
@pytest.mark.parametrize("history", ["activations", "states"])
@pytest.mark.parametrize("hidden", [64, 100])
def test_other_cells_bf16_within_the_error_bar(hidden, history, cell):
    """The GRU's and the LSTM with projections' bf16 layers (fused where the CPU has bf16
    products; proj_size even) within the same bar."""
    before = _packs()
    _within_bar(torch.bfloat16, 24, hidden, history=history, cell=cell)
    assert (_packs() > before) == BF16_FUSED


@pytest.mark.parametrize("hidden", [16, 100])
def test_float16_within_the_error_bar(hidden):
    _within_bar(torch.float16, 24, hidden)


@pytest.mark.parametrize("history", ["states", "checkpoints"])
def test_bf16_history_modes_within_the_error_bar(history):
    _within_bar(torch.bfloat16, 16, 64, history=history)


@pytest.mark.parametrize("hidden", [64, 100])
def test_autocast_on_a_float32_module_within_the_error_bar(hidden):
    _within_bar(torch.bfloat16, 16, hidden, autocast=True)


@needs_bf16_fused
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstmp"])
def test_fused_bf16_agrees_with_the_stepwise_bf16_path(cell):
    torch.manual_seed(3)
    lstm = make_rnn(cell, 32, 96, 2, dtype=torch.bfloat16)
    x = torch.randn(12, 6, 32, dtype=torch.bfloat16)
    results = []
    for path in ("auto", "stepwise"):
        _backend.set_cpu_path(path)
        try:
            lstm.zero_grad()
            out, state = lstm(x)
            h, c = split_state(state)
            ((out.float() ** 2).sum() + (h if c is None else c).float().sum()).backward()
            results.append([out, h] + ([] if c is None else [c]) + [p.grad for p in lstm.parameters()])
        finally:
            _backend.set_cpu_path("auto")
    for a, b in zip(*results):
        assert rel_err(a, b) < 2e-2, rel_err(a, b)


def test_bf16_ring_holds_half_the_bytes_of_float32_but_the_float32_cell():
    """Every record of the ring is bfloat16: gates, c, h, x (the cell state a step carries to
    the next stays float32; its record is rounded), so the ring is half of float32's bytes but
    for the one flag byte per row and step."""
    H, I, B, L, k2, layers = 64, 48, 4, 8, 16, 2
    states = {}
    for dtype in (torch.float32, torch.bfloat16):
        lstm = TruncatedLSTM(I, H, layers, k2=k2, dtype=dtype)
        out, state = lstm(torch.randn(L, B, I, dtype=dtype))
        out.float().sum().backward()
        states[dtype] = state
    ring32, ring16 = (states[d].history.ring for d in (torch.float32, torch.bfloat16))
    for name in ("gates", "cell", "hidden", "input"):
        t32, t16 = getattr(ring32, name), getattr(ring16, name)
        assert t16.dtype == torch.bfloat16 and t16.shape == t32.shape
        assert t16.numel() * t16.element_size() * 2 == t32.numel() * t32.element_size()
    # per step and layer: 4H + H + H (+ I for layer 0) values, + one flag byte per row
    slots = ring16.gates.shape[1]
    flag_bytes = slots * B
    bytes32 = slots * B * (4 * (layers * 6 * H + I)) + flag_bytes
    bytes16 = slots * B * (2 * (layers * 6 * H + I)) + flag_bytes
    assert ring32.nbytes == bytes32 and ring16.nbytes == bytes16
    assert 2 * (ring16.nbytes - flag_bytes) == ring32.nbytes - flag_bytes
    init32 = 2 * layers * B * H * 4
    init16 = layers * B * H * (2 + 4)
    assert states[torch.float32].history_nbytes == bytes32 + init32
    assert states[torch.bfloat16].history_nbytes == bytes16 + init16


def test_autocast_keeps_float32_parameters_and_matches_the_bf16_module():
    """torch.autocast("cpu", dtype=bfloat16) on a float32 module: outputs and state in bf16,
    parameters stay float32 and receive float32 gradients equal to a bf16 copy's (the same
    computation on the same bf16 values), across chunks of one stream."""
    torch.manual_seed(0)
    f32 = TruncatedLSTM(24, 64, 2, k2=12)
    bf16 = TruncatedLSTM(24, 64, 2, k2=12)
    bf16.load_state_dict(f32.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    xs = [torch.randn(6, 4, 24) for _ in range(3)]
    s32 = s16 = None
    for x in xs:
        f32.zero_grad()
        bf16.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out32, s32 = f32(x, s32)
        out16, s16 = bf16(x.to(torch.bfloat16), s16)
        assert out32.dtype == torch.bfloat16 and s32[0].dtype == torch.bfloat16
        assert torch.equal(out32, out16)
        assert torch.equal(s32[1], s16[1])
        (out32.float() * 0.5).sum().backward()
        (out16.float() * 0.5).sum().backward()
        for p32, p16 in zip(f32.parameters(), bf16.parameters()):
            assert p32.dtype == torch.float32 and p32.grad.dtype == torch.float32
            assert torch.equal(p32.grad, p16.grad.float())
        assert s32.history.h_init.dtype == torch.bfloat16


def test_autocast_with_explicit_float32_state_and_float64_module():
    lstm = TruncatedLSTM(8, 16)
    h0 = torch.zeros(1, 3, 16, requires_grad=True)
    c0 = torch.zeros(1, 3, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = lstm(torch.randn(5, 3, 8), (h0, c0))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert h0.grad.dtype == torch.float32 and h0.grad.abs().sum() > 0
    # a float64 module is left alone by CPU autocast (autocast casts float32 only)
    lstm64 = TruncatedLSTM(8, 16, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = lstm64(torch.randn(5, 3, 8, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_mkldnn_off_runs_bf16_on_the_stepwise_path():
    lstm = TruncatedLSTM(16, 64, dtype=torch.bfloat16)
    x = torch.randn(8, 4, 16, dtype=torch.bfloat16)
    with torch.backends.mkldnn.flags(enabled=False):
        assert "mkldnn.enabled is False" in _backend.cpu_fused_reason("bfloat16") or not BF16_FUSED
        before = _packs()
        out, _ = lstm(x)
        out.float().sum().backward()
        assert _packs() == before
    assert torch.isfinite(lstm.weight_hh_l0.grad.float()).all()


@needs_bf16_fused
def test_fused_bf16_up_to_1024_units_the_stepwise_path_above():
    """kMaxFusedHiddenBf16 (1024: measured faster than the stepwise path up to there) and even
    H only (the bf16 products take K rows in pairs); both sides of each limit are run."""
    for hidden, fused in ((1024, True), (1026, False), (1023, False)):
        lstm = TruncatedLSTM(3, hidden, k2=2, dtype=torch.bfloat16)
        before = _packs()
        out, _ = lstm(torch.randn(2, 2, 3, dtype=torch.bfloat16))
        out.float().sum().backward()
        assert (_packs() > before) == fused, hidden


@needs_bf16_fused
def test_fused_bf16_takes_the_projection_with_an_even_proj_size_only():
    """The LSTM with projections multiplies over K = P too: an odd proj_size runs the stepwise
    bf16 path (with the fused path's results to bf16 rounding), an even one the fused layers."""
    results = {}
    for proj_size, fused in ((32, True), (33, False)):
        torch.manual_seed(4)
        lstm = TruncatedLSTM(3, 64, proj_size=proj_size, k2=4, dtype=torch.bfloat16)
        before = _packs()
        out, _ = lstm(torch.randn(4, 2, 3, dtype=torch.bfloat16))
        out.float().sum().backward()
        assert (_packs() > before) == fused, proj_size
        results[proj_size] = out
    assert all(torch.isfinite(o.float()).all() for o in results.values())
