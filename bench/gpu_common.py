"""What the GPU scripts (barrier_latency.py, gpu_paths.py, gpu_model.py) print above their
tables: the device, its SM clock now and at most (nvidia-smi), torch, CUDA, cuDNN and the git
commit. Every figure is recorded with these (research/gpu_persistent.md: "Record device,
clocks and commit with every figure")."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit():
    """The commit of the tree, "-dirty" with uncommitted changes to tracked files; TBPTT_COMMIT
    when set (a copy of the tree without .git); "unknown" otherwise."""
    if os.environ.get("TBPTT_COMMIT"):
        return os.environ["TBPTT_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0 or not rev.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sm_clocks():
    """(current, max) SM clock in MHz from `nvidia-smi --query-gpu=clocks.sm,clocks.max.sm
    --format=csv` (first GPU), or (None, None) where nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm", "--format=csv"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None, None
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or len(lines) < 2:  # a header line, then one line per GPU
        return None, None
    values = []
    for field in lines[1].split(",")[:2]:
        try:
            values.append(int(field.strip().split()[0]))
        except (ValueError, IndexError):
            values.append(None)
    return (values + [None, None])[:2]


def device_info(device="cuda"):
    """A dict of what the figures were taken on. device "cpu": the emulated runs (no GPU)."""
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "commit": git_commit()}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        current, most = sm_clocks()
        info.update(device=props.name, sms=props.multi_processor_count, sm_clock_mhz=current,
                    max_sm_clock_mhz=most, cudnn=torch.backends.cudnn.version())
    else:
        info.update(device="CPU (SIMT emulator; no GPU)", sms=None, sm_clock_mhz=None,
                    max_sm_clock_mhz=None, cudnn=None)
    return info


def header_line(info):
    clocks = (f"SM clock {info['sm_clock_mhz']} MHz (max {info['max_sm_clock_mhz']} MHz)"
              if info.get("sm_clock_mhz") is not None else "SM clock n/a")
    sms = f", {info['sms']} SMs" if info.get("sms") else ""
    return (f"{info['device']}{sms}; {clocks}; torch {info['torch']} (CUDA {info['cuda']}, "
            f"cuDNN {info.get('cudnn')}); commit {info['commit']}")
