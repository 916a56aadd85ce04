"""`python -m tbptt_cuda.info`: how the extension was built, and a quick check of every
available backend (CPU; the CUDA kernels under the SIMT emulator; CUDA where a GPU exists)
against the plain-PyTorch reference."""
import contextlib
import json
import os
import sys

import torch

from . import TruncatedLSTM, __version__, build_info, emulate_cuda
from .reference import ReferenceStream


def check_backend(device, dtype=torch.float64, k2=6, chunks=(4, 4, 3), emulated=False):
    """Max relative error of outputs and gradients vs the reference over a short stream
    (`emulated`: CPU tensors through the emulated CUDA kernels)."""
    with emulate_cuda() if emulated else contextlib.nullcontext():
        return _check(device, dtype, k2, chunks)


def _check(device, dtype, k2, chunks):
    torch.manual_seed(0)
    lstm = TruncatedLSTM(3, 8, 2, device=device, dtype=dtype, k2=k2)
    xs = [torch.randn(L, 2, 3, device=device, dtype=dtype) for L in chunks]
    results = {}
    for who in ("ours", "reference"):
        stream = ReferenceStream(lstm) if who == "reference" else None
        state, grads, outs = None, [], []
        for x in xs:
            lstm.zero_grad(set_to_none=True)
            if stream is None:
                out, state = lstm(x, state)
            else:
                out, _ = stream.chunk(x, k2)
            out.pow(2).sum().backward()
            outs.append(out.detach())
            grads.append([p.grad.detach().clone() for p in lstm.parameters()])
        results[who] = (outs, grads)
    worst = 0.0
    for a, b in zip(results["ours"][0], results["reference"][0]):
        worst = max(worst, ((a - b).norm() / b.norm()).item())
    for ga, gb in zip(results["ours"][1], results["reference"][1]):
        for a, b in zip(ga, gb):
            worst = max(worst, ((a - b).norm() / b.norm()).item())
    return worst


def location_line():
    """'tbptt_cuda <version> at <package folder>': which copy was imported (a checkout or an
    installed package)."""
    return f"tbptt_cuda {__version__} at {os.path.dirname(os.path.abspath(__file__))}"


def main():
    info = build_info()
    print(location_line())
    print(json.dumps(info, indent=2))
    backends = [("cpu", "cpu", False)]
    if info["cuda_emulation"]:
        backends.append(("emulated cuda", "cpu", True))
    if torch.cuda.is_available() and info["cuda"]:
        backends.append(("cuda", "cuda", False))
    ok = True
    for name, device, emulated in backends:
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            err = check_backend(device, dtype, emulated=emulated)
            good = err <= tol
            ok &= good
            print(f"{name:13s} {str(dtype):14s} max rel err vs reference {err:.2e} "
                  f"(<= {tol:g}): {'ok' if good else 'FAIL'}")
    if info["cuda"] and not torch.cuda.is_available():
        print("cuda          kernels compiled in; no GPU on this machine, so run here only "
              "under the emulator")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
