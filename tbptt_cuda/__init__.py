"""tbptt_cuda: LSTMs and GRUs trained with truncated backpropagation through time,
TBPTT(k1, k2), at memory set by k2, not by the sequence length."""
from .artbp import ARTBP
from .emulation import EmulationStats, emulate_cuda
from .module import GRUState, LSTMState, TruncatedGRU, TruncatedLSTM

__version__ = "0.1.0"  # the one source of the version (pyproject.toml reads it)
__all__ = ["TruncatedLSTM", "LSTMState", "TruncatedGRU", "GRUState", "ARTBP", "build_info",
           "emulate_cuda", "EmulationStats", "set_cuda_path", "cuda_path", "cuda_plan"]

_CUDA_PATHS = ("auto", "persistent", "stepwise")


def set_cuda_path(path):
    """Which path runs the recurrence on a CUDA GPU, process-wide:

    - "auto" (default): the persistent kernels (one launch per layer per chunk and per window,
      W_hh resident on chip) where the plan fits the GPU and the rule prefers them, else the
      stepwise path. The rule (csrc/persistent_dispatch.cpp, from bench/gpu_model.py's
      predictions, to be retuned on a GPU): float32 B <= 64, B*H <= 512, chunks/windows of
      11+ steps; float64 B <= 32, B*H <= 768, 37+; float16/bfloat16 B <= 256, B*H <= 1024, 10+;
    - "persistent": always; a RuntimeError where no plan fits the shape;
    - "stepwise": a GEMM and a fused pointwise kernel per step.

    Both give the same results up to rounding. Also settable with TBPTT_CUDA_PATH before the
    first use. Emulated runs take emulate_cuda(path=...) instead.
    """
    from . import _backend

    if path not in _CUDA_PATHS:
        raise ValueError(f"set_cuda_path: path must be one of {_CUDA_PATHS}, got {path!r}")
    _backend.load().set_cuda_path(path)


def cuda_path():
    """The CUDA path setting: "auto", "persistent" or "stepwise"."""
    from . import _backend

    return _backend.load().cuda_path()


def cuda_plan(hidden, batch, dtype=None, cell="lstm", proj_size=None):
    """The persistent kernels' plan for one layer of ``cell`` ("lstm", "gru", or "lstmp" with
    ``proj_size`` P: default hidden // 2) with ``hidden`` units and ``batch`` rows on the
    current CUDA device: a dict with usable, reason, sms and the forward / backward partitions
    (blocks, units, threads, batch_tile, k_split, k_chunk, shared_bytes). Needs a GPU; the
    emulated device's: tbptt_cuda.emulation.plan."""
    import torch

    from . import _backend

    if not torch.cuda.is_available():
        raise RuntimeError("cuda_plan: no CUDA GPU here (see tbptt_cuda.emulation.plan)")
    dtype = torch.float32 if dtype is None else dtype
    proj = 0 if cell != "lstmp" else int(hidden) // 2 if proj_size is None else int(proj_size)
    return _backend.load().persistent_plan("cuda", int(hidden), int(batch),
                                           str(dtype).replace("torch.", ""), cell, proj)


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
        "cuda_binaries": _backend.cuda_binaries(),
        "cuda_emulation": _backend.compiled_with_emulation(),
        "cuda_available": torch.cuda.is_available(),
        "built_just_in_time": _backend.built_just_in_time(),
        "cpu_gemm": _backend.cpu_gemm("float32"),
    }
