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
# The default TORCH_CUDA_ARCH_LIST: cubins for Ampere (A100: 8.0; A10, RTX 30: 8.6), Ada (L4,
# RTX 40: 8.9) and Hopper (H100, H200: 9.0), and 9.0 PTX that newer GPUs JIT-compile. The
# kernels need 8.0 (mma.sync m16n8k16 on bfloat16); older GPUs get a clear error at first use.
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
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


def arch_list_targets(arch_list=None):
    """(cubin architectures, PTX architectures) of a TORCH_CUDA_ARCH_LIST, as integers
    major * 10 + minor: "8.0;8.6;8.9;9.0+PTX" -> ([80, 86, 89, 90], [90])."""
    arch_list = DEFAULT_ARCH_LIST if arch_list is None else arch_list
    cubins, ptx = [], []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        version = item.split("+")[0]
        major, minor = version.split(".")
        value = int(major) * 10 + int(minor)
        cubins.append(value)
        if item.endswith("+PTX"):
            ptx.append(value)
    return cubins, ptx


def gencode_flags(arch_list=None):
    """nvcc -gencode flags of an arch list, as torch.utils.cpp_extension writes them."""
    cubins, ptx = arch_list_targets(arch_list)
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in cubins]
    flags += [f"-gencode=arch=compute_{a},code=compute_{a}" for a in ptx]
    return flags


_FATBIN_MAGIC = 0xBA55ED50


def cuda_binary_archs(path):
    """What a compiled object or shared library carries for the GPU: {"sm": sorted cubin
    architectures, "ptx": sorted PTX architectures} (major * 10 + minor), read from its ELF
    section .nv_fatbin (the same list as `cuobjdump --list-elf / --list-ptx`, without the
    toolkit's binary). Empty lists where there is no such section."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path}: not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index):  # (name offset, file offset, size)
        base = shoff + index * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    fatbin = b""
    for i in range(shnum):
        name, offset, size = section(i)
        if data[names_at + name:data.index(b"\0", names_at + name)] == b".nv_fatbin":
            fatbin = data[offset:offset + size]
    sm, ptx = set(), set()
    at = 0
    # Fat binaries one after another (one per CUDA translation unit), each 8-byte aligned:
    # header {u32 magic, u16 version, u16 header size, u64 payload size}, then entries
    # {u16 kind (1 PTX, 2 ELF cubin), u16 version, u32 header size, u64 payload size, ...,
    # u32 architecture at byte 28}.
    while at + 16 <= len(fatbin):
        magic, _, header, total = struct.unpack_from("<IHHQ", fatbin, at)
        if magic != _FATBIN_MAGIC:
            at += 8
            continue
        entry, end = at + header, at + header + total
        while entry + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, entry)
            arch, = struct.unpack_from("<I", fatbin, entry + 28)
            (ptx if kind == 1 else sm).add(arch)
            entry += entry_header + payload
        at = end
    return {"sm": sorted(sm), "ptx": sorted(ptx)}
