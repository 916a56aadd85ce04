"""A cost model of the CUDA paths on one GPU: an H100 SXM by default, or the GPU --device names
(A100, A10, RTX4090, L4: the emulator's presets, tbptt_cuda.emulation.devices()). Every figure
it prints is a PREDICTION: nothing here runs on a GPU.

For one layer with I = H, a chunk of L steps and a window of k2 = L steps, it predicts us/step
of
  - the stepwise path: per step a cuBLAS GEMM and our pointwise kernel, forward and again
    backward, each launched by the host (csrc/lstm_driver.cpp);
  - the persistent kernels as they are (csrc/cuda/persistent_kernels.cuh: FFMA products for
    float32 and float64, mma for 16-bit, below; the "ffma" rows of a 16-bit dtype are a
    what-if), from the partition their plan picks on the simulated device (its SM count and
    shared memory: tbptt_cuda.emulation.plan(..., device=NAME)): the grid barrier, the staging
    of h_{t-1} (forward) and dG_t (backward) from L2 as the staging loops issue it, the
    shared-memory wavefronts (bank conflicts included) and FMA issue of the register tiles, the
    k-slice reduction, the pointwise element and the window GEMMs, amortised;
  - the tensor-core variant for 16-bit (mma.sync m16n8k16, fp32 accumulation; forward: A = 16
    rows of the W_hh slice, B = 16 k x 8 batch rows of h_{t-1}; backward: A = 16 batch rows x
    16 k of dG_t, B = 16 k x 8 units of W_hh columns), with the same staging;
next to cuDNN's published figure where there is one (H100 only: DESIGN.md section 8). From the
predictions it derives where the persistent path stops winning (B*H, B, and the chunk length)
and prints that next to the row of the device's architecture family in the rule table of
csrc/persistent_dispatch.cpp (parsed from the source), saying whether they agree. With
--device all (or --cpp-table) it ends with the derived rows of every family, from the family's
reference device (sm_80: A100, sm_86/sm_89: L4, sm_90: H100), ready to paste into that table.

Every input is listed with its source; "assumption" marks what no measurement backs. With
--barrier-json (bench/barrier_latency.py's output) the measured grid barrier replaces the
assumed one; with --paths-json (bench/gpu_paths.py's output) the measured us/step are printed
next to the predicted ones. scripts/gpu_check.sh does both.

The cells: a Model is of one cell (Model(..., cell), build_model(device, cell=...)).
Model.stepwise(..., cell="lstm"|"gru"|"lstmp", P) predicts the stepwise path of each (P: LSTMP's
proj_size) from the cell's counts (Cell, CELLS: gate blocks, GEMMs and pointwise passes per
step, the GRU's dGh copies) turned into GEMM shapes and kernels by cell_work, one code path for
all three. The GRU's persistent kernels are the LSTM's templated on the cell (G = 3H), and
Model.persistent predicts both with one code path over the cell's gate count (persistent_slices:
forward the gates u rows of W_hh a block keeps, backward its [u, G] columns, k over G; the
emulator's plan for that cell; the cell's window GEMMs and kernels). --cell gru prints the
report above for the GRU, with, per family and dtype, the rule derived for it against the
LSTM's rows it uses (csrc/persistent_dispatch.cpp has no GRU rows): "GRU derived rule vs the
LSTM's rule in use". The model does not cover LSTMP's persistent kernels (two grid barriers and
two products a step each way; csrc/cuda/persistent_kernels.cuh runs them, emulated only so far):
--cell lstmp prints a stepwise-only table per device of it next to the LSTM's (--proj P, default
H/2); --cell all, the GRU's report and then that table for the GRU and LSTMP. The LSTM's
predictions are those it had before the cells and before the GRU's persistent kernels.

    python bench/gpu_model.py [--device H100|A100|A10|RTX4090|L4|all] [--cpp-table]
                              [--json results/gpu_model.json] [--margin 0.8]
                              [--barrier-json F] [--paths-json F]
    python bench/gpu_model.py --cell gru [the options above]
    python bench/gpu_model.py --cell lstmp [--proj P] [--device ...] [--json F]
    python bench/gpu_model.py --cell all [--proj P] [the options above]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import REPO, git_commit  # noqa: E402

DTYPES = ("float32", "float64", "bfloat16")  # float16 models as bfloat16 (same sizes and paths)
BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
ACC_BYTES = {"float32": 4, "float64": 8, "bfloat16": 4, "float16": 4}
TABLE_H = (256, 768, 1024)
TABLE_B = (1, 16, 64)
RULE_H = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048)  # the grid the rule is derived on
RULE_B = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CHUNK = 64  # L = k2
ROWS_PER_THREAD = 4  # tbptt/persistent.h kRowsPerThread


@dataclasses.dataclass
class Input:
    value: float
    unit: str
    kind: str  # "spec" (a datasheet), "sass" (read from nvcc's compiled code, no GPU),
    #            "measured" (on a GPU: where and how), "published" (a third party), "assumption"
    source: str


def h100_inputs():
    """The model's inputs for the H100 SXM, each with where it comes from."""
    A, S, C = "assumption", "spec", "sass"
    return {
        "sms": Input(132, "SMs", S, "H100 SXM5 (NVIDIA H100 whitepaper)"),
        "clock_ghz": Input(1.75, "GHz", A, "sustained SM clock under load (the brief: ~1.75 GHz "
                           "boost; nvidia-smi clocks.max.sm says 1980 MHz on SXM5; chipsandcheese "
                           "saw an H100 PCIe at 1395-1755 MHz)"),
        "l2_bytes_per_clk_sm": Input(47, "B/clk/SM", A, "L2 -> SM intake (research/gpu_persistent.md "
                                     "5.6: A100 5120 B/clk / 108 SMs, from memory; unverified on H100)"),
        "l2_latency_clk": Input(270, "clk", A, "L2 hit latency (an L40 probe: 222-339 clk by SM, "
                                "arXiv 2606.22588; the H100's far L2 partition may be slower)"),
        "hbm_latency_clk": Input(550, "clk", A, "HBM3 load latency (no H100 measurement at hand)"),
        "l2_mbytes": Input(50, "MB", S, "L2 capacity (H100 SXM5: 50 MB, NVIDIA H100 whitepaper): "
                           "a stepwise GEMM whose weights do not fit streams them from DRAM"),
        "dram_gbps": Input(3350, "GB/s", S, "HBM3 bandwidth (H100 SXM5 datasheet: 3.35 TB/s)"),
        "smem_bytes_per_clk": Input(128, "B/clk/SM", S, "32 banks x 4 B per clock: one wavefront "
                                    "(CUDA C++ Programming Guide, shared memory)"),
        "smem_latency_clk": Input(30, "clk", A, "shared-memory load latency"),
        "fp32_fma_per_clk": Input(128, "lanes/clk/SM", S, "128 FP32 units per SM (H100 whitepaper)"),
        "fp64_fma_per_clk": Input(64, "lanes/clk/SM", S, "64 FP64 units per SM (H100 whitepaper)"),
        "issue_per_clk": Input(4, "warp instr/clk/SM", S, "4 schedulers, 1 instruction each per clock"),
        "mma_macs_per_clk": Input(1024, "MAC/clk/SM", A, "mma.sync m16n8k16 16-bit: half of "
                                  "wgmma's dense 2048 (989 TFLOPS / 132 SMs / 1.83 GHz); "
                                  "legacy mma/wmma reported at ~50% of peak on H100"),
        "pipe_efficiency": Input(0.7, "", A, "fraction of the busiest pipe's peak a 256-thread "
                                 "block (2 warps per scheduler) sustains: load-to-use latency "
                                 "is not hidden"),
        "sync_block_clk": Input(40, "clk", A, "one __syncthreads with its stragglers"),
        "staging_ilp": Input(4, "loads in flight/thread", C, "SASS of persistent_kernels.cu "
                             "(nvcc 13.0 -O3 sm_90, stage_rows, cuobjdump): a thread issues "
                             "kLoadsInFlight = 4 independent loads before the first STS"),
        "staging_load_bytes": Input(16, "B/load", C, "bytes one staging load moves: the same "
                                    "SASS has LDG.E.128 where rows are 16-byte aligned "
                                    "(H a multiple of 4 for float32, 8 for 16-bit)"),
        "staging_iteration_clk": Input(150, "clk", A, "issue/ALU of one group of 4 loads besides "
                                       "their latency: ~38 SASS instructions per load (32-bit "
                                       "index steps, the stores of its lanes), counted in the "
                                       "same SASS"),
        "pointwise_alu_clk": Input(250, "clk", A, "one lstm_math.h element (5 transcendental "
                                   "functions, flags, ring addressing) after its loads"),
        "barrier_us": Input(0.7, "us", A, "one grid barrier of ~100-132 blocks "
                            "(research/gpu_persistent.md 3: 0.73 us on an RTX 3090, MegaQwen; "
                            "no H100 figure) until bench/barrier_latency.py measures it"),
        "coop_launch_us": Input(4.0, "us", A, "a cooperative launch (MegaQwen, RTX 3090: 3.9 us "
                                "with one sync)"),
        "persistent_host_us": Input(15.0, "us", A, "the persistent path's ATen glue per layer per "
                                    "chunk or window (contiguous, empty, copy_, plan lookup)"),
        "host_gemm_us": Input(4.0, "us", A, "host time of one ATen mm_out -> cuBLAS launch, from C++"),
        "host_launch_us": Input(2.5, "us", A, "host time of one pointwise launch (DESIGN.md 8: "
                                "'a kernel launch costs ~3 us')"),
        "kernel_floor_us": Input(2.0, "us", A, "GPU time of the smallest kernel, back to back in a "
                                 "stream (launch latency + one wave)"),
        "gemm_tflops_float32": Input(25, "TFLOPS", A, "skinny SGEMM without TF32 (torch's default) "
                                     "at ~40% of the 67 TFLOPS FP32 peak"),
        "gemm_tflops_float64": Input(25, "TFLOPS", A, "DGEMM at ~40% of the 67 TFLOPS FP64 "
                                     "tensor-core peak"),
        "gemm_tflops_bfloat16": Input(300, "TFLOPS", A, "skinny 16-bit GEMM at ~30% of the 989 "
                                      "TFLOPS dense peak"),
        "cudnn_fwd_us": Input(2.0, "us/step", "published", "cuDNN nn.LSTM fp16 H=768 B=16 T=1024 on an "
                              "H100, forward (DESIGN.md 8, research/anchors.md)"),
        "cudnn_fwdbwd_us": Input(5.1, "us/step", "published", "the same, forward + backward"),
    }


# ---- the devices ---------------------------------------------------------------------------------
# Each device is the emulator's preset of that name (tbptt_cuda.emulation.devices(): SM count,
# shared memory, threads and blocks per SM, compute capability); the model's inputs are the
# H100's (h100_inputs) with the ones below replaced. Peaks are the vendor's datasheet or
# whitepaper figures; per-SM-per-clock rates are those peaks over SMs x the boost clock they are
# quoted at (the products are written out so they can be checked). What no published figure backs
# is an "assumption", said so.

DEVICE_NAMES = ("H100", "A100", "A10", "RTX4090", "L4")
DEVICE_LABELS = {"H100": "H100 SXM", "A100": "A100 SXM4", "A10": "A10 (GA102)",
                 "RTX4090": "GeForce RTX 4090 (AD102)", "L4": "L4 (AD104)"}
