"""The package: one source for the version, an sdist that holds everything a build needs (and
works from where it is unpacked), and a clear error when torch is missing at build time.

The sdist is built once per session (`python -m build --sdist --no-isolation`, a few seconds:
no compilation); the fresh-venv install of it runs in CI (.ci/run), not here.
"""
import ast
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import textwrap

import pytest

import tbptt_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_SUFFIXES = (".h", ".cuh", ".cu", ".cpp")

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


def _pyproject():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


@pytest.mark.filterwarnings("ignore:Support for `\\[tool.setuptools\\]`")  # older setuptools call it beta
def test_version_has_one_source():
    project = _pyproject()
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tbptt_cuda.__version__"}
    # a literal assignment, so setuptools reads it without importing the package (and torch)
    with open(os.path.join(ROOT, "tbptt_cuda", "__init__.py")) as f:
        tree = ast.parse(f.read())
    literals = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
                and isinstance(node.value, ast.Constant)]
    assert literals == [tbptt_cuda.__version__]
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z]+\d+)?", tbptt_cuda.__version__)
    # and setuptools resolves the dynamic version to it
    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(os.path.join(ROOT, "pyproject.toml"), expand=True)
    assert config["project"]["version"] == tbptt_cuda.__version__
    assert tbptt_cuda.build_info()["version"] == tbptt_cuda.__version__


def test_changelog_names_the_version():
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        headings = [line[3:].strip() for line in f if line.startswith("## ")]
    assert "Unreleased" in headings or headings[0] == tbptt_cuda.__version__
    assert tbptt_cuda.__version__ in headings


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """(path of the built sdist, its member names without the top folder)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (make setup installs it)")
    out = tmp_path_factory.mktemp("dist")
    config = os.path.join(ROOT, "tbptt_cuda", "_build_config.py")
    before = open(config).read() if os.path.exists(config) else None
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ROOT],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # making an sdist runs setup.py but builds nothing: the build record stays as it was
    after = open(config).read() if os.path.exists(config) else None
    assert after == before, "building the sdist rewrote tbptt_cuda/_build_config.py"
    path = out / f"tbptt_cuda-{tbptt_cuda.__version__}.tar.gz"
    assert path.exists(), f"expected {path.name}, dist holds {os.listdir(out)}"
    top = f"tbptt_cuda-{tbptt_cuda.__version__}/"
    with tarfile.open(path) as tar:
        names = {m.name[len(top):] for m in tar.getmembers() if m.isfile()}
        assert all(m.name.startswith(top) or m.name == top.rstrip("/") for m in tar.getmembers())
        pkg_info = tar.extractfile(top + "PKG-INFO").read().decode()
    assert f"\nVersion: {tbptt_cuda.__version__}\n" in pkg_info
    return path, names


def _tree(folder, suffixes):
    found = set()
    for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(suffixes):
                found.add(os.path.relpath(os.path.join(base, name), ROOT).replace(os.sep, "/"))
    return found


def test_sdist_holds_every_source_and_no_build_output(sdist):
    _, names = sdist
    sources = _tree("csrc", SOURCE_SUFFIXES)
    assert {n for n in sources if n.endswith(".cu")} and {n for n in sources if n.endswith(".cuh")}
    assert sources <= names, f"missing from the sdist: {sorted(sources - names)}"
    package = _tree("tbptt_cuda", (".py",)) - {"tbptt_cuda/_build_config.py"}
    assert "tbptt_cuda/demo/__main__.py" in package
    assert package <= names, f"missing from the sdist: {sorted(package - names)}"
    assert {"setup.py", "pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in", "PKG-INFO"} <= names
    if os.path.exists(os.path.join(ROOT, "LICENSE")):
        assert "LICENSE" in names
    leaked = [n for n in names if n.endswith((".so", ".o", ".pyc")) or "__pycache__" in n
              or n == "tbptt_cuda/_build_config.py" or n.startswith((".venv/", "build/", "results/"))]
    assert not leaked, f"build outputs in the sdist: {leaked}"


def test_unpacked_sdist_finds_its_sources(sdist, tmp_path):
    """_build.py locates csrc relative to the package's parent: from an unpacked sdist every
    source of the fullest build (CUDA and emulator) is there, and so is every header they and
    the headers include (relative to the including file or to csrc/, the include path)."""
    path, _ = sdist
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp_path)
    unpacked = tmp_path / f"tbptt_cuda-{tbptt_cuda.__version__}"
    probe = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, sys.argv[1])
        import _build
        print(json.dumps({"csrc": _build.CSRC, "sources": _build.sources(True, True)}))
    """)
    result = subprocess.run([sys.executable, "-c", probe, str(unpacked / "tbptt_cuda")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    found = json.loads(result.stdout)
    csrc = str(unpacked / "csrc")
    assert os.path.samefile(found["csrc"], csrc)
    assert len(found["sources"]) >= 10
    for source in found["sources"]:
        assert os.path.isfile(source) and os.path.realpath(source).startswith(os.path.realpath(csrc)), source
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
    missing = []
    for base, _, files in os.walk(csrc):
        for name in files:
            with open(os.path.join(base, name), errors="replace") as f:
                for header in include.findall(f.read()):
                    if not (os.path.isfile(os.path.join(base, header)) or os.path.isfile(os.path.join(csrc, header))):
                        missing.append(f"{os.path.relpath(os.path.join(base, name), csrc)}: {header}")
    assert not missing, f"headers the sources include that the sdist lacks: {missing}"


_HIDE_TORCH = textwrap.dedent("""
    import os, sys

    class HideTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HideTorch())
    os.chdir(sys.argv[1])
    sys.path.insert(0, sys.argv[1])
""")


def _without_torch(code):
    return subprocess.run([sys.executable, "-c", _HIDE_TORCH + textwrap.dedent(code), ROOT],
                          capture_output=True, text=True, timeout=120)


def _says_what_to_do(result):
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "torch is not importable" in text, text
    assert "install torch first" in text and "pip install --no-build-isolation" in text, text
    assert "python -m build --no-isolation" in text, text
    assert "Traceback" not in text, text  # a message, not a stack


def test_build_without_torch_says_to_install_it_and_build_without_isolation():
    # what pip and `python -m build` run: the PEP 517 backend's first hook, which runs setup.py
    _says_what_to_do(_without_torch("""
        from setuptools import build_meta
        build_meta.get_requires_for_build_wheel()
    """))
    # and setup.py run by hand
    _says_what_to_do(_without_torch("""
        import runpy
        sys.argv = ["setup.py", "bdist_wheel"]
        runpy.run_path("setup.py", run_name="__main__")
    """))


def test_ci_script_parses():
    result = subprocess.run(["bash", "-n", os.path.join(ROOT, ".ci", "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
