"""Build facts: build_info, the info command, and the just-in-time fallback's error."""
import subprocess
import sys

import pytest
import torch

import tbptt_cuda
from tbptt_cuda import _backend, _build


def test_build_info_reports_the_build():
    info = tbptt_cuda.build_info()
    assert info["torch"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], str)
    if info["cuda"]:
        assert info["cuda_archs"]
    assert hasattr(torch.ops.tbptt, "chunk_forward") and hasattr(torch.ops.tbptt, "window_backward")


def test_info_command_checks_backends():
    result = subprocess.run([sys.executable, "-m", "tbptt_cuda.info"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu           torch.float64" in result.stdout and "FAIL" not in result.stdout
    if tbptt_cuda.build_info()["cuda_emulation"]:
        assert "emulated cuda torch.float32" in result.stdout


def test_cuda_home_found_by_headers():
    home = _build.find_cuda_home()
    if home is not None:
        import os
        assert os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def test_failed_just_in_time_build_names_the_fix(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def failing_load(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    with pytest.raises(ImportError, match=r"pip install --no-build-isolation -e \."):
        _backend._build_just_in_time(ImportError("no _C"))



def _x86_v4_row_loops(library):
    """{symbol: disassembly} of the x86-64-v4 clones of the CPU element loops (lstm_cpu.cpp)."""
    import re
    import shutil

    if shutil.which("objdump") is None or shutil.which("nm") is None:
        pytest.skip("no objdump / nm")
    symbols = subprocess.run(["nm", "--defined-only", library], capture_output=True, text=True).stdout
    clones = sorted(set(re.findall(r"(\S*(?:_rows_|_units_)\S*\.arch_x86_64_v4)$", symbols, re.M)))
    if not clones:
        pytest.skip("no target_clones row loops in this build (not x86-64 GCC)")
    return {symbol: subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={symbol}",
                                    library], capture_output=True, text=True).stdout
            for symbol in clones}


def test_cpu_row_loops_are_inlined_into_each_clone():
    """Every element loop's x86-64-v4 clone holds its loop (AVX-512 and, where it has exp/tanh,
    vector math; float16's are scalar) and calls nothing of ours: a loop left out of line is built for the baseline
    ISA only, slower and with scalar roundings (it happened once, when lstm_cpu.cpp grew;
    always_inline keeps it so)."""
    listing = _x86_v4_row_loops(_backend.load().__file__)
    assert len(listing) >= 20, sorted(listing)  # (lstm, gru, projection) x 4 dtypes x 2 + ...
    for symbol, text in listing.items():
        calls = [line for line in text.splitlines() if "call" in line.split("\t")[-1][:5]]
        ours = [line for line in calls if "@plt" not in line and "ZGV" not in line]
        assert not ours, (symbol, ours[:3])
        if "_half" in symbol:  # _Float16 loops are not vectorised (float16 is for correctness)
            continue
        assert "zmm" in text, symbol
        if calls:
            assert any("ZGV" in line for line in calls), (symbol, "scalar math only")
