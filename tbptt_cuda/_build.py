"""Build facts shared by setup.py and the just-in-time fallback in _backend.py.

Imports nothing of torch at module level, so setup.py can fix CUDA_HOME before
torch.utils.cpp_extension reads it.
"""
import glob
import os
import shutil

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE_DIR)
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_ARCH_LIST = "9.0+PTX"
_CONFIG_FILE = os.path.join(PACKAGE_DIR, "_build_config.py")


def find_cuda_home():
    """The CUDA toolkit folder, found by where include/cuda_runtime.h really is.

    On these machines `nvcc` on PATH may be a small wrapper script outside the toolkit, so
    torch's default (the folder above nvcc) finds no headers.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "include", "cuda_runtime.h")):
            return folder
    return None


def prepare_cuda_environment():
    """Sets CUDA_HOME to the real toolkit and a default TORCH_CUDA_ARCH_LIST."""
    home = find_cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)


def want_cuda():
    """CUDA sources are built when nvcc and a CUDA build of torch are there, or FORCE_CUDA=1."""
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    home = find_cuda_home()
    return bool(torch.version.cuda) and home is not None and os.path.isfile(
        os.path.join(home, "bin", "nvcc")
    )


def want_emulation():
    """The CUDA kernels' source also built for the SIMT emulator (CPU), unless
    TBPTT_NO_EMULATION=1. Needs no CUDA toolkit."""
    return os.environ.get("TBPTT_NO_EMULATION", "0") != "1"


def sources(with_cuda, with_emulation=None):
    if with_emulation is None:
        with_emulation = want_emulation()
    files = [os.path.join(CSRC, name) for name in ("ops.cpp", "lstm_driver.cpp", "aten_gemm.cpp", "persistent_dispatch.cpp")]
    files += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    if with_emulation:
        files += sorted(glob.glob(os.path.join(CSRC, "emulation", "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
        files += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    return files


def define_macros(with_cuda, with_emulation=None):
    if with_emulation is None:
        with_emulation = want_emulation()
    return ([("TBPTT_WITH_CUDA", None)] if with_cuda else []) + (
        [("TBPTT_WITH_EMULATION", None)] if with_emulation else [])


def compile_args(with_cuda):
    # -ffast-math (compile only, never at link: no crtfastmath in a shared library) lets the
    # CPU pointwise loop call glibc's vector exp/tanh. The emulated kernels' translation units
    # switch it off again (#pragma GCC optimize("no-fast-math")): IEEE like nvcc's build.
    # -fopenmp: at::parallel_for (an inline template, compiled here) forks only where _OPENMP is
    # defined, and the fused CPU layer runs one OpenMP team per chunk; it binds to the libgomp
    # torch has already loaded (the same soname), so there is one OpenMP runtime.
    args = {"cxx": ["-O3", "-std=c++17", "-ffast-math", "-fopenmp"]}
    if with_cuda:
        args["nvcc"] = ["-O3", "-std=c++17", "-lineinfo"]  # IEEE exp/tanh: held to 1e-5 vs the reference
    return args


def link_args():
    """Linker flags of the extension (setup.py and the just-in-time build)."""
    return ["-fopenmp"]


def write_build_config(with_cuda):
    """Records how the extension was built (read by tbptt_cuda.build_info())."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST) if with_cuda else ""
    with open(_CONFIG_FILE, "w") as f:
        f.write("# Written by the build; not tracked.\n")
        f.write(f"CUDA = {with_cuda!r}\nCUDA_ARCHS = {archs!r}\n")
        f.write(f"CUDA_EMULATION = {want_emulation()!r}\n")