FAMILIES = ("sm_80", "sm_86/sm_89", "sm_90")  # csrc/persistent_dispatch.cpp arch_family_name
FAMILY_ENUM = {"sm_80": "kAmpere", "sm_86/sm_89": "kAmpereAda", "sm_90": "kHopper"}
FAMILY_REFERENCE = {"sm_80": "A100", "sm_86/sm_89": "L4", "sm_90": "H100"}
STORAGE_ENUM = {"float32": "kFloat32", "float64": "kFloat64", "float16": "kFloat16",
                "bfloat16": "kBFloat16"}


def family_of_capability(capability):
    """csrc/persistent_dispatch.cpp arch_family: the rule table's row for a compute capability."""
    if capability >= 90:
        return "sm_90"
    if capability == 80:
        return "sm_80"
    return "sm_86/sm_89"


def _device_overrides():
    A, S, P = "assumption", "spec", "published"
    ga10x_l2 = ("L2 -> SM intake: no per-clock figure for {die} found; taken as ~2/3 of the "
                "A100's even share (47 B/clk/SM), a guess (the 'L2 intake halved' scenario below "
                "shows how much the rule depends on it)")
    staging = ("the same source compiled for {arch}: the sm_90 SASS has {what}; the {arch} SASS "
               "was not read (no cuobjdump here), assumed the same")
    no_cudnn = "no published cuDNN nn.LSTM figure for this GPU at hand"
    common = {
        "staging_ilp": Input(4, "loads in flight/thread", A, staging.format(
            arch="{arch}", what="kLoadsInFlight = 4 independent loads before the first STS")),
        "staging_load_bytes": Input(16, "B/load", A, staging.format(
            arch="{arch}", what="LDG.E.128 where rows are 16-byte aligned")),
        "barrier_us": Input(0.7, "us", A, "one grid barrier (research/gpu_persistent.md 3: 0.73 us "
                            "on an RTX 3090 (GA102, 82 SMs), MegaQwen) until "
                            "bench/barrier_latency.py measures it on this GPU"),
        "cudnn_fwd_us": Input(None, "us/step", "n/a", no_cudnn),
        "cudnn_fwdbwd_us": Input(None, "us/step", "n/a", no_cudnn),
    }
    ada_or_ampere = {
        "fp64_fma_per_clk": Input(2, "lanes/clk/SM", S, "{whitepaper}: 2 FP64 units per SM "
                                  "(1/64 of the FP32 rate)"),
        "fp32_fma_per_clk": Input(128, "lanes/clk/SM", S, "{whitepaper}: 128 FP32 units per SM, "
                                  "64 of them shared with INT32"),
        "hbm_latency_clk": Input(550, "clk", A, "GDDR load latency (no measurement at hand; the "
                                 "H100's figure)"),
    }
    devices = {
        "A100": {
            "sms": Input(108, "SMs", S, "A100 SXM4 (NVIDIA A100 whitepaper: 108 of GA100's 128 SMs)"),
            "clock_ghz": Input(1.41, "GHz", A, "sustained SM clock under load: the 1410 MHz boost "
                               "clock the A100's peaks are quoted at (A100 whitepaper); not "
                               "measured, a 400 W A100 usually holds it"),
            "l2_bytes_per_clk_sm": Input(47, "B/clk/SM", S, "L2 -> SM intake: 5120 B/clk L2 read "
                                         "bandwidth (A100 whitepaper; 2.3x V100's 2048 B/clk at "
                                         "1410 vs 1530 MHz) shared evenly by 108 SMs (the even "
                                         "share is the model's)"),
            "l2_latency_clk": Input(270, "clk", A, "L2 hit latency: the H100's figure; GA100's L2 "
                                    "has a near and a far partition, far hits ~1.75x slower "
                                    "(GTC 2021 S33322, 'Dissecting the Ampere GPU architecture "
                                    "through microbenchmarking'); no cycle count at hand"),
            "hbm_latency_clk": Input(550, "clk", A, "HBM2e load latency (no A100 measurement at "
                                     "hand; the H100's figure)"),
            "l2_mbytes": Input(40, "MB", S, "L2 capacity (A100 whitepaper: 40 MB in two partitions; "
                               "lines may be held in both)"),
            "dram_gbps": Input(2039, "GB/s", S, "HBM2e bandwidth (A100 SXM4 80GB datasheet; the "
                               "40GB part: 1555 GB/s)"),
            "fp32_fma_per_clk": Input(64, "lanes/clk/SM", S, "64 FP32 units per SM (A100 whitepaper)"),
            "fp64_fma_per_clk": Input(32, "lanes/clk/SM", S, "32 FP64 units per SM (A100 whitepaper; "
                                      "the FFMA kernels do not use the FP64 tensor cores)"),
            "mma_macs_per_clk": Input(1024, "MAC/clk/SM", S, "mma.sync m16n8k16 16-bit, fp32 "
                                      "accumulation: 4 tensor cores x 256 dense FP16/FP32 FMA per "
                                      "clock (A100 whitepaper; 312 TFLOPS = 108 x 1024 x 2 x "
                                      "1.41 GHz); mma.sync is GA100's own tensor-core "
                                      "instruction, no wgmma to lose to"),
            "gemm_tflops_float32": Input(7.8, "TFLOPS", A, "skinny SGEMM without TF32 (torch's "
                                         "default) at ~40% of the 19.5 TFLOPS FP32 peak (A100 "
                                         "datasheet)"),
            "gemm_tflops_float64": Input(7.8, "TFLOPS", A, "DGEMM at ~40% of the 19.5 TFLOPS FP64 "
                                         "tensor-core peak (A100 datasheet)"),
            "gemm_tflops_bfloat16": Input(94, "TFLOPS", A, "skinny 16-bit GEMM at ~30% of the 312 "
                                          "TFLOPS dense peak (A100 datasheet)"),
        },
        "A10": {
            "sms": Input(72, "SMs", S, "A10 (GA102; NVIDIA A10 datasheet: 9216 CUDA cores = 72 SMs "
                         "x 128)"),
            "clock_ghz": Input(1.695, "GHz", A, "sustained SM clock under load: the 1695 MHz boost "
                               "clock the datasheet's 31.2 TFLOPS FP32 implies (72 x 128 x 2 x "
                               "1.695 GHz); a 150 W part may sustain less, not measured"),
            "l2_bytes_per_clk_sm": Input(32, "B/clk/SM", A, ga10x_l2.format(die="GA102")),
            "l2_latency_clk": Input(270, "clk", A, "L2 hit latency: the H100's figure (no GA102 "
                                    "cycle count at hand)"),
            "l2_mbytes": Input(6, "MB", S, "L2 capacity (GA102 whitepaper: 6 MB)"),
            "dram_gbps": Input(600, "GB/s", S, "GDDR6 bandwidth (A10 datasheet)"),
            "mma_macs_per_clk": Input(512, "MAC/clk/SM", S, "mma.sync 16-bit, fp32 accumulation: "
                                      "A10 datasheet BF16 125 TFLOPS dense (250 with sparsity) = "
                                      "72 x 512 x 2 x 1.695 GHz; full rate with fp32 accumulation "
                                      "on this data-centre part"),
            "gemm_tflops_float32": Input(12.5, "TFLOPS", A, "skinny SGEMM without TF32 at ~40% of "
                                         "the 31.2 TFLOPS FP32 peak (A10 datasheet)"),
            "gemm_tflops_float64": Input(0.2, "TFLOPS", A, "DGEMM at ~40% of ~0.49 TFLOPS (FP64 at "
                                         "1/64 of FP32; no tensor-core FP64 on GA102)"),
            "gemm_tflops_bfloat16": Input(37.5, "TFLOPS", A, "skinny 16-bit GEMM at ~30% of the "
                                          "125 TFLOPS dense peak (A10 datasheet)"),
        },
        "RTX4090": {
            "sms": Input(128, "SMs", S, "GeForce RTX 4090 (AD102, 128 of 144 SMs; NVIDIA Ada "
                         "Lovelace whitepaper)"),
            "clock_ghz": Input(2.52, "GHz", A, "sustained SM clock under load: the 2520 MHz boost "
                               "clock (Ada whitepaper; 82.6 TFLOPS FP32 = 128 x 128 x 2 x "
                               "2.52 GHz); GeForce cards often run above it, not measured"),
            "l2_bytes_per_clk_sm": Input(32, "B/clk/SM", A, ga10x_l2.format(die="AD102")),
            "l2_latency_clk": Input(279, "clk", P, "L2 hit latency of an L40 (AD102, the same "
                                    "die): 222-339 clk by SM, ~279 typical (arXiv 2606.22588)"),
            "l2_mbytes": Input(72, "MB", S, "L2 capacity (Ada whitepaper: 72 MB on the RTX 4090)"),
            "dram_gbps": Input(1008, "GB/s", S, "GDDR6X bandwidth (Ada whitepaper)"),
            "mma_macs_per_clk": Input(256, "MAC/clk/SM", S, "mma.sync 16-bit, fp32 accumulation: "
                                      "Ada whitepaper, RTX 4090 FP16/BF16 tensor with FP32 "
                                      "accumulate 165.2 TFLOPS dense = 128 x 256 x 2 x 2.52 GHz "
                                      "(GeForce: half the FP16-accumulate rate; the kernels "
                                      "accumulate in fp32)"),
            "gemm_tflops_float32": Input(33, "TFLOPS", A, "skinny SGEMM without TF32 at ~40% of "
                                         "the 82.6 TFLOPS FP32 peak (Ada whitepaper)"),
            "gemm_tflops_float64": Input(0.52, "TFLOPS", A, "DGEMM at ~40% of 1.29 TFLOPS (FP64 "
                                         "at 1/64 of FP32)"),
            "gemm_tflops_bfloat16": Input(50, "TFLOPS", A, "skinny 16-bit GEMM at ~30% of the "
                                          "165.2 TFLOPS dense fp32-accumulate peak (Ada whitepaper)"),
        },
        "L4": {
            "sms": Input(58, "SMs", S, "L4 (AD104; NVIDIA L4 datasheet: 7424 CUDA cores = 58 SMs x "
                         "128; 30.3 TFLOPS FP32 = 58 x 128 x 2 x 2.04 GHz)"),
            "clock_ghz": Input(2.04, "GHz", A, "sustained SM clock under load: the 2040 MHz boost "
                               "clock; at 72 W the L4 is expected to sustain less under a full "
                               "load (the 'clock at 80%' scenario below), not measured"),
            "l2_bytes_per_clk_sm": Input(32, "B/clk/SM", A, ga10x_l2.format(die="AD104")),
            "l2_latency_clk": Input(270, "clk", A, "L2 hit latency: an L40 (AD102) spans 222-339 "
                                    "clk by SM, ~279 typical (arXiv 2606.22588); the smaller "
                                    "AD104 may be faster"),
            "l2_mbytes": Input(48, "MB", S, "L2 capacity (L4 datasheet / Ada whitepaper: 48 MB)"),
            "dram_gbps": Input(300, "GB/s", S, "GDDR6 bandwidth (L4 datasheet)"),
            "mma_macs_per_clk": Input(512, "MAC/clk/SM", S, "mma.sync 16-bit, fp32 accumulation: "
                                      "L4 datasheet BF16 242 TFLOPS with sparsity, 121 dense = 58 "
                                      "x 512 x 2 x 2.04 GHz"),
            "gemm_tflops_float32": Input(12.1, "TFLOPS", A, "skinny SGEMM without TF32 at ~40% of "
                                         "the 30.3 TFLOPS FP32 peak (L4 datasheet)"),
            "gemm_tflops_float64": Input(0.19, "TFLOPS", A, "DGEMM at ~40% of ~0.47 TFLOPS (FP64 "
                                         "at 1/64 of FP32)"),
            "gemm_tflops_bfloat16": Input(36, "TFLOPS", A, "skinny 16-bit GEMM at ~30% of the 121 "
                                          "TFLOPS dense peak (L4 datasheet)"),
        },
    }
    arch = {"A100": "sm_80", "A10": "sm_86", "RTX4090": "sm_89", "L4": "sm_89"}
    whitepaper = {"A10": "GA102 whitepaper", "RTX4090": "Ada whitepaper", "L4": "Ada whitepaper"}
    for name, changes in devices.items():
        extra = dict(common)
        if name != "A100":
            extra.update({k: dataclasses.replace(v, source=v.source.format(whitepaper=whitepaper[name]))
                          for k, v in ada_or_ampere.items()})
        extra = {k: dataclasses.replace(v, source=v.source.replace("{arch}", arch[name]))
                 for k, v in extra.items()}
        devices[name] = {**extra, **changes}
    return devices


