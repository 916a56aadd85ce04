"""Loads the compiled ops (``tbptt_cuda._C``, registering ``torch.ops.tbptt``).

When the compiled module is missing (a plain checkout, no ``pip install``), it is built just
in time with torch.utils.cpp_extension.load (ninja), with a message saying so; if that fails,
the error names the fix.
"""
import os
import sys

import torch

from . import _build

_module = None
_jit_built = False


def load():
    """Returns the extension module, importing or building it once."""
    global _module
    if _module is None:
        try:
            from . import _C as module
        except ImportError as error:
            module = _build_just_in_time(error)
        _register_fakes()
        if os.environ.get("TBPTT_CPU_GEMM"):
            module.set_cpu_gemm(os.environ["TBPTT_CPU_GEMM"])
        if os.environ.get("TBPTT_CPU_PATH"):
            try:
                module.set_cpu_path(os.environ["TBPTT_CPU_PATH"])
            except ValueError as error:
                raise ValueError(f"TBPTT_CPU_PATH: {error}") from error
        if os.environ.get("TBPTT_CUDA_PATH"):
            try:
                module.set_cuda_path(os.environ["TBPTT_CUDA_PATH"])
            except ValueError as error:
                raise ValueError(f"TBPTT_CUDA_PATH: {error}") from error
        _module = module
    return _module


def _accumulation_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# The ops' `cell` argument: 0 lstm, 1 lstmp, 2 gru (tbptt_cuda/function.py CELL_CODES).
_GRU = 2


def _cell_width(cell, weights):
    """Units of the cell state c: H = w_ih's rows / 4 for the LSTMs (lstmp included, whose h
    is P wide), 0 for the GRU (a zero-width c)."""
    return 0 if cell == _GRU else weights[0].shape[0] // 4


def _register_fakes():
    """Shape-only implementations, for torch.compile / FakeTensor / opcheck. `cell` is the ops'
    trailing argument (0 lstm, 1 lstmp, 2 gru). O, the size of h and of the output, is the
    columns of w_hh for every cell: [4H, H] (lstm), [4H, P] (lstmp), [3H, H] (gru)."""

    @torch.library.register_fake("tbptt::chunk_forward")
    def _chunk_forward_fake(x, h0, c0, flags, weights, has_bias, dropout_masks, ring_gates,
                            ring_cell, ring_hidden, ring_input, ring_flags, ring_mask,
                            first_step, record, history_mode=0, checkpoint_every=1, cell=0):
        L, B, _ = x.shape
        layers, O = h0.shape[0], weights[1].shape[1]
        return (x.new_empty(L, B, O), x.new_empty(layers, B, O),
                x.new_empty(layers, B, _cell_width(cell, weights),
                            dtype=_accumulation_dtype(x.dtype)))

    @torch.library.register_fake("tbptt::window_backward")
    def _window_backward_fake(grad_out, grad_h_n, grad_c_n, weights, has_bias, ring_gates,
                              ring_cell, ring_hidden, ring_input, ring_flags, ring_mask,
                              h_init, c_init, window_len, last_step, carry_scales=None,
                              history_mode=0, checkpoint_every=1, grad_input=True, cell=0):
        L, B, O = grad_out.shape  # O: the size of h (P for lstmp)
        layers = grad_h_n.shape[0]
        return (grad_out.new_empty(L, B, weights[0].shape[1]) if grad_input
                else grad_out.new_empty(0),
                grad_out.new_empty(layers, B, O),
                grad_out.new_empty(layers, B, _cell_width(cell, weights),
                                   dtype=_accumulation_dtype(grad_out.dtype)),
                [torch.empty_like(w) for w in weights])


def ops():
    """torch.ops.tbptt, after the extension is loaded."""
    load()
    return torch.ops.tbptt


def built_just_in_time():
    return _jit_built


def _build_just_in_time(import_error):
    global _jit_built
    print(
        f"tbptt_cuda: compiled extension not found ({import_error}); building it just in time "
        "with torch.utils.cpp_extension.load (ninja). This takes a few minutes once.",
        file=sys.stderr,
    )
    _build.prepare_cuda_environment()
    try:
        from torch.utils.cpp_extension import load as load_extension

        with_cuda = _build.want_cuda()
        flags = _build.compile_args(with_cuda)
        defines = [f"-D{name}" for name, _ in _build.define_macros(with_cuda)]
        module = load_extension(
            name="tbptt_cuda_jit",
            sources=_build.sources(with_cuda),
            extra_include_paths=[_build.CSRC],
            extra_cflags=flags["cxx"] + defines,
            extra_cuda_cflags=flags.get("nvcc", []) + defines,
            extra_ldflags=_build.link_args(),
            with_cuda=with_cuda,
        )
        _build.write_build_config(with_cuda)
    except Exception as error:  # noqa: BLE001  (any build failure gets the same advice)
        raise ImportError(
            "tbptt_cuda: the C++ extension is not built and building it just in time failed "
            f"({type(error).__name__}: {error}). Fix: from the repository root run "
            "`pip install --no-build-isolation -e .` (needs g++, ninja and torch==2.11.0; "
            "FORCE_CPU=1 skips the CUDA sources), or `make setup`."
        ) from error
    _jit_built = True
    return module


def compiled_with_cuda():
    return bool(load().compiled_with_cuda())


def compiled_with_emulation():
    return bool(load().compiled_with_emulation())


def emulation_active():
    """Whether CPU tensors go through the emulated CUDA kernels now (tbptt_cuda.emulate_cuda)."""
    module = load()
    return bool(module.compiled_with_emulation() and module.emulation_active())


def cpu_gemm(dtype="float32"):
    """The library the CPU GEMMs use now for that dtype: 'onednn' or 'aten' (MKL)."""
    return load().cpu_gemm(dtype)


def set_cpu_gemm(name):
    """Selects the CPU GEMM library for float32: 'onednn' (the default where torch has it) or
    'aten'. Also settable with TBPTT_CPU_GEMM=aten|onednn before the first use."""
    load().set_cpu_gemm(name)


def cpu_path():
    """The CPU float32 path setting: 'auto' (the fused layers where available) or 'stepwise'."""
    return load().cpu_path()


def set_cpu_path(name):
    """'auto' (default): float32 and bfloat16 layers run fused (csrc/cpu/fused_cpu.cpp) where torch has
    brgemm and oneDNN is enabled; 'stepwise': a GEMM and a pointwise pass per step, for
    comparison. Also settable with TBPTT_CPU_PATH before the first use."""
    load().set_cpu_path(name)


def cpu_fused_reason(dtype="float32"):
    """'' where the fused CPU layers run for `dtype` now ("float32", "bfloat16"; a torch.dtype
    is accepted too), else why not (float16 and float64 always name the path they take)."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    module = load()
    if not module.cpu_fused_compiled():
        return "this build has no cpublas::brgemm, OpenMP or x86-64"
    return module.cpu_fused_unavailable_reason(dtype)


def cuda_binaries():
    """The GPU code the loaded extension carries: {"sm": [80, 86, ...], "ptx": [90]} (compute
    capabilities with a cubin; PTX that newer GPUs compile at load), read from its fat binary;
    empty lists without CUDA."""
    from . import _build

    if not compiled_with_cuda():
        return {"sm": [], "ptx": []}
    return _build.cuda_binary_archs(load().__file__)


def cuda_archs():
    load()
    try:
        from . import _build_config

        return _build_config.CUDA_ARCHS if _build_config.CUDA else ""
    except ImportError:
        return os.environ.get("TORCH_CUDA_ARCH_LIST", "") if compiled_with_cuda() else ""
