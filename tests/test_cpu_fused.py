"""The CPU's OpenMP build and its fused float32 layers (csrc/cpu/fused_cpu.cpp): parallel
regions really fork; the fused layers (the LSTM's and the GRU's) give the reference's results
over shapes that split into unit blocks unevenly, on one thread and two, in every history mode,
with ARTBP and held rows;
the packed-weight cache repacks after every change of the weight; the input gradient is skipped
where the input needs none; and the fallback where oneDNN is off."""
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from tbptt_cuda import ARTBP, TruncatedLSTM, _backend

from helpers import (TOLERANCE, assert_records_close, make_rnn, make_stream, rel_err, run_both,
                     split_state)

FUSED = _backend.cpu_fused_reason() == ""
needs_fused = pytest.mark.skipif(not FUSED, reason=f"no fused CPU layers: {_backend.cpu_fused_reason()}")
TWO_CORES = (os.cpu_count() or 1) >= 2


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def stepwise_cpu():
    """Runs the body's chunks on the per-step CPU path."""
    def run(fn):
        _backend.set_cpu_path("stepwise")
        try:
            return fn()
        finally:
            _backend.set_cpu_path("auto")
    return run


@pytest.mark.skipif(not TWO_CORES, reason="one core")
def test_parallel_for_really_forks(threads):
    """The extension is built with -fopenmp: at::parallel_for in our code runs on torch's
    threads (built with -fopenmp-simd only it ran every task on one)."""
    assert _backend.load().cpu_parallel_for_threads(8) == threads


@needs_fused
@pytest.mark.skipif(not TWO_CORES, reason="one core")
def test_team_size_follows_the_work(threads):
    module = _backend.load()
    assert module.cpu_fused_team_threads(256, 32) == threads  # 8 blocks, 16.8 MFLOP a step
    assert module.cpu_fused_team_threads(8, 2) == 1           # one block: no team
    assert module.cpu_fused_team_threads(64, 1) == 1          # too little work for a barrier


# H = 5: one partial block; 40: 32 + 8; 100: 3 x 32 + 4; 256: 8 blocks (two threads share them)
@needs_fused
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstmp"])
@pytest.mark.parametrize("hidden", [5, 40, 100, 256], ids=lambda h: f"H{h}")
def test_fused_layers_match_the_reference(hidden, threads, cell):
    torch.manual_seed(0)
    lstm = make_rnn(cell, 7, hidden, 2, dropout=0.2, dtype=torch.float32)
    chunks, resets = make_stream([4, 1, 5, 3], 9, 7, torch.float32, "cpu", reset_prob=0.15, seed=5)
    before = _backend.load().cpu_weight_packs_made()
    ours, ref = run_both(lstm, chunks, resets, [6, 6, 9, 9], use_state=True)
    assert_records_close(ours, ref, torch.float32)
    assert _backend.load().cpu_weight_packs_made() > before  # the fused layers ran


def _stream(lstm, chunks, resets, artbp=None):
    gen = torch.Generator().manual_seed(7)
    state, records = None, []
    for x, reset in zip(chunks, resets):
        x = x.clone().requires_grad_()
        lstm.zero_grad(set_to_none=True)
        if artbp is not None:
            with artbp.force(10):
                out, state = lstm(x, state, reset=reset)
        else:
            out, state = lstm(x, state, reset=reset)
        h, c = split_state(state)
        ((out * torch.randn(out.shape, generator=gen)).sum() + (h if c is None else c).sum()).backward()
        records.append([out.detach(), x.grad] + [p.grad.clone() for p in lstm.parameters()])
    return records


@needs_fused
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstmp"])
@pytest.mark.parametrize("history", ["activations", "states", "checkpoints"])
def test_fused_equals_stepwise_in_every_history_mode_with_artbp(history, stepwise_cpu, cell):
    artbp = ARTBP(cap=12, c=0.3)
    chunks, resets = make_stream([3, 5, 4, 5], 4, 6, torch.float32, "cpu", reset_prob=0.2, seed=2)

    def run():
        torch.manual_seed(1)
        lstm = make_rnn(cell, 6, 70, 2, k2=5, artbp=artbp, history=history, dtype=torch.float32)
        return _stream(lstm, chunks, resets, artbp)
    fused, step = run(), stepwise_cpu(run)
    for a_chunk, b_chunk in zip(fused, step):
        for a, b in zip(a_chunk, b_chunk):
            assert rel_err(a, b) <= TOLERANCE[torch.float32]


