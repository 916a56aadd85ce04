"""tbptt_cuda: LSTMs trained with truncated backpropagation through time, TBPTT(k1, k2), at
memory set by k2, not by the sequence length."""
from .artbp import ARTBP
from .emulation import EmulationStats, emulate_cuda
from .module import LSTMState, TruncatedLSTM

__version__ = "0.1.0"
__all__ = ["TruncatedLSTM", "LSTMState", "ARTBP", "build_info", "emulate_cuda", "EmulationStats"]


def build_info():
    """How the extension was built: {'cuda': bool, 'cuda_archs': str, 'torch': str,
    'cuda_emulation': bool (the CUDA kernels' source also built for the SIMT emulator), ...}."""
    import torch

    from . import _backend

    _backend.load()
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": _backend.compiled_with_cuda(),
        "cuda_archs": _backend.cuda_archs(),
        "cuda_emulation": _backend.compiled_with_emulation(),
        "cuda_available": torch.cuda.is_available(),
        "built_just_in_time": _backend.built_just_in_time(),
        "cpu_gemm": _backend.cpu_gemm("float32"),
    }
