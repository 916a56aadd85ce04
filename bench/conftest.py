"""pytest-benchmark configuration of the bench suite (not collected by `pytest tests/`).

Quick subset by default; the full sweep of issue 4 with `--bench-full` or BENCH_FULL=1.
`--bench-device cpu|cuda|all` (or BENCH_DEVICE) restricts devices (default: all; CUDA cases
skip without a GPU). BENCH_THREADS=N sets torch's CPU threads (default: torch's choice).
The JSON goes to results/bench.json unless --benchmark-json says otherwise;
`python bench/summary.py` reads it, prints the ratio tables and draws the plots.
Run it on an idle machine: with other processes on the same cores, OpenMP barriers in every
step make timings (ours and oneDNN's alike) swing by 10-100x.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # also under --import-mode=importlib
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402

import baselines as bl  # noqa: E402

DEFAULT_JSON = BENCH.parent / "results" / "bench.json"
ENV_KNOBS = ("BENCH_FULL", "BENCH_DEVICE", "BENCH_THREADS")


def pytest_addoption(parser):
    g = parser.getgroup("tbptt bench")
    g.addoption("--bench-full", action="store_true", default=False,
                help="run the full sweep of issue 4 (also: BENCH_FULL=1); default: quick subset")
    g.addoption("--bench-device", default=os.environ.get("BENCH_DEVICE", "all"),
                choices=("all", "cpu", "cuda"), help="devices to run (default all)")


def is_full(config):
    return bool(config.getoption("--bench-full")) or os.environ.get("BENCH_FULL", "") not in (
        "", "0")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # always leave a JSON for summary.py
    if getattr(config.option, "benchmark_json", "missing") is None:
        config.option.benchmark_json = DEFAULT_JSON
    config._tbptt_load_at_start = round(os.getloadavg()[0], 2)  # before our own threads
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


# --------------------------------------------------------------------------------------------
# the sweeps

def _devices(config):
    d = config.getoption("--bench-device")
    return ["cpu", "cuda"] if d == "all" else [d]


def speed_cases(full, devices):
    cases = []
    if "cpu" in devices:
        if full:
            for H in (128, 256, 512, 1024):
                for B in (16, 64):
                    for k1 in (32, 128):
                        n = 4 * k1  # 2 cores: a size that keeps the sweep within the hour
                        for k2 in (k1, 2 * k1, n):
                            cases.append(bl.Case("cpu", "f32", H, B, k1, k2, n))
        else:
            for H in (128, 256):
                for k2 in (32, 64):
                    cases.append(bl.Case("cpu", "f32", H, 16, 32, k2, 512))
            cases.append(bl.Case("cpu", "f32", 128, 16, 32, 256, 256))  # k2 = n
    if "cuda" in devices:
        dts = ("f32", "bf16")
        if full:
            for dt in dts:
                for H in (128, 256, 512, 1024):
                    for B in (16, 64):
                        for k1 in (32, 128):
                            n = 2048
                            for k2 in (k1, 2 * k1, n):
                                cases.append(bl.Case("cuda", dt, H, B, k1, k2, n))
        else:
            for dt in dts:
                for H in (256, 1024):
                    for k2 in (32, 64):
                        cases.append(bl.Case("cuda", dt, H, 64, 32, k2, 2048))
    return cases


def memory_cases(full, devices):
    """Memory against n at fixed k1, k2 (BPTT(n,n) grows, TBPTT stays flat)."""
    cases = []
    ns = (1000, 2000, 5000, 10000) if full else (1000, 10000)
    if "cpu" in devices:
        for n in ns:
            cases.append(bl.Case("cpu", "f32", 256 if full else 128, 16, 32, 64, n))
    if "cuda" in devices:
        for dt in ("f32", "bf16") if full else ("f32",):
            for n in ns:
                cases.append(bl.Case("cuda", dt, 1024, 64, 32, 64, n))
    return cases


def mode_cases(full, devices):
    """History modes: H, I (16 or H), k2; B = 16, k1 = 32, a stream of k2 + 4 chunks."""
    cases = []
    if "cpu" in devices:
        for H in ((128, 256, 1024) if full else (128, 256)):
            for I in (16, H):
                for k2 in ((64, 256, 1024) if full else (64, 256)):
                    cases.append(bl.Case("cpu", "f32", H, 16, 32, k2, k2 + 4 * 32, 1,
                                         0 if I == H else I))
    return cases


def _params(cases, variants_of):
    out = []
    for c in cases:
        for v in variants_of(c):
            marks = [pytest.mark.cuda] if c.device == "cuda" else []
            out.append(pytest.param(c, v, id=f"{c.id}-{v}", marks=marks))
    return out


def pytest_generate_tests(metafunc):
    full = is_full(metafunc.config)
    devices = _devices(metafunc.config)
    names = metafunc.fixturenames
    if "speed_case" in names:
        metafunc.parametrize(("speed_case", "variant"),
                             _params(speed_cases(full, devices), bl.variants_for))
    if "mode_case" in names:
        with_full = "mode_memory" in metafunc.function.__name__
        metafunc.parametrize(("mode_case", "mode"), _params(
            mode_cases(full, devices),
            lambda c: ["ours", "ours_states", "ours_checkpoints", "nn_full"] if with_full
            else ["ours_states", "ours_checkpoints"]))
    if "mem_case" in names:
        def mem_variants(c):
            # quick: at the largest n only what the targets need (ours, BPTT(n,n)); the
            # retained recipe only where it is cheap
            if not full and c.n > 1000:
                return ["ours", "nn_full"]
            v = ["ours", "nn_full", "nn_chunked", "nn_rerun"]
            return v + (["retained"] if c.n <= 1000 else [])
        metafunc.parametrize(("mem_case", "variant"), _params(memory_cases(full, devices),
                                                              mem_variants))


# --------------------------------------------------------------------------------------------
# fixtures and reporting

@pytest.fixture(scope="session")
def bench_full(request):
    return is_full(request.config)


@pytest.fixture(autouse=True)
def _skip_without_device(request):
    spec = getattr(request.node, "callspec", None)
    if spec is None:
        return
    for v in spec.params.values():
        if isinstance(v, bl.Case):
            if v.device not in _devices(request.config):
                pytest.skip(f"{v.device} case: not selected by --bench-device/BENCH_DEVICE")
            if v.device == "cuda" and not torch.cuda.is_available():
                pytest.skip("CUDA case: no GPU on this machine")


def pytest_report_header(config):
    info = bl.machine_info()
    mode = ("full sweep" if is_full(config)
            else "quick subset (--bench-full or BENCH_FULL=1 for all)")
    lines = [f"tbptt bench: {mode}", bl.header_line(info), f"tbptt_cuda: {info['tbptt_cuda']}"]
    if info["loadavg_1min"] > 0.25 * (os.cpu_count() or 1):
        lines.append(f"WARNING: load average {info['loadavg_1min']} before the run: other "
                     "processes share the CPU, timings will be noisy (ratios less so)")
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["tbptt"] = bl.machine_info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    info = bl.machine_info()
    info["loadavg_1min_at_end"] = info["loadavg_1min"]
    info["loadavg_1min"] = getattr(config, "_tbptt_load_at_start", info["loadavg_1min"])
    output_json["tbptt"] = {
        "header": bl.header_line(info),
        "machine": info,
        "mode": "full" if is_full(config) else "quick",
        "command": " ".join([f"{k}={os.environ[k]}" for k in ENV_KNOBS if os.environ.get(k)]
                            + ["python -m pytest"]
                            + [str(a) for a in config.invocation_params.args]),
    }
    p = config.getoption("benchmark_json")
    if p:
        Path(p).parent.mkdir(parents=True, exist_ok=True)

