"""A small CUDA run for compute-sanitizer (memcheck, racecheck): forward and backward of a few
chunks with resets, dropout, ring wrap-around, in float32 and bfloat16."""
import torch

from tbptt_cuda import TruncatedLSTM


def main():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        lstm = TruncatedLSTM(5, 40, 2, dropout=0.2, k2=6, device="cuda", dtype=dtype)
        state = None
        for L in (3, 5, 1, 6, 4):
            x = torch.randn(L, 3, 5, device="cuda", dtype=dtype, requires_grad=True)
            reset = torch.rand(L, 3, device="cuda") < 0.2
            out, state = lstm(x, state, reset=reset)
            (out.float().pow(2).sum() + state[1].float().sum()).backward()
    torch.cuda.synchronize()
    print("sanitize run: ok")


if __name__ == "__main__":
    main()