DEVICE_INPUTS = _device_overrides()

# Scenarios of the inputs particular to a device (besides SCENARIOS, which every device gets).
DEVICE_SCENARIOS = {
    "A10": {"L2 intake halved": {"l2_bytes_per_clk_sm": 16},
            "clock at 80% (150 W)": {"clock_ghz": 1.36}},
    "RTX4090": {"L2 intake halved": {"l2_bytes_per_clk_sm": 16}},
    "L4": {"L2 intake halved": {"l2_bytes_per_clk_sm": 16},
           "clock at 80% (72 W)": {"clock_ghz": 1.63}},
}


def default_inputs(device="H100"):
    """The model's inputs for `device` (a name of DEVICE_NAMES), each with where it comes from:
    the H100's, with the device's own replacing them; those it keeps from the H100 say so."""
    inputs = h100_inputs()
    if device == "H100":
        return inputs
    changes = DEVICE_INPUTS[device]
    out = {}
    for name, item in inputs.items():
        if name in changes:
            out[name] = changes[name]
        else:
            why = KEPT.get(name, "no figure for this GPU at hand")
            out[name] = dataclasses.replace(item, source=f"{item.source} [kept from the H100 model: {why}]")
    return out


# Why an input keeps the H100's value on the other devices.
KEPT = {
    "smem_bytes_per_clk": "the same on sm_80 to sm_90",
    "issue_per_clk": "the same on sm_80 to sm_90",
    "coop_launch_us": "driver and host time, not the GPU's",
    "persistent_host_us": "host time, not the GPU's",
    "host_gemm_us": "host time, not the GPU's",
    "host_launch_us": "host time, not the GPU's",
    "kernel_floor_us": "mostly launch latency, not the GPU's speed",
}


# ---- the cells on the stepwise path -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cell:
    """The counts the model takes from a cell: what one layer of it runs on the stepwise CUDA
    path (csrc/lstm_driver.cpp forward_chunk, backward_span; notes/cells.md 1, 3, 4); cell_work
    turns them into GEMM shapes and kernels.
      gates: gate blocks, G = gates * H (W_ih [G, I], W_hh [G, O]; O = P where projected, else H);
      projected: h = m W_hr^T [B, P] after the pointwise pass (nn.LSTM's proj_size): every step
        runs a second GEMM and a second pointwise pass each way (forward m [B, H] x W_hr^T, a
        pass over [B, P]; backward a pass over [B, P], dh_eff [B, P] x W_hr), and the window a
        fourth weight GEMM (dW_hr = dh_eff^T m) after rebuilding m = o tanh(c) [W, B, H] (two
        elementwise kernels: tanh, the product);
      split_grads: the x-side and recurrent gate gradients differ (the GRU's n rows: dGx, dGh
        from one [W, B, 4H] window): the per-step product copies dGh, a row's first G values,
        into a dense [B, G] (one small kernel per backward step), and the window makes dGh
        contiguous and dGx by a cat ([W*B, G] each, two kernels)."""
    name: str
    gates: int
    projected: bool = False
    split_grads: bool = False

    @property
    def gemms_per_step(self):  # each way
        return 1 + self.projected

    @property
    def passes_per_step(self):  # pointwise kernels, each way
        return 1 + self.projected


CELLS = {"lstm": Cell("lstm", 4), "gru": Cell("gru", 3, split_grads=True),
         "lstmp": Cell("lstmp", 4, projected=True)}
CELL_LABELS = {"lstm": "LSTM", "gru": "GRU", "lstmp": "LSTM with projections (LSTMP)"}


def default_proj(H):
    """P of the LSTMP rows where --proj does not give it."""
    return H // 2


def cell_work(cell, H, B, dtype, steps=CHUNK, P=None):
    """What one layer of `cell` runs on the stepwise path, I = H: per step each way, the GEMMs
    (flops, weight bytes) in launch order, the pointwise passes, the small copies (bytes moved);
    per window, the GEMMs (forward: the input projection of the chunk; backward: dW_ih, dW_hh,
    dx, and dW_hr where projected; weight bytes: the weight or its gradient) and the backward's
    elementwise kernels (bytes moved, read + written). P: proj_size (lstmp only; default
    default_proj(H))."""
    c = CELLS[cell]
    if c.projected:
        P = default_proj(H) if P is None else P
        if not 0 < P < H:
            raise ValueError(f"gpu_model: proj_size P = {P} must be in (0, H = {H}) (nn.LSTM)")
    elif P is not None:
        raise ValueError(f"gpu_model: the {cell} cell has no proj_size")
    s, acc = BYTES[dtype], ACC_BYTES[dtype]
    I, G = H, c.gates * H
    O = P if c.projected else H  # the size of h

    def gemm(rows, k, n):  # [rows, k] x [k, n]: flops, and the bytes of the [k, n] operand
        return 2 * rows * k * n, k * n * s

    WB = B * steps
    work = {
        "fwd_gemms": [gemm(B, O, G)] + ([gemm(B, H, P)] if c.projected else []),
        "bwd_gemms": ([gemm(B, P, H)] if c.projected else []) + [gemm(B, G, O)],
        "fwd_passes": c.passes_per_step, "bwd_passes": c.passes_per_step,
        "fwd_copies": [], "bwd_copies": [2 * B * G * s] if c.split_grads else [],
        "window_fwd_gemms": [gemm(WB, I, G)],  # x W_ih^T of the whole chunk
        # dW_ih = dGx^T x, dW_hh = dGh^T h_{t-1}, dx = dGx W_ih (, dW_hr = dh_eff^T m)
        "window_bwd_gemms": [gemm(WB, G, I), gemm(WB, G, O), gemm(WB, G, I)]
                            + ([gemm(WB, P, H)] if c.projected else []),
        "window_bwd_kernels": [],
    }
    if c.split_grads:  # dGh.contiguous(), cat(dGx): [W*B, G] read and written
        work["window_bwd_kernels"] += [2 * WB * G * s, 2 * WB * G * s]
    if c.projected:  # m = o tanh(c): tanh(c) (acc), then o (T) times it into m (T)
        work["window_bwd_kernels"] += [2 * WB * H * acc, WB * H * (2 * s + acc)]
    return work


_TILE_CACHE = {}


def persistent_slices(cell, H, plan):
    """What one block of the persistent kernels of `cell` keeps of W_hh [G, H], G = gates H
    (tbptt/persistent.h shared_layout, the cell's kGates): forward the gate rows of its u units,
    [gates u, H]; backward the u columns of all G rows, [u, G] (the k of its product runs over
    G). The LSTM with projections' persistent kernels (two products each way) are not modelled."""
    c = CELLS[cell]
    if c.projected:
        raise ValueError(f"gpu_model: the {cell} cell's persistent kernels are not modelled "
                         "(stepwise predictions only)")
    forward_units, backward_units = plan["forward"]["units"], plan["backward"]["units"]
    return {"gates": c.gates, "G": c.gates * H,
            "forward_weight_rows": c.gates * forward_units,
            "forward_weight_elements": c.gates * forward_units * H,
            "backward_weight_elements": backward_units * c.gates * H}


