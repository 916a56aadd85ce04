"""A small CUDA run for compute-sanitizer (memcheck, racecheck, synccheck): forward and backward
of a few chunks with resets, dropout and ring wrap-around, in float32 and bfloat16, on both
CUDA paths: the persistent kernels (set_cuda_path("persistent"): every chunk, even of one
step, in one cooperative launch per layer) and the stepwise ones."""
import torch

import tbptt_cuda
from tbptt_cuda import TruncatedLSTM


def run(path, dtype):
    torch.manual_seed(0)
    lstm = TruncatedLSTM(5, 40, 2, dropout=0.2, k2=6, device="cuda", dtype=dtype)
    state = None
    for L in (3, 5, 1, 6, 4):
        x = torch.randn(L, 3, 5, device="cuda", dtype=dtype, requires_grad=True)
        reset = torch.rand(L, 3, device="cuda") < 0.2
        out, state = lstm(x, state, reset=reset)
        (out.float().pow(2).sum() + state[1].float().sum()).backward()


def main():
    try:
        for path in ("persistent", "stepwise"):
            tbptt_cuda.set_cuda_path(path)  # "persistent" raises where no plan fits
            for dtype in (torch.float32, torch.bfloat16):
                run(path, dtype)
            torch.cuda.synchronize()
            print(f"sanitize run, {path} path: ok")
    finally:
        tbptt_cuda.set_cuda_path("auto")
    print("sanitize run: ok")


if __name__ == "__main__":
    main()
