"""Build of tbptt_cuda._C: the C++ CPU sources always, the CUDA sources when nvcc and a CUDA
build of torch are present (or FORCE_CUDA=1). Never gated on torch.cuda.is_available(): build
hosts have no GPU.

Environment: TORCH_CUDA_ARCH_LIST (default "9.0+PTX", the H100/H200), MAX_JOBS (parallel
compile jobs, read by torch's ninja build), FORCE_CUDA=1 / FORCE_CPU=1, TBPTT_NO_EMULATION=1
(leave out the CUDA kernels' second build, for the SIMT emulator; CI and `make test` build it).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tbptt_cuda"))
import _build  # noqa: E402  (tbptt_cuda/_build.py: shared with the JIT fallback)

_build.prepare_cuda_environment()  # before torch.utils.cpp_extension reads CUDA_HOME

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
with_cuda = _build.want_cuda()
sources = [os.path.relpath(p, ROOT) for p in _build.sources(with_cuda)]
kwargs = dict(
    name="tbptt_cuda._C",
    sources=sources,
    include_dirs=[_build.CSRC],
    extra_compile_args=_build.compile_args(with_cuda),
    extra_link_args=_build.link_args(),
    define_macros=_build.define_macros(with_cuda),
)
extension = CUDAExtension(**kwargs) if with_cuda else CppExtension(**kwargs)
_build.write_build_config(with_cuda)

setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