class Model:
    """The predictions for one layer of `cell` (CELLS) on one device: `inputs` (default_inputs),
    `plan_of` (H, B, dtype) -> the persistent plan of that cell (tbptt_cuda.emulation.plan;
    None where only the stepwise path is asked for)."""

    def __init__(self, inputs, plan_of, cell="lstm"):
        self.p = {k: v.value for k, v in inputs.items()}
        self.plan_of = plan_of
        self.cell = cell
        self._tile_cache = _TILE_CACHE  # the tiles' geometry depends on no input: shared

    def us(self, clk):
        return clk / (self.p["clock_ghz"] * 1e3)

    # ---- the persistent kernels' pieces, in clocks of one block ---------------------------

    def stage_clk(self, elements, threads, elem_bytes, latency):
        """Copying `elements` from global memory to shared memory with the staging loop: each
        thread's iterations run one after another (staging_ilp loads in flight), unless the
        SM's L2 intake is the tighter bound."""
        per_load = max(1, int(self.p["staging_load_bytes"]) // elem_bytes)  # elements per load
        iterations = math.ceil(elements / per_load / threads)
        by_latency = math.ceil(iterations / self.p["staging_ilp"]) * (
            latency + self.p["staging_iteration_clk"])
        by_bandwidth = elements * elem_bytes / self.p["l2_bytes_per_clk_sm"]
        return max(by_latency, by_bandwidth)

    def ffma_tile(self, part, length, rows, elem_bytes, dtype, backward, width, gates):
        """Shared-memory wavefronts, FMA and other instructions of one tile's product in the
        FFMA kernels: the threads as product_tile maps them, every warp, one k iteration
        simulated at each parity and scaled by the slice length. width: elements in a row of
        the weights (H forward, G backward); length: of the reduction (H, or the k chunk);
        gates: the cell's gate blocks (forward, a thread reads that many weight rows of its
        unit per k; backward, one)."""
        key = (tuple(sorted(part.items())), length, rows, elem_bytes, backward, width, gates)
        if key in self._tile_cache:
            return self._tile_cache[key]
        units, threads, ks = part["units"], part["threads"], part["k_split"]
        tile = part["batch_tile"]
        items = math.ceil(tile / ROWS_PER_THREAD) * units
        ws = padded_row(width, elem_bytes)
        ts = padded_row(part["k_chunk"], elem_bytes) if backward else ws
        weight_rows = 1 if backward else gates  # per unit
        tile_offset = align16(units * weight_rows * ws * elem_bytes)
        per_slice = math.ceil(length / ks)
        wavefronts = fma = instructions = 0.0
        for warp in range(threads // 32):
            lanes = []
            for tid in range(32 * warp, 32 * warp + 32):
                slice_, item = divmod(tid, items)
                group, unit = divmod(item, units)
                r = min(ROWS_PER_THREAD, rows - ROWS_PER_THREAD * group)
                active = slice_ < ks and item < math.ceil(rows / ROWS_PER_THREAD) * units
                lanes.append((slice_, group, unit, r) if active else None)
            live = [lane for lane in lanes if lane]
            if not live:
                continue
            trips = max(min(per_slice, length - lane[0] * per_slice) for lane in live)
            max_rows = max(lane[3] for lane in live)
            per_trip = 0.0
            for parity in (0, 1):  # 16-bit elements: two share a bank word; both parities
                def address(lane, row, is_weight):
                    k = lane[0] * per_slice + parity
                    if is_weight:
                        return (row * ws + k) * elem_bytes
                    return tile_offset + (row * ts + k) * elem_bytes
                loads = []
                for g in range(weight_rows):
                    loads.append([address(lane, lane[2] * weight_rows + g, True) if lane else None
                                  for lane in lanes])
                for r in range(max_rows):
                    loads.append([address(lane, ROWS_PER_THREAD * lane[1] + r, False)
                                  if lane and r < lane[3] else None for lane in lanes])
                per_trip += sum(bank_wavefronts(load, elem_bytes) for load in loads) / 2
            fma_per_trip = max_rows * weight_rows
            loads_per_trip = weight_rows + max_rows
            converts = loads_per_trip if elem_bytes == 2 else 0
            wavefronts += trips * per_trip
            fma += trips * fma_per_trip
            instructions += trips * (fma_per_trip + loads_per_trip + converts + 2)
        result = (wavefronts, fma, instructions)
        self._tile_cache[key] = result
        return result

    def ffma_compute_clk(self, part, length, rows, elem_bytes, dtype, backward, width, gates):
        wavefronts, fma, instructions = self.ffma_tile(part, length, rows, elem_bytes, dtype,
                                                       backward, width, gates)
        lanes = self.p["fp64_fma_per_clk"] if dtype == "float64" else self.p["fp32_fma_per_clk"]
        busiest = max(wavefronts, fma / (lanes / 32), instructions / self.p["issue_per_clk"])
        return busiest / self.p["pipe_efficiency"]

    def reduce_clk(self, part, values, acc_bytes):
        """sum_slices: slices > 0 store `values` accumulators per thread, slice 0 adds them in
        slice order."""
        ks = part["k_split"]
        if ks == 1:
            return 0.0
        items = math.ceil(part["batch_tile"] / ROWS_PER_THREAD) * part["units"]
        bytes_moved = 2 * (ks - 1) * items * values * acc_bytes  # stored once, loaded once
        latency_chain = math.ceil((ks - 1) / 4) * self.p["smem_latency_clk"]
        return (bytes_moved / self.p["smem_bytes_per_clk"] + latency_chain
                + self.p["sync_block_clk"])

    def mma_compute_clk(self, m_tiles, n_tiles, k_steps, warps):
        """Tensor-core product of one tile: warps split over (m tile, n tile, k slice); each
        mma loads its A (16x16, 512 B) and B (16x8, 256 B) fragments from shared memory; the k
        slices' 16x8 fp32 partial tiles meet in shared memory in a fixed order."""
        mmas = m_tiles * n_tiles * k_steps
        slices = max(1, warps // max(1, m_tiles * n_tiles))
        tensor = mmas * 16 * 8 * 16 / self.p["mma_macs_per_clk"]
        wavefronts = mmas * (512 + 256) / self.p["smem_bytes_per_clk"]
        issue = mmas * 4 / self.p["issue_per_clk"]  # 2 ldmatrix, the mma, address math
        busiest = max(tensor, wavefronts, issue) / self.p["pipe_efficiency"]
        reduce = 0.0
        if slices > 1:
            partial_bytes = 2 * (slices - 1) * m_tiles * n_tiles * 16 * 8 * 4
            reduce = (partial_bytes / self.p["smem_bytes_per_clk"] + self.p["smem_latency_clk"]
                      + self.p["sync_block_clk"])
        return busiest + reduce

    def pointwise_clk(self, elements, threads, loads_latency):
        return math.ceil(elements / threads) * (loads_latency + self.p["pointwise_alu_clk"])

    # ---- GEMMs ----------------------------------------------------------------------------

    def stream_bytes_per_us(self, nbytes):
        """Bytes per us a kernel reading `nbytes` streams them at: from L2, or from DRAM where
        they do not fit the L2."""
        l2_bytes_per_us = (self.p["l2_bytes_per_clk_sm"] * self.p["sms"]
                           * self.p["clock_ghz"] * 1e3)
        if nbytes > self.p["l2_mbytes"] * 1e6:
            l2_bytes_per_us = min(l2_bytes_per_us, self.p["dram_gbps"] * 1e3)
        return l2_bytes_per_us

    def gemm_us(self, flops, weight_bytes, dtype):
        """One cuBLAS GEMM on the GPU: its floor, its FLOPs at the sustained rate, or its
        weights streamed from L2 (from DRAM where they do not fit the L2), whichever is
        largest."""
        rate = self.p["gemm_tflops_" + ("bfloat16" if BYTES[dtype] == 2 else dtype)] * 1e6
        return max(self.p["kernel_floor_us"], flops / rate,
                   weight_bytes / self.stream_bytes_per_us(weight_bytes))

    def memory_kernel_us(self, nbytes):
        """One elementwise or copy kernel moving `nbytes` (read + written) on the GPU: its
        floor, or the bytes streamed."""
        return max(self.p["kernel_floor_us"], nbytes / self.stream_bytes_per_us(nbytes))

    def window_gemms_us(self, H, B, steps, dtype, cell=None, P=None):
        """Per step: the input projection forward (one GEMM per chunk), and backward dW_hh,
        dW_ih, dx (and dW_hr for lstmp; one GEMM each per window), with their host time; the
        same on both paths. cell: the model's where None."""
        work = cell_work(cell or self.cell, H, B, dtype, steps, P)
        return tuple((sum(self.gemm_us(flops, nbytes, dtype) for flops, nbytes in gemms)
                      + len(gemms) * self.p["host_gemm_us"]) / steps
                     for gemms in (work["window_fwd_gemms"], work["window_bwd_gemms"]))

    def window_kernels_us(self, H, B, steps, dtype, cell=None, P=None):
        """Per step: the backward's window-wide elementwise kernels (the GRU's dGh and dGx
        copies, LSTMP's rebuild of m), with their host time; none for the LSTM. The same on
        both paths (csrc/lstm_driver.cpp runs them after either). cell: the model's where None."""
        kernels = cell_work(cell or self.cell, H, B, dtype, steps, P)["window_bwd_kernels"]
        return (sum(self.memory_kernel_us(nbytes) for nbytes in kernels)
                + len(kernels) * self.p["host_launch_us"]) / steps

    def step_us(self, work, way, dtype):
        """(GPU, host) us of one stepwise step `way` ("fwd" or "bwd") of cell_work's `work`:
        its GEMMs, pointwise passes and small copies back to back in the stream; the host
        launching each (mm_out, or a pointwise launch)."""
        gemms, passes, copies = work[way + "_gemms"], work[way + "_passes"], work[way + "_copies"]
        gpu = (sum(self.gemm_us(flops, nbytes, dtype) for flops, nbytes in gemms)
               + passes * self.p["kernel_floor_us"]
               + sum(self.memory_kernel_us(nbytes) for nbytes in copies))
        host = (len(gemms) * self.p["host_gemm_us"]
                + (passes + len(copies)) * self.p["host_launch_us"])
        return gpu, host

    # ---- the three paths, us per step ---------------------------------------------------------

    def stepwise(self, H, B, dtype, steps=CHUNK, cell=None, P=None):
        """(forward us/step, forward+backward us/step, the terms) of the stepwise path of
        `cell` (CELLS, the model's where None; P: lstmp's proj_size, default default_proj(H)):
        each step, forward and again backward, is max(GPU, host) of its GEMMs and kernels
        (step_us); the window's GEMMs and kernels are amortised over `steps`."""
        cell = cell or self.cell
        work = cell_work(cell, H, B, dtype, steps, P)
        gpu, host = self.step_us(work, "fwd", dtype)
        bwd_gpu, bwd_host = self.step_us(work, "bwd", dtype)
        fwd_gemms, bwd_gemms = self.window_gemms_us(H, B, steps, dtype, cell, P)
        bwd_kernels = self.window_kernels_us(H, B, steps, dtype, cell, P)
        step, bwd_step = max(gpu, host), max(bwd_gpu, bwd_host)
        terms = {"step (max of GPU and host)": step, "GPU: GEMM + pointwise": gpu,
                 "host: mm_out + launch": host, "window GEMMs fwd": fwd_gemms,
                 "window GEMMs bwd": bwd_gemms, "bwd step (max of GPU and host)": bwd_step,
                 "bwd GPU": bwd_gpu, "bwd host": bwd_host, "window kernels bwd": bwd_kernels}
        return step + fwd_gemms, step + bwd_step + fwd_gemms + bwd_gemms + bwd_kernels, terms

    def persistent(self, H, B, dtype, plan, variant="ffma", steps=CHUNK):
        """(forward us/step, forward+backward us/step, the terms) of the persistent kernels,
        variant "ffma" (float32/float64 as built) or "mma" (float16/bfloat16 as built; the ffma
        variant of a 16-bit dtype is kept to show what the tensor cores buy), of the model's
        cell: the LSTM's and the GRU's kernels are one template over the cell's gate count (G =
        gates H, persistent_slices); the GRU's pointwise element is costed as the LSTM's."""
        s, acc = BYTES[dtype], ACC_BYTES[dtype]
        f, b = plan["forward"], plan["backward"]
        slices = persistent_slices(self.cell, H, plan)
        gates, G = slices["gates"], slices["G"]
        l2 = self.p["l2_latency_clk"]
        clk = defaultdict(float)  # forward terms, then backward ones, in clocks
        # forward: per batch tile, stage h_{t-1}, multiply, sum the slices, store gates_h
        for b0 in range(0, B, f["batch_tile"]):
            rows = min(f["batch_tile"], B - b0)
            clk["fwd: stage h_{t-1} from L2"] += (self.stage_clk(rows * H, f["threads"], s, l2)
                                                  + self.p["sync_block_clk"])
            if variant == "mma":
                clk["fwd: product"] += self.mma_compute_clk(
                    math.ceil(slices["forward_weight_rows"] / 16), math.ceil(rows / 8),
                    math.ceil(H / 16), f["threads"] // 32)
            else:
                clk["fwd: product"] += self.ffma_compute_clk(f, H, rows, s, dtype, False, H, gates)
                # a thread's accumulators: ROWS_PER_THREAD batch rows x the gates of its unit
                clk["fwd: k-slice sums"] += self.reduce_clk(f, ROWS_PER_THREAD * gates, acc)
            clk["fwd: product"] += self.p["sync_block_clk"]
        clk["fwd: pointwise"] = self.pointwise_clk(B * f["units"], f["threads"], l2)
        # backward: pointwise, barrier, then per batch tile and k chunk stage dG_t and multiply
        clk["bwd: pointwise"] = self.pointwise_clk(B * b["units"], b["threads"], 1.5 * l2)
        for b0 in range(0, B, b["batch_tile"]):
            rows = min(b["batch_tile"], B - b0)
            for k0 in range(0, G, b["k_chunk"]):
                cols = min(b["k_chunk"], G - k0)
                clk["bwd: stage dG_t from L2"] += (self.stage_clk(rows * cols, b["threads"], s, l2)
                                                    + self.p["sync_block_clk"])
                if variant == "mma":
                    clk["bwd: product"] += self.mma_compute_clk(
                        math.ceil(rows / 16), math.ceil(b["units"] / 8), math.ceil(cols / 16),
                        b["threads"] // 32)
                else:
                    clk["bwd: product"] += self.ffma_compute_clk(b, cols, rows, s, dtype, True, G,
                                                                 gates)
                clk["bwd: product"] += self.p["sync_block_clk"]
            if variant != "mma":
                clk["bwd: k-slice sums"] += self.reduce_clk(b, ROWS_PER_THREAD, acc)  # dL/dh rows
        terms = {name: self.us(value) for name, value in clk.items()}
        terms["fwd: grid barrier"] = terms["bwd: grid barrier"] = self.p["barrier_us"]
        # once per launch: the launch, the host glue, W_hh's slice loaded with the staging loop
        launch = self.p["coop_launch_us"] + self.p["persistent_host_us"]
        terms["fwd: launch + W_hh load, amortised"] = (launch + self.us(self.stage_clk(
            slices["forward_weight_elements"], f["threads"], s, self.p["hbm_latency_clk"]))) / steps
        terms["bwd: launch + W_hh load, amortised"] = (launch + self.us(self.stage_clk(
            slices["backward_weight_elements"], b["threads"], s, self.p["hbm_latency_clk"]))) / steps
        terms["fwd: window GEMMs"], terms["bwd: window GEMMs"] = self.window_gemms_us(
            H, B, steps, dtype)
        if cell_work(self.cell, H, B, dtype, steps)["window_bwd_kernels"]:  # the GRU's dGh, dGx
            terms["bwd: window kernels"] = self.window_kernels_us(H, B, steps, dtype)
        forward = sum(v for k, v in terms.items() if k.startswith("fwd"))
        backward = sum(v for k, v in terms.items() if k.startswith("bwd"))
        return forward, forward + backward, terms

    def row(self, H, B, dtype, steps=CHUNK):
        """The model's cell at one shape: its plan, the stepwise and persistent predictions."""
        plan = self.plan_of(H, B, dtype)
        out = {"H": H, "B": B, "dtype": dtype, "usable": plan["usable"], "reason": plan["reason"],
               "plan": {k: plan["forward"][k] for k in ("blocks", "units", "threads", "batch_tile",
                                                         "k_split")}}
        out["plan_backward"] = {k: plan["backward"][k] for k in ("batch_tile", "k_split", "k_chunk")}
        out["stepwise_fwd"], out["stepwise_fwdbwd"], out["stepwise_terms"] = self.stepwise(
            H, B, dtype, steps)
        for variant in ("ffma", "mma"):
            if plan["usable"] and (variant == "ffma" or BYTES[dtype] == 2):
                fwd, both, terms = self.persistent(H, B, dtype, plan, variant, steps)
                out[f"{variant}_fwd"], out[f"{variant}_fwdbwd"], out[f"{variant}_terms"] = fwd, both, terms
            else:
                out[f"{variant}_fwd"] = out[f"{variant}_fwdbwd"] = None
        return out


# ---- shared-memory layout of tbptt/persistent.h, and banks --------------------------------------

def padded_row(n, elem_bytes):
    """tbptt/persistent.h padded_row: rows span an odd number of 4-byte banks."""
    if elem_bytes >= 4:
        return n | 1
    even = (n + 1) // 2 * 2
    return even + 2 if even % 4 == 0 else even


def align16(nbytes):
    return (nbytes + 15) // 16 * 16


def bank_wavefronts(lane_addresses, elem_bytes):
    """Wavefronts one warp-wide shared load takes: per bank, the distinct 4-byte words asked
    for (one word to several lanes is a broadcast); 8-byte loads go as two half-warps."""
    phases = ([lane_addresses[:16], lane_addresses[16:]] if elem_bytes == 8 else [lane_addresses])
    total = 0
    for phase in phases:
        words_of_bank = defaultdict(set)
        for address in phase:
            if address is None:
                continue
            for word in range(address // 4, (address + elem_bytes - 1) // 4 + 1):
                words_of_bank[word % 32].add(word)
        if words_of_bank:
            total += max(len(words) for words in words_of_bank.values())
    return total


# ---- the rule ------------------------------------------------------------------------------------

def current_rules(path=REPO / "csrc" / "persistent_dispatch.cpp"):
    """{family: {dtype: (max_batch, max_batch_hidden, min_steps)}} from persistent_rule's table
    (rows `{F::kHopper, S::kFloat32, 64, 512, 11},`; ArchFamily:: and StorageType:: spelled out
    are read too); family: "sm_80", "sm_86/sm_89" or "sm_90" (arch_family_name)."""
    names = {"Float32": "float32", "Float64": "float64", "Float16": "float16", "BFloat16": "bfloat16"}
    families = {enum[1:]: family for family, enum in FAMILY_ENUM.items()}
    source = Path(path).read_text()
    start = source.find("persistent_rule(")
    body = source[start:] if start >= 0 else ""
    rules = {}
    for family, kind, max_batch, max_bh, min_steps in re.findall(
            r"\{\s*(?:F|ArchFamily)::k(\w+),\s*(?:S|StorageType)::k(\w+),\s*(\d+),\s*(\d+),"
            r"\s*(\d+)\s*\}", body):
        if family not in families or kind not in names:
            raise RuntimeError(f"gpu_model: unknown family or storage type in the rule table of "
                               f"{path}: k{family}, k{kind}")
        rules.setdefault(families[family], {})[names[kind]] = (int(max_batch), int(max_bh),
                                                               int(min_steps))
    if not rules:
        raise RuntimeError(f"gpu_model: found no rule table in {path} (rows like "
                           "'{F::kHopper, S::kFloat32, 64, 512, 11},' after persistent_rule()")
    return rules


def built_variant(dtype):
    """The persistent variant the kernels compile for a dtype (kTensorCores<T> in
    csrc/cuda/persistent_kernels.cuh): tensor cores for the 16-bit types, FFMA otherwise."""
    return "mma" if BYTES[dtype] == 2 else "ffma"


def derive_rule(model, dtype, variant, margin):
    """Where the model predicts the persistent path (fwd+bwd per step) below `margin` times the
    stepwise one, over the grid RULE_H x RULE_B of usable plans."""
    shapes = []
    for H in RULE_H:
        for B in RULE_B:
            plan = model.plan_of(H, B, dtype)
            if not plan["usable"]:
                continue
            _, step, _ = model.stepwise(H, B, dtype)
            _, persistent, _ = model.persistent(H, B, dtype, plan, variant)
            shapes.append((H, B, persistent < margin * step, persistent / step))
    wins = [(H, B) for H, B, win, _ in shapes if win]
    losses = [(H, B) for H, B, win, _ in shapes if not win]
    first_loss = min((H * B for H, B in losses), default=None)
    # the largest B*H below which every shape wins
    max_bh = max((H * B for H, B in wins if first_loss is None or H * B < first_loss), default=0)
    max_batch = max((B for H, B in wins), default=0)
    min_steps, min_steps_shape = min_steps_of(model, dtype, variant, margin,
                                              [(H, B) for H, B in wins if H * B <= max_bh])
    return {"shapes": shapes, "max_batch": max_batch, "max_batch_hidden": max_bh,
            "first_loss_batch_hidden": first_loss, "min_steps": min_steps,
            "min_steps_shape": min_steps_shape}


def min_steps_of(model, dtype, variant, margin, shapes):
    """The shortest chunk (= window) that pays for the launches, at every one of `shapes`
    (winning at L = CHUNK): the rule's L limit is the largest of them, and where it is."""
    min_steps, min_steps_shape = None, None
    for H, B in shapes:
        plan = model.plan_of(H, B, dtype)
        for steps in range(1, CHUNK + 1):
            _, step, _ = model.stepwise(H, B, dtype, steps)
            _, persistent, _ = model.persistent(H, B, dtype, plan, variant, steps)
            if persistent < margin * step:
                if min_steps is None or steps > min_steps:
                    min_steps, min_steps_shape = steps, (H, B)
                break
    return min_steps, min_steps_shape


def derive_family_rule(models, derivations, dtype, variant, margin):
    """derive_rule over several devices of one family at once: a shape wins where it is
    predicted to win on every device that has a plan for it; the L limit is the largest any
    of them needs. models, derivations: per device, derive_rule's output with its shapes."""
    outcomes = defaultdict(list)
    for d in derivations:
        for H, B, win, _ in d["shapes"]:
            outcomes[(H, B)].append(win)
    wins = [shape for shape, won in outcomes.items() if all(won)]
    losses = [shape for shape, won in outcomes.items() if not all(won)]
    first_loss = min((H * B for H, B in losses), default=None)
    max_bh = max((H * B for H, B in wins if first_loss is None or H * B < first_loss), default=0)
    max_batch = max((B for H, B in wins), default=0)
    min_steps, min_steps_shape = None, None
    for model, d in zip(models, derivations):
        usable = {(H, B) for H, B, _, _ in d["shapes"]}
        steps, shape = min_steps_of(model, dtype, variant, margin,
                                    [s for s in wins if s[0] * s[1] <= max_bh and s in usable])
        if steps is not None and (min_steps is None or steps > min_steps):
            min_steps, min_steps_shape = steps, shape
    return {"shapes": [(H, B, all(won), None) for (H, B), won in outcomes.items()],
            "max_batch": max_batch, "max_batch_hidden": max_bh,
            "first_loss_batch_hidden": first_loss, "min_steps": min_steps,
            "min_steps_shape": min_steps_shape}


# Other inputs under which the rule is derived again: how far the conclusion depends on the
# assumptions. "optimistic"/"pessimistic" are for the persistent kernels as built; "before
# stage_rows" is the staging of commit ae78a43 (one element per load, one load in flight, 64-bit
# index math with a division), kept to show what the vectorised staging bought.
SCENARIOS = {
    "optimistic for persistent": {"l2_latency_clk": 200, "staging_iteration_clk": 60,
                                  "pipe_efficiency": 0.9, "barrier_us": 0.5,
                                  "host_gemm_us": 6.0, "host_launch_us": 4.0},
    "pessimistic for persistent": {"l2_latency_clk": 350, "staging_iteration_clk": 250,
                                   "pipe_efficiency": 0.6, "barrier_us": 1.0,
                                   "host_gemm_us": 3.0, "host_launch_us": 2.0},
    "before stage_rows (commit ae78a43)": {"staging_ilp": 1, "staging_load_bytes": 0,
                                           "staging_iteration_clk": 100},
}


def with_inputs(inputs, changes):
    out = dict(inputs)
    for name, value in changes.items():
        out[name] = dataclasses.replace(inputs[name], value=value, kind="scenario")
    return out


def compare_rule(derived, rule):
    """Grid shapes the current rule sends to the persistent path where the model predicts a
    loss, and shapes it keeps stepwise where the model predicts a win."""
    max_batch, max_bh, _ = rule
    admitted_losing = [(H, B) for H, B, win, _ in derived["shapes"]
                       if B <= max_batch and H * B <= max_bh and not win]
    rejected_winning = [(H, B) for H, B, win, _ in derived["shapes"]
                        if not (B <= max_batch and H * B <= max_bh) and win]
    return admitted_losing, rejected_winning


# ---- printing ------------------------------------------------------------------------------------

def fmt(value, width=7):
    return f"{value:{width}.1f}" if value is not None else f"{'n/a':>{width}}"


def load_measured_barrier(path, inputs):
    """Replaces the assumed barrier by the median of the measured ones (exchange on)."""
    data = json.loads(Path(path).read_text())
    rows = [r for r in data["rows"] if r.get("exchange") and r.get("words_ok")]
    if not rows:
        return
    values = sorted(r["us_per_barrier"] for r in rows)
    inputs["barrier_us"] = Input(round(values[len(values) // 2], 3), "us", "measured",
                                 f"bench/barrier_latency.py on {data['header'].get('device')}, "
                                 f"blocks {sorted({r['blocks'] for r in rows})}, with exchange "
                                 f"(median; {path})")


def device_of_name(text):
    """The preset a GPU's name (nvidia-smi, torch) is, or None: "NVIDIA A100-SXM4-80GB" ->
    "A100", "NVIDIA GeForce RTX 4090" -> "RTX4090", "NVIDIA L4" -> "L4" (not an L40)."""
    patterns = (("H100", r"H100"), ("A100", r"A100"), ("A10", r"\bA10G?\b"),
                ("RTX4090", r"RTX\s*4090"), ("L4", r"\bL4\b"))
    for name, pattern in patterns:
        if re.search(pattern, text or "", re.I):
            return name
    return None


def parse_device(text):
    """--device: a preset name (any case) or "all"."""
    for name in DEVICE_NAMES + ("all",):
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: choose from "
                                     f"{', '.join(DEVICE_NAMES)} or all")


def build_model(device, barrier_json=None, cell="lstm"):
    """(Model, inputs) of `cell` on `device`, plans from the emulator's preset of that name."""
    from tbptt_cuda import emulation

    inputs = default_inputs(device)
    if barrier_json:
        load_measured_barrier(barrier_json, inputs)
    plans = {}

    def plan_of(H, B, dtype):
        if (H, B, dtype) not in plans:
            import torch

            plans[(H, B, dtype)] = emulation.plan(H, B, getattr(torch, dtype),
                                                  sms=int(inputs["sms"].value), device=device,
                                                  cell=cell)
        return plans[(H, B, dtype)]

    return Model(inputs, plan_of, cell), inputs


def built_rules(model, margin):
    """{dtype: derive_rule of the variant built for it} (float16 as bfloat16: same sizes)."""
    out = {}
    for dtype in STORAGE_ENUM:
        model_dtype = "bfloat16" if dtype == "float16" else dtype
        out[dtype] = derive_rule(model, model_dtype, built_variant(dtype), margin)
    return out


def rule_of(derived):
    """(max_batch, max_batch_hidden, min_steps) of a derivation, as the C++ table has it: where
    no shape is predicted to win, (0, 0, 0) (B <= 0: auto never takes the persistent path)."""
    if not derived["max_batch"]:
        return (0, 0, 0)
    return (derived["max_batch"], derived["max_batch_hidden"], derived["min_steps"])


def cpp_rows(rules, notes=None):
    """The C++ rows of persistent_rule's table: rules {family: {dtype: (B, B*H, L)}}."""
    lines = []
    for family in ("sm_90", "sm_80", "sm_86/sm_89"):
        for dtype, rule in rules.get(family, {}).items():
            row = (f"{{F::{FAMILY_ENUM[family]}, S::{STORAGE_ENUM[dtype]}, {rule[0]}, {rule[1]}, "
                   f"{rule[2]}}},")
            note = (notes or {}).get((family, dtype), "")
            lines.append(f"      {row:48s}{'  // ' + note if note else ''}".rstrip())
    return lines


def family_rule_tables(models, derived, margin):
    """(reference, family-wide): {family: {dtype: (B, B*H, L)}} from the reference device of
    each family, and from every modelled device of the family together (derive_family_rule),
    with their notes. models, derived: per device name (derived: built_rules' output)."""
    reference, family_wide, notes = {}, {}, {}
    for family in FAMILIES:
        members = [name for name in DEVICE_NAMES
                   if family_of_capability(DEVICE_CAPABILITY[name]) == family and name in derived]
        ref = FAMILY_REFERENCE[family]
        if ref not in derived:
            continue
        reference[family], family_wide[family] = {}, {}
        for dtype in STORAGE_ENUM:
            d = derived[ref][dtype]
            reference[family][dtype] = rule_of(d)
            if not d["shapes"]:
                notes[(family, dtype)] = f"{ref}: no usable plan on the grid: auto stays stepwise"
            elif not d["max_batch"]:
                notes[(family, dtype)] = f"{ref}: no shape predicted to win: auto stays stepwise"
            model_dtype = "bfloat16" if dtype == "float16" else dtype
            wide = derive_family_rule([models[m] for m in members], [derived[m][dtype] for m in members],
                                      model_dtype, built_variant(dtype), margin)
            family_wide[family][dtype] = rule_of(wide)
    return reference, family_wide, notes


def print_cpp_table(models, derived, margin, cell="lstm"):
    """Prints the rule table of csrc/persistent_dispatch.cpp persistent_rule derived for `cell`
    from each family's reference device, how the family's other devices fare under it, and
    the table derived from every modelled device of each family together; for a cell other
    than the LSTM (whose rows it uses), also how the rows in use compare with its own. Returns
    both tables and that comparison ({} for the LSTM)."""
    reference, family_wide, notes = family_rule_tables(models, derived, margin)
    target = ("for csrc/persistent_dispatch.cpp persistent_rule" if cell == "lstm" else
              "the rows csrc/persistent_dispatch.cpp persistent_rule would hold for the "
              f"{CELL_LABELS[cell]} were it keyed by cell (it is not: the {CELL_LABELS[cell]} "
              "uses the LSTM's rows)")
    print(f"\nDerived rule table{of_cell(cell).replace(' of', ' for')} (PREDICTIONS: persistent "
          f"fwd+bwd < {margin} x stepwise, the "
          f"variant built for each dtype, float16 as bfloat16; reference device per family: "
          f"{', '.join(f'{f} <- {d}' for f, d in FAMILY_REFERENCE.items())}), {target}:")
    print("  // {family, storage, B at most, B*H at most, L at least}")
    print("\n".join(cpp_rows(reference, notes)))
    print("The family's other devices under the reference device's rule (their own derived rule "
          "B/B*H/L; grid shapes the reference rule admits that they predict to lose, and rejects "
          "that they predict to win):")
    others = []
    for name in DEVICE_NAMES:
        family = family_of_capability(DEVICE_CAPABILITY[name])
        if name == FAMILY_REFERENCE[family] or name not in derived or family not in reference:
            continue
        others.append(name)
        cells = []
        for dtype in STORAGE_ENUM:
            d = derived[name][dtype]
            own, ref = rule_of(d), reference[family][dtype]
            admitted, rejected = compare_rule(d, ref)
            verdict = ("the same rule" if own == ref else f"own {own[0]}/{own[1]}/{own[2]}") + (
                f", admits {len(admitted)} losing {admitted[:4]}{'...' if len(admitted) > 4 else ''}"
                f", rejects {len(rejected)} winning" if admitted or rejected else
                ", no grid shape misplaced")
            cells.append(f"{dtype} {verdict}")
        print(f"  {name} ({family}, reference {FAMILY_REFERENCE[family]}):\n    " + ";\n    ".join(cells))
    if not others:
        print("  (none modelled)")
    differs = [f for f in family_wide if family_wide[f] != reference[f]]
    members = {f: [n for n in DEVICE_NAMES if n in derived
                   and family_of_capability(DEVICE_CAPABILITY[n]) == f] for f in FAMILIES}
    print("Derived from every modelled device of the family together (a shape wins where every "
          "device with a plan for it predicts a win; L: the largest any needs): "
          + "; ".join(f"{f} over {', '.join(members[f])}" for f in FAMILIES if f in family_wide)
          + (f"; differs from the reference rows for {', '.join(differs)}:" if differs else
             "; the same as the reference rows."))
    if differs:
        print("\n".join(cpp_rows({f: family_wide[f] for f in differs})))
    rule_in_use = {}
    if cell != "lstm":
        in_use = current_rules()
        print(f"{CELL_LABELS[cell]} derived rule vs the LSTM's rule in use, per family (derived "
              "on its reference device; PREDICTIONS):")
        for family in (f for f in FAMILIES if f in reference):
            ref = FAMILY_REFERENCE[family]
            for dtype in STORAGE_ENUM:
                rule = in_use.get(family, {}).get(dtype)
                agrees, words = rule_in_use_verdict(models[ref], derived[ref][dtype], rule, dtype,
                                                    margin)
                rule_in_use.setdefault(family, {})[dtype] = {
                    "agrees": agrees, "in_use": list(rule) if rule else None,
                    "derived": list(reference[family][dtype]), "verdict": words}
                print(f"  {family:11s} {dtype:9s} in use {rule_words(rule)} | derived ({ref}) "
                      f"{rule_words(reference[family][dtype])} | {words}")
    return reference, family_wide, rule_in_use


DEVICE_CAPABILITY = {}


def of_cell(cell):
    """The words naming a cell other than the LSTM in a report's headings ("" for the LSTM,
    whose report reads as it did before the cells)."""
    return "" if cell == "lstm" else f" of the {CELL_LABELS[cell]}"


def rule_in_use_verdict(model, derived, rule, dtype, margin):
    """(agrees, words): the rule row in use, (max_batch, max_batch_hidden, min_steps) or None,
    against `derived` (derive_rule's output for the model's cell, which uses another cell's
    rows: the GRU; dtype: the storage type of the row, float16 modelled as bfloat16): agrees
    where the row is the one the derivation gives; else which limits differ, the grid shapes
    the row in use sends the wrong way at L = CHUNK, and whether its L limit admits chunks
    shorter than the shapes it admits need."""
    if rule is None:
        return False, "no row for this family and dtype in the table"
    own = rule_of(derived)
    if tuple(rule) == own:
        return True, "agrees (the same row)"
    limits = [f"{name} {mine} vs {theirs}" for name, mine, theirs
              in zip(("B", "B*H", "L"), own, rule) if mine != theirs]
    admitted, rejected = compare_rule(derived, rule)
    admitted_wins = [(H, B) for H, B, win, _ in derived["shapes"]
                     if win and B <= rule[0] and H * B <= rule[1]]
    needed, where = min_steps_of(model, "bfloat16" if dtype == "float16" else dtype,
                                 built_variant(dtype), margin, admitted_wins)
    short = (f"; its L >= {rule[2]} admits chunks shorter than the {needed} steps the shapes "
             f"it admits need (at H, B = {where})" if needed and needed > rule[2] else
             "; conservative: no shape or chunk length it admits is predicted to lose"
             if not admitted else "")
    return False, (f"DISAGREES: {', '.join(limits)} (derived vs in use); at L = {CHUNK} the row "
                   f"in use admits {len(admitted)} grid shapes predicted to lose {admitted[:4]}"
                   f"{'...' if len(admitted) > 4 else ''}, rejects {len(rejected)} predicted to win "
                   f"{rejected[:4]}{'...' if len(rejected) > 4 else ''}{short}")


def rule_words(rule):
    """A rule row (max_batch, max_batch_hidden, min_steps) as the reports write it."""
    return f"B <= {rule[0]}, B*H <= {rule[1]}, L >= {rule[2]}" if rule else "none"


def report_device(device, args, barrier_json=None, note=None, cell="lstm"):
    """Prints the model's inputs, predictions and rule comparison for one layer of `cell`
    (lstm, gru: the cells with persistent kernels) on one device (`note` under its header);
    returns what --json writes for it, the model and the derived rules of the variants built."""
    from tbptt_cuda import emulation

    preset = emulation.devices()[device]
    family = family_of_capability(preset["capability"])
    model, inputs = build_model(device, barrier_json, cell)
    print("PREDICTIONS of bench/gpu_model.py (a cost model; nothing below was measured by it): "
          f"{DEVICE_LABELS[device]}, one layer{of_cell(cell)}, I = H, chunk L = k2 = {CHUNK}; "
          f"commit {git_commit()}")
    if cell != "lstm":
        print(f"The {CELL_LABELS[cell]}'s persistent kernels are the LSTM's, templated on the "
              f"cell: G = {CELLS[cell].gates}H (a block keeps {CELLS[cell].gates}u rows of W_hh "
              f"forward, [u, {CELLS[cell].gates}H] columns backward; the k of the backward "
              "product runs over G), their plan the emulator's for this cell; its pointwise "
              "element is costed as the LSTM's. csrc/persistent_dispatch.cpp's rule has no rows "
              f"of its own for the {CELL_LABELS[cell]}: auto uses the LSTM's.")
    print(f"Device {device} (the emulator's preset): compute capability "
          f"{preset['capability'] // 10}.{preset['capability'] % 10}, {preset['sms']} SMs, "
          f"{preset['shared_bytes_per_sm']} B shared memory per SM "
          f"({preset['shared_bytes_per_block_optin']} per block), {preset['threads_per_sm']} "
          f"threads per SM; rule table family {family}")
    if note:
        print(note)
    print("\nInputs (kind: spec = datasheet; sass = read from nvcc's compiled kernels, no GPU; "
          "measured = on a GPU, where stated; published = a third party's figure; "
          "assumption = not measured):")
    for name, item in inputs.items():
        value = f"{item.value:>8g}" if item.value is not None else f"{'n/a':>8s}"
        print(f"  {name:24s} {value} {item.unit:22s} {item.kind:11s} {item.source}")

    rows = [model.row(H, B, dtype) for dtype in DTYPES for H in TABLE_H for B in TABLE_B]
    cudnn_fwd, cudnn_fwdbwd = inputs["cudnn_fwd_us"].value, inputs["cudnn_fwdbwd_us"].value
    print("\nPREDICTED us/step (ffma: the FFMA persistent kernels, built for float32/float64; mma: "
          "the tensor-core variant, built for float16/bfloat16; cuDNN: published, fp16 H=768 B=16 "
          f"only{'' if cudnn_fwd is not None else ', none for this GPU'}; built/step: the built "
          "variant over stepwise)")
    print(f"{'dtype':9s} {'H':>5s} {'B':>4s} {'plan: P x u, thr, tile, ks':>27s} | "
          f"{'fwd: step':>9s} {'ffma':>7s} {'mma':>7s} {'cuDNN':>7s} | "
          f"{'f+b: step':>9s} {'ffma':>7s} {'mma':>7s} {'cuDNN':>7s} | {'built/step':>10s}")
    for r in rows:
        p = r["plan"]
        plan = (f"{p['blocks']}x{p['units']}, {p['threads']}, {p['batch_tile']}, {p['k_split']}"
                if r["usable"] else "no plan")
        cudnn = r["H"] == 768 and r["B"] == 16 and BYTES[r["dtype"]] == 2
        built = r[f"{built_variant(r['dtype'])}_fwdbwd"]
        ratio = built / r["stepwise_fwdbwd"] if built else None
        print(f"{r['dtype']:9s} {r['H']:5d} {r['B']:4d} {plan:>27s} | {fmt(r['stepwise_fwd'], 9)} "
              f"{fmt(r['ffma_fwd'])} {fmt(r['mma_fwd'])} "
              f"{fmt(cudnn_fwd if cudnn else None)} | "
              f"{fmt(r['stepwise_fwdbwd'], 9)} {fmt(r['ffma_fwdbwd'])} {fmt(r['mma_fwdbwd'])} "
              f"{fmt(cudnn_fwdbwd if cudnn else None)} | "
              f"{(f'{ratio:10.2f}') if ratio else 'n/a':>10s}")
    for r in rows:
        if not r["usable"]:
            print(f"  no persistent plan for {r['dtype']} H={r['H']} B={r['B']}: {r['reason']}")

    reference = next(r for r in rows if r["dtype"] == "bfloat16" and r["H"] == 768 and r["B"] == 16)
    if reference["usable"]:
        print("\nPREDICTED terms at bfloat16 H=768 B=16 (us per step; the study's 5.7 predicted "
              "~1.7 fwd and ~2.9 bwd on an H100 for a design with vectorised, prefetched staging):"
              if device != "H100" else
              "\nPREDICTED terms at bfloat16 H=768 B=16 (us per step; the study's 5.7 predicted "
              "~1.7 fwd and ~2.9 bwd for a design with vectorised, prefetched staging):")
        for variant in ("ffma", "mma"):
            terms = reference[f"{variant}_terms"]
            print(f"  {variant}: " + "; ".join(f"{k} {v:.2f}" for k, v in terms.items()))

    rules = current_rules()
    family_rules = rules.get(family, {})
    derived = {}
    in_use = "" if cell == "lstm" else f", the LSTM's, which the {CELL_LABELS[cell]} uses"
    print(f"\nRule (csrc/persistent_dispatch.cpp persistent_rule, parsed; the {family} rows"
          f"{in_use}) vs the rule the PREDICTIONS imply{of_cell(cell).replace(' of', ' for')} "
          f"(persistent fwd+bwd < {args.margin} x stepwise; grid "
          f"H in {RULE_H}, B in {RULE_B}, usable plans only):")
    built_derived = {}  # dtype: the derivation of the variant built for it, shapes included
    for dtype in DTYPES + ("float16",):
        model_dtype = "bfloat16" if dtype == "float16" else dtype
        for variant in (("ffma", "mma") if BYTES[dtype] == 2 else ("ffma",)):
            d = derive_rule(model, model_dtype, variant, args.margin)
            derived[f"{dtype}/{variant}"] = {k: v for k, v in d.items() if k != "shapes"}
            if variant == built_variant(dtype):
                built_derived[dtype] = d
            rule = family_rules.get(dtype)
            admitted, rejected = compare_rule(d, rule) if rule else ([], [])
            limits = rule and (rule[0], rule[1]) == (d["max_batch"], d["max_batch_hidden"])
            verdict = ("no row for this family and dtype in the table" if not rule else
                       "agrees" if not admitted and not rejected else
                       f"agrees (the derived limits; {len(rejected)} shapes past the first loss "
                       f"predicted to win stay stepwise) {rejected[:6]}"
                       f"{'...' if len(rejected) > 6 else ''}" if not admitted and limits else
                       f"DISAGREES: admits {len(admitted)} shapes predicted to lose "
                       f"{admitted[:6]}{'...' if len(admitted) > 6 else ''}; rejects "
                       f"{len(rejected)} predicted to win {rejected[:6]}"
                       f"{'...' if len(rejected) > 6 else ''}")
            label = f"{variant} built" if variant == built_variant(dtype) else f"{variant} what-if"
            steps = (f"L >= {d['min_steps']} (at H, B = {d['min_steps_shape']})"
                     if d["min_steps"] else "no L")
            if not d["shapes"]:
                steps += " (no usable plan on the grid)"
            elif not d["max_batch"]:
                steps += " (no shape predicted to win)"
            current = (f"rule: B <= {rule[0]}, B*H <= {rule[1]}, L >= {rule[2]}" if rule else
                       "rule: none")
            print(f"  {dtype:9s} {label:11s} {current}"
                  f" | predicted: B <= {d['max_batch']}, B*H <= {d['max_batch_hidden']} (first "
                  f"loss at B*H = {d['first_loss_batch_hidden']}), {steps} | "
                  f"{verdict if variant == built_variant(dtype) else '(not built) ' + verdict}")
    rule_in_use = {}  # a cell using the LSTM's rows: does the row it uses fit it?
    if cell != "lstm":
        print(f"\n{CELL_LABELS[cell]} derived rule vs the LSTM's rule in use (the {family} rows; "
              f"derived on {device} for the variant built for each dtype, float16 as bfloat16; "
              "PREDICTIONS):")
        for dtype in STORAGE_ENUM:
            rule, own = family_rules.get(dtype), rule_of(built_derived[dtype])
            agrees, words = rule_in_use_verdict(model, built_derived[dtype], rule, dtype,
                                                args.margin)
            rule_in_use[dtype] = {"agrees": agrees, "in_use": list(rule) if rule else None,
                                  "derived": list(own), "verdict": words}
            print(f"  {family} {dtype:9s} in use {rule_words(rule)} | derived for the "
                  f"{CELL_LABELS[cell]} {rule_words(own)} | {words}")

    print("\nThe same derivation under other inputs (max B, max B*H; PREDICTIONS):")
    scenario_results = {}
    scenarios = {**SCENARIOS, **DEVICE_SCENARIOS.get(device, {})}
    for name, changes in scenarios.items():
        other = Model(with_inputs(inputs, changes), model.plan_of, model.cell)
        cells = []
        for dtype, variant in (("float32", "ffma"), ("bfloat16", "ffma"), ("bfloat16", "mma")):
            d = derive_rule(other, dtype, variant, args.margin)
            scenario_results[f"{name}/{dtype}/{variant}"] = {k: v for k, v in d.items() if k != "shapes"}
            cells.append(f"{dtype} {variant}: B <= {d['max_batch']}, B*H <= {d['max_batch_hidden']}")
        ref = other.row(768, 16, "bfloat16")
        tail = (f"; bf16 H=768 B=16 fwd+bwd: stepwise {ref['stepwise_fwdbwd']:.1f}, ffma "
                f"{ref['ffma_fwdbwd']:.1f}, mma {ref['mma_fwdbwd']:.1f}" if ref["usable"] else
                f"; bf16 H=768 B=16: no plan, stepwise {ref['stepwise_fwdbwd']:.1f}")
        print(f"  {name:27s} ({', '.join(f'{k}={v}' for k, v in changes.items())})")
        print(f"  {'':27s} {'; '.join(cells)}{tail}")

    if args.paths_json and Path(args.paths_json).exists():
        measured = json.loads(Path(args.paths_json).read_text())
        print(f"\nMEASURED (bench/gpu_paths.py on {measured['header'].get('device')}) / PREDICTED, "
              f"forward+backward us/step{of_cell(cell)}:")
        predicted = {(r["dtype"], r["H"], r["B"]): r for r in rows}
        for m in measured["rows"]:
            r = predicted.get((m["dtype"], m["H"], m["B"]))
            if r is None or m.get("cell", "lstm") != cell:  # rows of before the cells: the LSTM's
                continue
            parts = []
            built = f"{built_variant(m['dtype'])}_fwdbwd"
            for path, key in (("persistent", built), ("stepwise", "stepwise_fwdbwd")):
                got = m.get(f"{path}_fwdbwd_us")
                parts.append(f"{path} {fmt(got)} / {fmt(r[key])}")
            print(f"  {m['dtype']:9s} H={m['H']:5d} B={m['B']:3d}: " + "; ".join(parts))

    report = {"device": device, "cell": cell, "family": family, "preset": preset,
              "inputs": {k: dataclasses.asdict(v) for k, v in inputs.items()},
              "rows": rows, "derived_rules": derived, "scenarios": scenario_results,
              "current_rules": {k: list(v) for k, v in family_rules.items()},
              "rule_row": {dtype: list(rule_of(built_derived[dtype])) for dtype in STORAGE_ENUM}}
    if rule_in_use:
        report["rule_in_use_vs_derived"] = rule_in_use
    return report, model, {dtype: built_derived[dtype] for dtype in STORAGE_ENUM}


def cell_rows(model, cells, proj=None):
    """The stepwise predictions of `cells` next to the LSTM's over DTYPES x TABLE_H x TABLE_B:
    per row, each cell's forward and forward+backward us/step and their ratio to the LSTM's
    (None where --proj gives no valid P for that H)."""
    rows = []
    for dtype in DTYPES:
        for H in TABLE_H:
            for B in TABLE_B:
                row = {"dtype": dtype, "H": H, "B": B}
                for cell in ("lstm",) + tuple(cells):
                    P = (proj or default_proj(H)) if CELLS[cell].projected else None
                    if P is not None and not 0 < P < H:
                        row[cell] = None
                        continue
                    fwd, both, terms = model.stepwise(H, B, dtype, CHUNK, cell, P)
                    work = cell_work(cell, H, B, dtype, CHUNK, P)
                    row[cell] = {"fwd": fwd, "fwdbwd": both, "P": P, "terms": terms,
                                 "step_gemm_flops_fwd": [f for f, _ in work["fwd_gemms"]],
                                 "step_gemm_flops_bwd": [f for f, _ in work["bwd_gemms"]]}
                    if cell != "lstm":
                        row[cell]["fwd_vs_lstm"] = fwd / row["lstm"]["fwd"]
                        row[cell]["fwdbwd_vs_lstm"] = both / row["lstm"]["fwdbwd"]
                rows.append(row)
    return rows


def report_cells(device, cells, proj=None):
    """Prints the stepwise-only table of `cells` (gru, lstmp) against the LSTM for one device;
    returns what --json writes for it. Needs neither a GPU nor the emulator's plans."""
    stepwise_only = [c for c in cells if CELLS[c].projected]  # no persistent kernels
    with_persistent = ["lstm"] + [c for c in cells if not CELLS[c].projected]
    model = Model(default_inputs(device), plan_of=None)
    print("PREDICTIONS of bench/gpu_model.py (a cost model; nothing below was measured by it): "
          f"{DEVICE_LABELS[device]}, the stepwise CUDA path of one layer per cell, I = H, chunk "
          f"L = k2 = {CHUNK}; commit {git_commit()}")
    print(f"The model does not cover the persistent kernels of the "
          f"{' or the '.join(CELL_LABELS[c] for c in stepwise_only)}"
          " (two grid barriers and two products a step each way): below, its stepwise path (per "
          "step cuBLAS GEMMs and pointwise kernels, each launched by the host) at every shape. The "
          f"{' and '.join(CELL_LABELS[c] for c in with_persistent)} columns are the stepwise path "
          "as well (their persistent predictions: bench/gpu_model.py without --cell"
          + (", and with --cell gru" if "gru" in cells else "") + ").")
    print("Per step, forward and again backward (G = gates x H):")
    shapes = {
        "lstm": "1 GEMM [B, H] x [H, 4H] (backward [B, 4H] x [4H, H]) + 1 pointwise pass",
        "gru": "1 GEMM [B, H] x [H, 3H] (backward [B, 3H] x [3H, H]; 3/4 of the LSTM's flops "
               "and weights) + 1 pointwise pass; backward also a [B, 3H] copy of dGh (a small "
               "kernel); per window 2 copies [W*B, 3H] (dGh, dGx)",
        "lstmp": "2 GEMMs, [B, P] x [P, 4H] and [B, H] x [H, P] (backward [B, P] x [P, H] and "
                 "[B, 4H] x [4H, P]) + 2 pointwise passes ([B, H] and [B, P]); per window a 4th "
                 "weight GEMM dW_hr and m = o tanh(c) rebuilt (2 kernels); P = "
                 + (f"{proj}" if proj else "H/2"),
    }
    for cell in ("lstm",) + tuple(cells):
        print(f"  {cell:6s} {shapes[cell]}")
    rows = cell_rows(model, cells, proj)
    print("\nPREDICTED us/step, stepwise (x: over the LSTM's of the same dtype, H and B; each step "
          "is max(GPU, host), so where the host's launches bound it, fewer flops buy nothing):")
    head = f"{'dtype':9s} {'H':>5s} {'B':>4s} | {'lstm fwd':>9s} {'f+b':>7s}"
    for cell in cells:
        head += " |" + (f" {'P':>5s}" if CELLS[cell].projected else "")
        head += f" {cell + ' fwd':>10s} {'x':>5s} {'f+b':>7s} {'x':>5s}"
    print(head)
    for r in rows:
        line = (f"{r['dtype']:9s} {r['H']:5d} {r['B']:4d} | {fmt(r['lstm']['fwd'], 9)} "
                f"{fmt(r['lstm']['fwdbwd'])}")
        for cell in cells:
            c = r[cell]
            line += " |" + (f" {c['P'] if c else 'n/a':>5}" if CELLS[cell].projected else "")
            if c is None:
                line += f" {'n/a':>10s} {'':5s} {'n/a':>7s} {'':5s}"
            else:
                line += (f" {fmt(c['fwd'], 10)} {c['fwd_vs_lstm']:5.2f} {fmt(c['fwdbwd'])} "
                         f"{c['fwdbwd_vs_lstm']:5.2f}")
        print(line)
    return {"device": device, "cells": ["lstm", *cells], "proj": proj,
            "inputs": {k: dataclasses.asdict(v) for k, v in default_inputs(device).items()},
            "rows": rows}


def measured_device(paths):
    """The preset the measurements in these JSON files (their header's device) were taken on,
    the GPU's name as written, or (None, None)."""
    for path in paths:
        if path and Path(path).exists():
            name = json.loads(Path(path).read_text()).get("header", {}).get("device")
            if name:
                return device_of_name(name), name
    return None, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=parse_device, default=None,
                        metavar="{" + ",".join(DEVICE_NAMES) + ",all}",
                        help="the GPU modelled (the emulator's preset of that name), or all of "
                             "them in turn followed by the derived rule table (default: the GPU "
                             "--barrier-json/--paths-json were measured on where it is one of "
                             "them, else H100)")
    parser.add_argument("--cpp-table", action="store_true",
                        help="end with the derived rule table of every family (runs the "
                             "reference devices' derivations; --device all prints it anyway)")
    parser.add_argument("--json", default=None, help="write every prediction and input here")
    parser.add_argument("--margin", type=float, default=0.8,
                        help="persistent 'wins' below this fraction of the stepwise time")
    parser.add_argument("--barrier-json", default=None,
                        help="bench/barrier_latency.py output: its measured barrier replaces the assumed one")
    parser.add_argument("--paths-json", default=None,
                        help="bench/gpu_paths.py output: print the measured us/step next to the predicted")
    parser.add_argument("--cell", choices=("gru", "lstmp", "all"), default=None,
                        help="gru: the report above for the GRU instead of the LSTM (its "
                             "persistent kernels are the LSTM's over G = 3H; the rule derived "
                             "for it against the LSTM's rows, which it uses); lstmp: the "
                             "stepwise-only table of the LSTM with projections next to the "
                             "LSTM's (its persistent kernels are not modelled; takes --device, --proj "
                             "and --json only); all: the GRU's report, then the stepwise-only "
                             "table of both cells")
    parser.add_argument("--proj", type=int, default=None, metavar="P",
                        help="with --cell lstmp or all: the LSTMP's proj_size (default H/2; "
                             "0 < P < H, else that row is n/a)")
    args = parser.parse_args(argv)
    if args.proj is not None and args.cell not in ("lstmp", "all"):
        parser.error("--proj goes with --cell lstmp or --cell all")
    if args.proj is not None and args.proj <= 0:
        parser.error("--proj must be positive")
    if args.cell == "lstmp" and (args.cpp_table or args.paths_json or args.barrier_json):
        parser.error("--cell lstmp prints the stepwise-only table: it takes no --cpp-table, "
                     "--paths-json or --barrier-json")
    if args.cell == "lstmp":
        return write_json(args.json, {"cell_tables": print_cell_tables(args)})
    cell = "gru" if args.cell else "lstm"  # the cells with persistent kernels

    from tbptt_cuda import emulation

    DEVICE_CAPABILITY.update({name: emulation.devices()[name]["capability"] for name in DEVICE_NAMES})
    barrier = args.barrier_json if args.barrier_json and Path(args.barrier_json).exists() else None
    measured_on, measured_name = measured_device([barrier, args.paths_json])
    if args.device is None:  # scripts/gpu_check.sh: model the GPU it measured
        args.device = measured_on or "H100"
    devices = DEVICE_NAMES if args.device == "all" else (args.device,)
    reports, models, derived = {}, {}, {}
    for index, device in enumerate(devices):
        if index:
            print("\n" + "=" * 100 + "\n")
        note = None
        if measured_name and measured_on != device:
            note = (f"NOTE: the measurements given (--barrier-json/--paths-json) come from "
                    f"{measured_name}, not the {device} modelled here"
                    + (f"; bench/gpu_model.py --device {measured_on} models that GPU"
                       if measured_on else ""))
        # with --device all, a measured barrier replaces the assumed one of its own device only
        use_barrier = barrier if (len(devices) == 1 or measured_on == device) else None
        reports[device], models[device], derived[device] = report_device(device, args, use_barrier,
                                                                         note, cell)

    out = {**reports[devices[0]]} if len(devices) == 1 else {"devices": reports}
    if args.device == "all" or args.cpp_table:
        for device in DEVICE_NAMES:
            if device not in models:  # the devices not reported on, with the inputs assumed
                models[device], _ = build_model(device, barrier if measured_on == device else None,
                                                cell)
                derived[device] = built_rules(models[device], args.margin)
        reference, family_wide, rule_in_use = print_cpp_table(models, derived, args.margin, cell)
        for key, table in (("family_rules", reference), ("family_rules_all_devices", family_wide)):
            out[key] = {f: {d: list(r) for d, r in rows.items()} for f, rows in table.items()}
        if rule_in_use:
            out["family_rule_in_use_vs_derived"] = rule_in_use
    if args.cell == "all":
        print("\n" + "=" * 100 + "\n")
        out["cell_tables"] = print_cell_tables(args)
    return write_json(args.json, out)


def write_json(path, report):
    """--json: `report` labelled PREDICTIONS with the commit, where a path is given; returns
    main's exit status."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        out = {"kind": "PREDICTIONS", "commit": git_commit(), **report}
        Path(path).write_text(json.dumps(out, indent=1, default=str))
    return 0


def print_cell_tables(args):
    """--cell lstmp or all: the stepwise tables of LSTMP (and the GRU) next to the LSTM's per
    device (no plans, no emulator); returns them per device."""
    cells = ("gru", "lstmp") if args.cell == "all" else (args.cell,)
    devices = DEVICE_NAMES if args.device == "all" else (args.device or "H100",)
    reports = {}
    for index, device in enumerate(devices):
        if index:
            print("\n" + "=" * 100 + "\n")
        reports[device] = report_cells(device, cells, args.proj)
    return reports


if __name__ == "__main__":
    sys.exit(main())
