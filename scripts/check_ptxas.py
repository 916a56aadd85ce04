"""Compiles every kernel source for sm_90 with `nvcc -Xptxas -v` (no GPU needed) and fails on a
register spill, on static shared memory over the limit, or on a kernel using more registers
per thread than its launcher declares in its simt::KernelSpec (the figure the emulator's
occupancy and the persistent path's plan rely on).

    python scripts/check_ptxas.py            # a table, exit 1 on any violation
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

ARCH = "sm_90"
STATIC_SHARED_LIMIT = 48 * 1024  # static __shared__ (we use none: all shared memory is dynamic)
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


def compile_and_parse(nvcc, source):
    command = [nvcc, f"-arch={ARCH}", "-O3", "-std=c++17", *TORCH_FLAGS, f"-I{_build.CSRC}",
               "-Xptxas", "-v", "-c", source, "-o", os.devnull]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"nvcc failed on {source}:\n{result.stderr}")
    kernels, current = {}, None
    for line in result.stderr.splitlines():
        match = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
        if match:
            current = match.group(1)
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


def main():
    home = _build.find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    if not nvcc or not os.path.isfile(nvcc):
        print("check_ptxas: no nvcc here; skipped")
        return 0
    budgets = declared_budgets()
    sources = sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.cu")))
    with tempfile.TemporaryDirectory() as tmp:
        instances = os.path.join(tmp, "selftest_instances.cu")
        with open(instances, "w") as f:
            f.write(SELFTEST_INSTANCES)
        kernels = {}
        for source in sources + [instances]:
            kernels.update(compile_and_parse(nvcc, source))
    names = demangle(list(kernels))
    failures = 0
    print(f"{'kernel (' + ARCH + ')':72s} {'regs':>5s} {'budget':>6s} {'spill':>6s} {'smem':>6s}")
    for mangled, name in zip(kernels, names):
        info = kernels[mangled]
        short = re.sub(r"\([^()]*\)$", "", re.sub(r"^void ", "", name))  # drop the parameters
        base = re.sub(r"<.*", "", short).split("::")[-1]
        budget = budgets.get(re.sub(r"_kernel$", "", base))
        problems = []
        if info["spill"]:
            problems.append(f"{info['spill']} bytes spilled")
        if info["shared"] > STATIC_SHARED_LIMIT:
            problems.append(f"{info['shared']} bytes of static shared memory")
        if budget is None:
            problems.append("no simt::KernelSpec declares its register budget")
        elif info["registers"] > budget:
            problems.append(f"uses {info['registers']} registers, its KernelSpec declares {budget}")
        failures += bool(problems)
        print(f"{short[:72]:72s} {info['registers']:5d} {budget if budget else '-':>6} "
              f"{info['spill']:6d} {info['shared']:6d}  {'; '.join(problems) or 'ok'}")
    print(f"check_ptxas: {len(kernels)} kernels, {'ok' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