@needs_fused
def test_fused_packed_sequence_holds_rows(stepwise_cpu):
    seqs = [torch.randn(n, 3, generator=torch.Generator().manual_seed(n)) for n in (5, 2, 4)]

    def run():
        torch.manual_seed(3)
        lstm = TruncatedLSTM(3, 40, 1, dtype=torch.float32)
        packed = pack_sequence(seqs, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        (out.data.square().sum() + h.sum()).backward()
        return [out.data.detach(), h.detach()] + [p.grad for p in lstm.parameters()]
    for a, b in zip(run(), stepwise_cpu(run)):
        assert rel_err(a, b) <= TOLERANCE[torch.float32]


def _train(updates, modify):
    """BPTT(4, 8) at H = 64 with a weight change after every chunk; per chunk out and grads."""
    torch.manual_seed(4)
    lstm = TruncatedLSTM(8, 64, 1, k2=8, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    state, records = None, []
    for _ in range(updates):
        out, state = lstm(torch.randn(4, 3, 8, generator=gen), state)
        lstm.zero_grad()
        out.pow(2).sum().backward()
        records.append([out.detach().clone()] + [p.grad.clone() for p in lstm.parameters()])
        modify(lstm)
    return records


def _optimizer_step(lstm):
    with torch.no_grad():
        for p in lstm.parameters():
            p.sub_(0.5 * p.grad)


def _data_step(lstm):  # bypasses the version counter: only the cache's fingerprint sees it
    for p in lstm.parameters():
        p.data.copy_(p.data * 0.9 + 0.01)


def _one_element_step(lstm):  # a value the fingerprint does not sample: only the version sees it
    with torch.no_grad():
        lstm.weight_hh_l0[0, 1] += 0.5


@needs_fused
@pytest.mark.parametrize("modify", [_optimizer_step, _data_step, _one_element_step],
                         ids=["optimizer", "dot_data", "one_element"])
def test_weight_changes_repack_the_cached_weight(modify, stepwise_cpu):
    module = _backend.load()
    before = module.cpu_weight_packs_made()
    fused = _train(5, modify)
    # a forward and a backward pack per chunk: the weight changed after every one
    assert module.cpu_weight_packs_made() - before == 2 * 5
    step = stepwise_cpu(lambda: _train(5, modify))
    for i, (a_chunk, b_chunk) in enumerate(zip(fused, step)):
        for a, b in zip(a_chunk, b_chunk):
            assert rel_err(a, b) <= TOLERANCE[torch.float32], f"chunk {i}"


@needs_fused
def test_unchanged_weights_are_packed_once():
    module = _backend.load()
    lstm = TruncatedLSTM(4, 48, 1, k2=6, dtype=torch.float32)
    state = None
    before = module.cpu_weight_packs_made()
    for _ in range(4):
        out, state = lstm(torch.randn(3, 2, 4), state)
        out.sum().backward()
    assert module.cpu_weight_packs_made() - before == 2  # forward and backward layouts
    # a new module whose weight may land at the freed address is packed anew
    del lstm, out, state
    other = TruncatedLSTM(4, 48, 1, k2=6, dtype=torch.float32)
    ref = TruncatedLSTM(4, 48, 1, k2=6, dtype=torch.float32)
    ref.load_state_dict(other.state_dict())
    x = torch.randn(3, 2, 4)
    _backend.set_cpu_path("stepwise")
    try:
        expected = ref(x)[0]
    finally:
        _backend.set_cpu_path("auto")
    assert rel_err(other(x)[0], expected) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_input_gradient_is_skipped_where_not_needed(dtype):
    """window_backward(grad_input=False) returns an empty grad_x; the weights' gradients are the
    same as with it."""
    torch.manual_seed(6)
    lstm = TruncatedLSTM(5, 24, 2, k2=7, dtype=dtype)
    chunks, _ = make_stream([3, 4], 2, 5, dtype, "cpu", seed=3)
    grads = []
    for needs_x in (True, False):
        state, per_chunk = None, []
        for x in chunks:
            x = x.clone().requires_grad_(needs_x)
            lstm.zero_grad()
            out, state = lstm(x, state)
            out.sum().backward()
            assert (x.grad is not None) == needs_x
            per_chunk.append([p.grad.clone() for p in lstm.parameters()])
        grads.append(per_chunk)
    for a_chunk, b_chunk in zip(*grads):
        for a, b in zip(a_chunk, b_chunk):
            assert torch.equal(a, b)
    ops = _backend.ops()
    H, layers = 4, 1
    w = [torch.randn(4 * H, 3), torch.randn(4 * H, H)]
    ring = [torch.zeros(layers, 4, 2, 4 * H), torch.zeros(layers, 4, 2, H), torch.zeros(layers, 4, 2, H),
            torch.zeros(4, 2, 3), torch.zeros(4, 2, dtype=torch.uint8), torch.zeros(0)]
    zeros = torch.zeros(layers, 2, H)
    skipped = ops.window_backward(torch.ones(2, 2, H), zeros, zeros, w, False, *ring, zeros, zeros,
                                  2, 1, None, 0, 1, False)
    kept = ops.window_backward(torch.ones(2, 2, H), zeros, zeros, w, False, *ring, zeros, zeros,
                               2, 1, None, 0, 1, True)
    assert skipped[0].numel() == 0 and kept[0].shape == (2, 2, 3)


def test_mkldnn_off_falls_back_to_the_stepwise_path():
    torch.backends.mkldnn.enabled = False
    try:
        assert "mkldnn.enabled is False" in _backend.cpu_fused_reason() or not FUSED
        torch.manual_seed(0)
        lstm = TruncatedLSTM(3, 40, 1, dtype=torch.float32)
        chunks, resets = make_stream([3, 4], 2, 3, torch.float32, "cpu", seed=1)
        before = _backend.load().cpu_weight_packs_made()
        ours, ref = run_both(lstm, chunks, resets, [5, 5])
        assert _backend.load().cpu_weight_packs_made() == before
        assert_records_close(ours, ref, torch.float32)
    finally:
        torch.backends.mkldnn.enabled = True


def test_cpu_path_setting_and_environment():
    with pytest.raises(ValueError, match="CPU path must be 'auto' or 'stepwise'"):
        _backend.set_cpu_path("fused")
    code = "from tbptt_cuda import _backend; print(_backend.cpu_path())"
    env = dict(os.environ, TBPTT_CPU_PATH="stepwise")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "stepwise", out.stderr
    env["TBPTT_CPU_PATH"] = "fast"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "TBPTT_CPU_PATH" in out.stderr


@needs_fused
def test_phase_timing_is_off_by_default_and_counts_each_phase_when_on():
    """cpu_fused_profile (bench/profile_cpu_step.py's source): nothing counted while off; when
    on, every phase of a fused forward and backward has run for some time, and the layers' wall
    time covers thread 0's phases."""
    lib = _backend.load()
    lstm = TruncatedLSTM(8, 64, k2=6)
    x = torch.randn(6, 4, 8)

    def step():
        out, _ = lstm(x)
        out.sum().backward()
    lib.cpu_fused_profile(False)
    step()
    assert all(v == 0 for v in lib.cpu_fused_profile(True).values())
    step()
    seen = lib.cpu_fused_profile(False)
    assert set(seen) == {"pack", "recurrent_product", "element_pass", "barrier",
                         "forward_layers", "backward_layers"}
    assert all(seen[k] > 0 for k in ("recurrent_product", "element_pass", "forward_layers",
                                     "backward_layers"))
    inside = seen["pack"] + seen["recurrent_product"] + seen["element_pass"] + seen["barrier"]
    assert inside <= seen["forward_layers"] + seen["backward_layers"]
    step()
    assert all(v == 0 for v in lib.cpu_fused_profile(False).values())


@needs_fused
def test_fused_layers_up_to_512_units_the_stepwise_path_above():
    """kMaxFusedHidden: W_hh over 4 MiB (H > 512) streams from memory on either path, where the
    stepwise path measured faster; both sides of the limit are run."""
    module = _backend.load()
    for hidden, fused in ((512, True), (513, False)):
        lstm = TruncatedLSTM(3, hidden, k2=2, dtype=torch.float32)
        before = module.cpu_weight_packs_made()
        out, _ = lstm(torch.randn(2, 2, 3))
        out.sum().backward()
        assert (module.cpu_weight_packs_made() > before) == fused, hidden
