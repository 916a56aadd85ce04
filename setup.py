"""Build of tbptt_cuda._C: the C++ CPU sources always, the CUDA sources when nvcc and a CUDA
build of torch are present (or FORCE_CUDA=1). Never gated on torch.cuda.is_available(): build
hosts have no GPU.

Environment: TORCH_CUDA_ARCH_LIST (default: tbptt_cuda/_build.py's DEFAULT_ARCH_LIST), MAX_JOBS
(parallel compile jobs, read by torch's ninja build), FORCE_CUDA=1 / FORCE_CPU=1,
TBPTT_NO_EMULATION=1 (leave out the CUDA kernels' second build, for the SIMT emulator; CI and
`make test` build it).

The extension compiles against the torch of the environment it is built in, so the build
needs that torch installed first and must not run in an isolated build environment (pip would
install a torch of its own there, of another version or CUDA flavour):

    pip install --no-build-isolation tbptt_cuda-<version>.tar.gz
    python -m build --no-isolation            # (make dist) sdist and wheel into dist/
"""
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

TORCH_MISSING = """\
tbptt_cuda: cannot build: torch is not importable in the build environment ({error}).
The extension is compiled against the torch it will run with, so install torch first
(the release this version is tested with: torch==2.11.0), then build in that same
environment without build isolation:

    pip install torch==2.11.0        # or the CUDA/CPU build of your choice
    pip install --no-build-isolation tbptt_cuda-<version>.tar.gz    # or: pip install --no-build-isolation .
    python -m build --no-isolation   # to make the sdist and the wheel (make dist)

pip's default isolated build runs in a fresh environment without your torch; letting it
install one there would compile against a torch other than the one you use."""


def require_torch():
    """Exits with TORCH_MISSING (what to install and how to build) when torch is not importable."""
    try:
        import torch  # noqa: F401
    except ImportError as error:
        sys.exit(TORCH_MISSING.format(error=error))


require_torch()

sys.path.insert(0, os.path.join(ROOT, "tbptt_cuda"))
import _build  # noqa: E402  (tbptt_cuda/_build.py: shared with the JIT fallback)

_build.prepare_cuda_environment()  # before torch.utils.cpp_extension reads CUDA_HOME

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

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


class BuildWithConfig(BuildExtension.with_options(use_ninja=True)):
    """build_ext that also records how the extension was built (tbptt_cuda/_build_config.py,
    read by build_info()): in the source tree (editable installs) and, for a wheel, next to the
    compiled module in the build folder (build_py ran before this, so it may have copied a stale
    one). Written only when the extension is built: making an sdist leaves the tree alone."""

    def run(self):
        _build.write_build_config(with_cuda)
        super().run()
        if not self.inplace:
            target = os.path.join(self.build_lib, "tbptt_cuda")
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(_build._CONFIG_FILE, os.path.join(target, "_build_config.py"))


setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildWithConfig},
)
