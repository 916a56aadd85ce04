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
        _module = module
    return _module


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
        defines = ["-DTBPTT_WITH_CUDA"] if with_cuda else []
        module = load_extension(
            name="tbptt_cuda_jit",
            sources=_build.sources(with_cuda),
            extra_include_paths=[_build.CSRC],
            extra_cflags=flags["cxx"] + defines,
            extra_cuda_cflags=flags.get("nvcc", []) + defines,
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


def cuda_archs():
    load()
    try:
        from . import _build_config

        return _build_config.CUDA_ARCHS if _build_config.CUDA else ""
    except ImportError:
        return os.environ.get("TORCH_CUDA_ARCH_LIST", "") if compiled_with_cuda() else ""
