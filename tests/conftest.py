import pytest
import torch

import tbptt_cuda


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer-running test")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "emulated: csrc/cuda's kernels under the SIMT emulator")
    config.addinivalue_line("markers", "no_kernels: a device test that launches no kernel")


_EMULATION = tbptt_cuda.build_info()["cuda_emulation"]

_NO_EMULATION = pytest.mark.skipif(
    not _EMULATION, reason="built without the emulated kernels (TBPTT_NO_EMULATION=1)")

# The backends: the CPU path; csrc/cuda's kernels run on CPU tensors by the SIMT emulator
# (every commit, no GPU needed), each CUDA path forced ("emulated": the persistent kernels,
# "emulated_stepwise": the per-step ones; "auto"'s choice between them has its own tests in
# test_persistent.py); and the real GPU on the path "auto" takes (skipped without one).
DEVICES = [
    "cpu",
    pytest.param("emulated", marks=[pytest.mark.emulated, _NO_EMULATION]),
    pytest.param("emulated_stepwise", marks=[pytest.mark.emulated, _NO_EMULATION]),
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]),
]


@pytest.fixture(params=["lstm", "lstmp", "gru"])
def cell(request):
    """The recurrent cell of a test run for all three: TruncatedLSTM ("lstm"), TruncatedLSTM
    with proj_size ("lstmp"), TruncatedGRU ("gru"); helpers.make_rnn(cell, ...) builds the
    module."""
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    """The tensors' device. For "emulated" (and "emulated_stepwise"), CPU tensors inside
    tbptt_cuda.emulate_cuda(path="persistent" or "stepwise"); the test must then have launched
    our kernels (unless marked no_kernels)."""
    if not request.param.startswith("emulated"):
        yield torch.device(request.param)
        return
    path = "stepwise" if request.param == "emulated_stepwise" else "persistent"
    with tbptt_cuda.emulate_cuda(path=path) as stats:
        yield torch.device("cpu")
    if request.node.get_closest_marker("no_kernels") is None:
        assert stats.launches, "the emulated backend launched no kernel in this test"


@pytest.fixture(autouse=True)
def _seed_and_tf32():
    torch.manual_seed(1234)
    # float32 comparisons on CUDA are held to 1e-5: no TF32 in the GEMMs.
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and OpenMP spinning on a busy CPU costs 100x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
