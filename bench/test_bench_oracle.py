"""The retained-graph recipe as a second oracle (collected by the bench run).

With fixed weights (no optimizer step), the retained-graph recipe, the re-run-the-window
baseline and TruncatedLSTM compute the same TBPTT(k1, k2) gradient (DESIGN.md section 2).
Per update: the chunk's outputs, every parameter's gradient and the gradient of the chunk's
input are compared by relative error ||a - b|| / ||b||. The benchmark fixture times the whole
check so that the test also runs under --benchmark-only; the largest errors go to extra_info.
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import baselines as bl

ORACLE_CASES = [
    # device, dtype, H, B, k1, k2, n, layers, I
    bl.Case("cpu", "f32", 16, 3, 4, 10, 42, 1, 12),  # k2 not a multiple of k1, short last chunk
    bl.Case("cpu", "f32", 16, 3, 5, 5, 23, 1, 12),  # BPTT(k,k)
    bl.Case("cpu", "f32", 16, 3, 3, 24, 24, 1, 12),  # k2 = n
    bl.Case("cpu", "f32", 16, 2, 4, 8, 20, 2, 12),  # two layers, BPTT(k,2k)
    bl.Case("cuda", "f32", 32, 4, 8, 16, 40, 1, 0),
    bl.Case("cuda", "f32", 32, 4, 8, 20, 44, 2, 0),
]
# relative error bounds: float32 on CPU (same math order up to GEMM blocking); on CUDA, cuDNN
# and our kernels reduce in different orders (TF32 is switched off for the check)
TOL = {("cpu", "f32"): 2e-5, ("cuda", "f32"): 1e-4, ("cpu", "f64"): 1e-11}


def _compare(case, variant, tol, reference="retained"):
    """Max relative errors of `variant` against the retained-graph recipe (or `reference`) over
    all updates."""
    wl = bl.Workload(case)
    ref = bl.make_runner(reference, wl, input_grad=True)
    dut = bl.make_runner(variant, wl, input_grad=True)
    for r in (ref, dut):
        r.model.zero_grad(set_to_none=True)
    errs = {"out": 0.0, "x_grad": 0.0, "param_grad": 0.0}
    names = [n for n, _ in ref.model.named_parameters()]
    n_updates = 0
    for (a, b, xr, outr), (a2, b2, xd, outd) in zip(ref.updates(), dut.updates(), strict=True):
        assert (a, b) == (a2, b2)
        n_updates += 1
        errs["out"] = max(errs["out"], bl.rel_err(outd, outr))
        errs["x_grad"] = max(errs["x_grad"], bl.rel_err(xd.grad, xr.grad))
        pd = dict(dut.model.named_parameters())
        for name, p in ref.model.named_parameters():
            e = bl.rel_err(pd[name].grad, p.grad)
            errs["param_grad"] = max(errs["param_grad"], e)
            assert e <= tol, (f"{variant} vs retained-graph recipe: {name}.grad rel err {e:.3g} "
                              f"> {tol} at update {n_updates} (steps [{a}, {b}))")
        for r in (ref, dut):
            r.model.zero_grad(set_to_none=True)
    assert n_updates == len(case.chunks())
    assert set(names) == set(dict(dut.model.named_parameters()))
    for k, e in errs.items():
        assert e <= tol, f"{variant} vs retained-graph recipe: {k} rel err {e:.3g} > {tol}"
    return errs


@contextlib.contextmanager
def plain_math():
    """No TF32 (cuDNN, matmul); CPU nn.LSTM without oneDNN.

    oneDNN builds a new RNN primitive per sequence length (tens of ms each); the plain ATen
    LSTM computes the same thing without that start-up cost.
    """
    prev = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with warnings.catch_warnings():  # mkldnn.flags() also sets oneDNN's TF32 and warns
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.mark.parametrize("variant", ["ours", "nn_rerun"])
@pytest.mark.parametrize("case", ORACLE_CASES, ids=lambda c: c.id)
def test_retained_graph_oracle(benchmark, case, variant):
    if variant == "ours" and bl.ours_class() is None:
        pytest.skip(f"tbptt_cuda not importable: {bl.ours_error()}")
    tol = TOL[case.device, case.dtype]
    with plain_math():
        errs = benchmark.pedantic(_compare, args=(case, variant, tol), rounds=1, iterations=1)
    benchmark.group = "oracle"
    benchmark.extra_info.update(kind="oracle", case=case.id, variant=variant, tol=tol,
                                **{f"max_rel_err_{k}": v for k, v in errs.items()})


# The other cells (issue 18): the retained-graph recipe is written for nn.LSTM's (h, c), so the
# re-run baseline is their oracle: ours and nn.GRU / nn.LSTM(proj_size) re-running the window
# do the same work, gradient for gradient (float64, so rounding alone separates them).
CELL_ORACLE_CASES = [bl.Case("cpu", "f64", 16, 3, 4, 10, 42, 1, 12, cell=cell)
                     for cell in ("gru", "lstmp")]


@pytest.mark.parametrize("case", CELL_ORACLE_CASES, ids=lambda c: c.id)
def test_other_cells_do_the_re_runs_work(benchmark, case):
    if bl.ours_class(case.cell) is None:
        pytest.skip(f"tbptt_cuda not importable: {bl.ours_error()}")
    tol = TOL[case.device, case.dtype]
    with plain_math():
        errs = benchmark.pedantic(_compare, args=(case, "ours", tol, "nn_rerun"), rounds=1,
                                  iterations=1)
    benchmark.group = "oracle"
    benchmark.extra_info.update(kind="oracle", case=case.id, variant="ours", tol=tol,
                                reference="nn_rerun",
                                **{f"max_rel_err_{k}": v for k, v in errs.items()})
