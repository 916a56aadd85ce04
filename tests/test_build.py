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
