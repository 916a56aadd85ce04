# Two commands do everything on a fresh machine:
#   make run    set up (venv, torch==2.11.0, build) and run the main job
#   make test   set up and run the test suite
# Set-up is cached: the venv in .venv (matplotlib included, for the demo's and the
# benchmarks' plots; the library itself does not need it), the extension in tbptt_cuda/_C*.so.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.11.0
export MAX_JOBS ?= 2
CSRC := $(shell find csrc -type f)

.PHONY: setup run test bench info gpu-check gpu-test emulator-check ptxas-check dist clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" numpy ninja setuptools wheel build tqdm pytest pytest-benchmark matplotlib
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml tbptt_cuda/_build.py $(CSRC)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

run: setup
	$(PY) -m tbptt_cuda.demo

info: setup
	$(PY) -m tbptt_cuda.info

# The test suite runs every kernel of csrc/cuda on the CPU through the SIMT emulator (and on a
# GPU where there is one); before it, the emulator's own C++ test in three builds (plain, TSan,
# ASan+UBSan) and nvcc's register/spill report of every kernel.
test: setup emulator-check ptxas-check
	$(PY) -m tbptt_cuda.info
	$(PY) -m pytest tests -q

emulator-check:
	bash scripts/emulator_check.sh

ptxas-check: setup
	$(PY) scripts/check_ptxas.py

bench: setup
	$(PY) -m pytest bench -q --benchmark-only --benchmark-json=results/bench.json
	$(PY) bench/summary.py results/bench.json

# On a GPU machine (no registry, preinstalled torch, no venv): build there, run the suite, the
# sanitizers, the barrier microbenchmark, the CUDA paths against cuDNN and the cost model.
gpu-check:
	bash scripts/gpu_check.sh

gpu-test: gpu-check

# The sdist and the wheel into dist/: tbptt_cuda-<version>.tar.gz and a wheel built from that
# sdist (so a missing source fails here). --no-isolation: the extension compiles against this
# venv's torch; an isolated build would have pip install a torch of its own. The wheel compiles
# the extension (the default build: CUDA and the emulator where nvcc is present; minutes).
# A venv made before `build` joined the deps line gets it here.
dist: $(VENV)/.deps
	$(PY) -c "import build" 2>/dev/null || $(PY) -m pip install -q build
	$(PY) -m build --no-isolation --outdir dist .

clean:
	rm -rf build dist $(VENV) tbptt_cuda/_C*.so tbptt_cuda/_build_config.py *.egg-info
