"""Compiles every kernel source for each architecture of the default build
(tbptt_cuda/_build.py DEFAULT_ARCH_LIST: sm_80, sm_86, sm_89, sm_90 and sm_90 PTX) with
`nvcc -Xptxas -v` (no GPU needed) and fails on a register spill, on static shared memory over
the limit, on a kernel using more registers per thread than its launcher declares in its
simt::KernelSpec (the figure the emulator's occupancy and the persistent path's plan rely on)
or than that architecture's register file holds for the kernel's largest block, and on an
object whose fat binary lacks a cubin of the list (read from its .nv_fatbin section, as
`cuobjdump --list-elf` lists it).

    python scripts/check_ptxas.py            # a table per architecture, exit 1 on any violation
Skips (exit 0) where there is no nvcc.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tbptt_cuda"))
import _build  # noqa: E402

ARCHS, PTX_ARCHS = _build.arch_list_targets(_build.DEFAULT_ARCH_LIST)
STATIC_SHARED_LIMIT = 48 * 1024  # static __shared__ (we use none: all shared memory is dynamic)
REGISTERS_PER_SM = 64 * 1024     # every architecture from sm_80 to sm_90
MAX_REGISTERS_PER_THREAD = 255
MAX_BLOCK_THREADS = 256          # the largest block our launchers use (kPersistentMaxThreads)
# PyTorch's nvcc flags for half types, so that the check compiles what the extension compiles.
TORCH_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
               "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
               "--expt-relaxed-constexpr"]

# The self-test kernels are templates used only by the emulator's tests: instantiate the
# correct variants for nvcc here.
SELFTEST_INSTANCES = """
#include "emulation/selftest_kernels.cuh"
namespace selftest { namespace cuda {
template __global__ void rnn_kernel<float, kNone>(const RnnParams);
template __global__ void rnn_kernel<simt::float16, kNone>(const RnnParams);
template __global__ void rnn_kernel<simt::bfloat16, kNone>(const RnnParams);
template __global__ void sum_kernel<kNone>(const SumParams);
template __global__ void axpy_kernel<float>(int, float, const float*, float*);
template __global__ void mma_kernel<simt::bfloat16>(const simt::bfloat16*, const simt::bfloat16*, const float*, float*);
template __global__ void mma_kernel<simt::float16>(const simt::float16*, const simt::float16*, const float*, float*);
template __global__ void barrier_kernel<Round::kSyncGrid>(int, float*);
}}
"""


def declared_budgets():
    """{kernel spec name: registers} from every simt::KernelSpec{"name", registers} in csrc/ and
    tests/cpp/ (the smallest where a name is declared twice)."""
    budgets = {}
    pattern = re.compile(r'KernelSpec(?:\s+\w+)?\s*\{\s*"(\w+)"\s*,\s*(\d+)\s*\}')
    paths = glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True)
    paths += glob.glob(os.path.join(ROOT, "tests", "cpp", "*.*"))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for name, registers in pattern.findall(f.read()):
                budgets[name] = min(budgets.get(name, 1 << 30), int(registers))
    return budgets


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else names


def compile_and_parse(nvcc, source, obj):
    """{(mangled kernel, arch): {spill, registers, shared, stack}} of `source` compiled for
    every architecture of the default list into `obj`."""
    command = [nvcc, *_build.gencode_flags(_build.DEFAULT_ARCH_LIST), "-O3", "-std=c++17",
               *TORCH_FLAGS, f"-I{_build.CSRC}", "-Xptxas", "-v", "-c", source, "-o", obj]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"nvcc failed on {source}:\n{result.stderr}")
    kernels, current = {}, None
    for line in result.stderr.splitlines():
        match = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
        if match:
            current = (match.group(1), int(match.group(2)))
            kernels[current] = {"spill": 0, "registers": 0, "shared": 0, "stack": 0}
            continue
        if current is None:
            continue
        match = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if match:
            kernels[current]["stack"] = int(match.group(1))
            kernels[current]["spill"] = int(match.group(2)) + int(match.group(3))
        match = re.search(r"Used (\d+) registers", line)
        if match:
            kernels[current]["registers"] = int(match.group(1))
            shared = re.search(r"(\d+) bytes smem", line)
            kernels[current]["shared"] = int(shared.group(1)) if shared else 0
    return kernels


def problems_of(info, budget):
    problems = []
    if info["spill"]:
        problems.append(f"{info['spill']} bytes spilled")
    if info["shared"] > STATIC_SHARED_LIMIT:
        problems.append(f"{info['shared']} bytes of static shared memory")
    if budget is None:
        problems.append("no simt::KernelSpec declares its register budget")
    elif info["registers"] > budget:
        problems.append(f"uses {info['registers']} registers, its KernelSpec declares {budget}")
    if info["registers"] > MAX_REGISTERS_PER_THREAD or \
            info["registers"] * MAX_BLOCK_THREADS > REGISTERS_PER_SM:
        problems.append(f"{info['registers']} registers x {MAX_BLOCK_THREADS} threads exceed "
                        f"the {REGISTERS_PER_SM} of an SM")
    return problems


def main():
    home = _build.find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    if not nvcc or not os.path.isfile(nvcc):
        print("check_ptxas: no nvcc here; skipped")
        return 0
    budgets = declared_budgets()
    sources = sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.cu")))
    failures = 0
    kernels = {}
    with tempfile.TemporaryDirectory() as tmp:
        instances = os.path.join(tmp, "selftest_instances.cu")
        with open(instances, "w") as f:
            f.write(SELFTEST_INSTANCES)
        for source in sources + [instances]:
            obj = os.path.join(tmp, os.path.basename(source) + ".o")
            kernels.update(compile_and_parse(nvcc, source, obj))
            carried = _build.cuda_binary_archs(obj)
            if carried != {"sm": sorted(ARCHS), "ptx": sorted(PTX_ARCHS)}:
                failures += 1
                print(f"{os.path.basename(source)}: the object carries cubins {carried['sm']}, "
                      f"PTX {carried['ptx']}; the default list asks for {ARCHS}, PTX {PTX_ARCHS}")
    mangled_names = sorted({name for name, _ in kernels})
    readable = dict(zip(mangled_names, demangle(mangled_names)))
    header = " ".join(f"{'sm_' + str(a):>7s}" for a in ARCHS)
    print(f"{'kernel (registers per architecture)':64s} {header} {'budget':>6s} "
          f"{'spill':>5s} {'smem':>5s}")
    for mangled in mangled_names:
        name = readable[mangled]
        short = re.sub(r"\([^()]*\)$", "", re.sub(r"^void ", "", name))  # drop the parameters
        base = re.sub(r"<.*", "", short).split("::")[-1]
        budget = budgets.get(re.sub(r"_kernel$", "", base))
        problems = []
        for arch in ARCHS:
            info = kernels.get((mangled, arch))
            if info is None:
                problems.append(f"not compiled for sm_{arch}")
                continue
            problems += [f"sm_{arch}: {p}" for p in problems_of(info, budget)]
        failures += bool(problems)
        cells = " ".join(f"{kernels[(mangled, a)]['registers'] if (mangled, a) in kernels else '-':>7}"
                         for a in ARCHS)
        spill = max(kernels.get((mangled, a), {"spill": 0})["spill"] for a in ARCHS)
        shared = max(kernels.get((mangled, a), {"shared": 0})["shared"] for a in ARCHS)
        print(f"{short[:64]:64s} {cells} {budget if budget else '-':>6} {spill:5d} {shared:5d}  "
              f"{'; '.join(problems) or 'ok'}")
    print(f"check_ptxas: {len(mangled_names)} kernels x {len(ARCHS)} architectures "
          f"({_build.DEFAULT_ARCH_LIST}), {'ok' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
