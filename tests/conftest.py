import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer-running test")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


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
