"""The CPU GEMM libraries: oneDNN (float32 default) and ATen/MKL give the reference's results,
at sizes where the per-step products take each of their forms (ATen below the size threshold,
oneDNN packed and transposed above it)."""
import pytest
import torch

from tbptt_cuda import TruncatedLSTM, _backend, build_info

from helpers import assert_records_close, make_stream, rel_err, run_both

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["onednn", "aten"])
def cpu_gemm(request):
    """The per-step CPU path (float32 otherwise runs the fused layers) on one GEMM library."""
    before = _backend.cpu_gemm("float32")
    _backend.set_cpu_gemm(request.param)
    _backend.set_cpu_path("stepwise")
    yield request.param
    _backend.set_cpu_path("auto")
    _backend.set_cpu_gemm(before)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_default_is_onednn_for_float32_only():
    assert _backend.cpu_gemm("float32") == "onednn"
    assert _backend.cpu_gemm("float64") == "aten"
    assert build_info()["cpu_gemm"] == "onednn"


def test_mkldnn_disabled_falls_back_to_aten():
    torch.backends.mkldnn.enabled = False
    try:
        assert _backend.cpu_gemm("float32") == "aten"
    finally:
        torch.backends.mkldnn.enabled = True


def test_unknown_library_is_refused():
    with pytest.raises(RuntimeError, match="must be 'onednn' or 'aten'"):
        _backend.set_cpu_gemm("cublas")


# hidden 5: every product below the per-step size threshold; hidden 192: W_hh has
# 4 * 192 * 192 = 147,456 elements, above it, so the forward step runs transposed and the
# backward step on a packed weight.
@pytest.mark.parametrize("hidden", [5, 192], ids=lambda h: f"H{h}")
def test_cpu_gemm_matches_reference(cpu_gemm, hidden):
    torch.manual_seed(0)
    lstm = TruncatedLSTM(7, hidden, 2, dtype=torch.float32)
    chunks, resets = make_stream([4, 3, 4, 2], 3, 7, torch.float32, "cpu", reset_prob=0.15,
                                 seed=5)
    ours, ref = run_both(lstm, chunks, resets, [6, 6, 6, 6], use_state=True)
    assert_records_close(ours, ref, torch.float32)


def test_libraries_agree_on_a_long_window(cpu_gemm):
    """BPTT(8, 24) at H = 256 wraps the ring: both libraries give the reference's gradients."""
    torch.manual_seed(1)
    lstm = TruncatedLSTM(16, 256, 1, dtype=torch.float32)
    chunks, resets = make_stream([8] * 5, 2, 16, torch.float32, "cpu", seed=6)
    ours, ref = run_both(lstm, chunks, resets, [24] * 5)
    assert_records_close(ours, ref, torch.float32)


def _train_stream(library, steps=6):
    """A short BPTT(4, 8) run with an optimizer step after every chunk, on one library."""
    before = _backend.cpu_gemm("float32")
    _backend.set_cpu_gemm(library)
    _backend.set_cpu_path("stepwise")
    try:
        torch.manual_seed(2)
        lstm = TruncatedLSTM(8, 192, 2, k2=8, dtype=torch.float32)
        opt = torch.optim.SGD(lstm.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(3)
        state, outs, grads = None, [], []
        for _ in range(steps):
            x = torch.randn(4, 3, 8, generator=gen)
            out, state = lstm(x, state)
            opt.zero_grad()
            out.pow(2).sum().backward()
            outs.append(out.detach().clone())
            grads.append([p.grad.clone() for p in lstm.parameters()])
            opt.step()
        return outs, grads
    finally:
        _backend.set_cpu_path("auto")
        _backend.set_cpu_gemm(before)


def test_weights_updated_in_place_are_seen():
    """After every optimizer step (weights changed in place, same addresses) oneDNN's results
    follow the new weights: no stale packed or cached copy. Both libraries agree chunk by chunk."""
    onednn, aten = _train_stream("onednn"), _train_stream("aten")
    for i, (a, b) in enumerate(zip(onednn[0], aten[0])):
        assert rel_err(a, b) <= 1e-5, f"chunk {i}: outputs differ"
    for i, (ga, gb) in enumerate(zip(onednn[1], aten[1])):
        for a, b in zip(ga, gb):
            assert rel_err(a, b) <= 1e-4, f"chunk {i}: gradients differ"
