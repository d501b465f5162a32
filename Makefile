# Two set-up commands: `make bench` and `make test`. Both create .venv if missing
# and install the project with its dev extras (torch pinned to the local CPU wheel).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: bench test test-core test-gpu cuda-ptx docs lint wheel-check asv asv-check asv-history asv-preview clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-dev.txt -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/fastrnn bench

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) tests

# The core without torch: a virtual environment with fastrnn's own dependencies and the
# test tools only; the test modules that import torch or the bridge are left out
# (tests/conftest.py), every other one must pass.
CORE_VENV := .venv-core
test-core:
	test -x $(CORE_VENV)/bin/python || $(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install --quiet -e . pytest pytest-xdist hypothesis numba-cuda safetensors
	! $(CORE_VENV)/bin/python -c "import torch" 2>/dev/null
	$(CORE_VENV)/bin/python -m pytest -q -n $(JOBS) tests

# On a machine with an NVIDIA GPU: the CUDA tests at real sizes on the device (not the
# simulator), then fastrnn's kernels vs torch.nn on cuDNN. The bridge's GPU tests and the
# benchmark need a CUDA build of torch (they skip or say so with the CPU wheel).
GPU_TESTS := tests/test_cuda_layers.py tests/test_bptt.py tests/test_attention.py tests/test_bridge_cuda.py
test-gpu: $(STAMP)
	$(PY) -m pip install --quiet -e '.[cuda]'
	FASTRNN_TEST_GPU=1 $(PY) -m pytest -q $(GPU_TESTS)
	$(VENV)/bin/fastrnn bench --gpu

# Without a GPU: compile every CUDA kernel to PTX for sm_90 with the CUDA toolkit's NVVM
# (found under /usr/local/cuda here) and NVRTC (a 140 MB wheel, so not in the dev extras).
cuda-ptx: $(STAMP)
	$(PY) -m pip install --quiet 'nvidia-cuda-nvrtc==13.*'
	$(PY) tools/check_cuda_ptx.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Build the wheel and sdist, install the wheel (not editable) into a fresh virtual
# environment and smoke-test it from outside the checkout.
wheel-check: $(STAMP)
	bash tools/wheel_check.sh $(PY)

ASV := cd asv_bench && ../$(VENV)/bin/asv
N ?= 5

# The dashboard: benchmark the working tree in the current environment under the current
# commit's hash (asv records nothing for --python=same without one), build asv's HTML, and
# write a static report that opens offline (asv_bench/.asv/report/index.html and index.md).
asv: $(STAMP)
	$(ASV) machine --yes >/dev/null
	$(ASV) run --python=same --set-commit-hash=$$(git rev-parse HEAD) --show-stderr
	$(ASV) publish
	$(PY) tools/asv_report.py --results asv_bench/.asv/results --out asv_bench/.asv/report

# What CI runs: the suite is well-formed and a small subset still runs.
asv-check: $(STAMP)
	$(ASV) machine --yes >/dev/null
	$(ASV) check --python=same
	$(ASV) run --python=same --quick --dry-run --show-stderr -b "ColdStart|track_speedup_step_h64"

# The last N commits, each built in its own virtualenv (from the local package index).
asv-history: $(STAMP)
	$(ASV) machine --yes >/dev/null
	$(ASV) run --steps $(N) HEAD~$(N)..HEAD
	$(ASV) publish
	$(PY) tools/asv_report.py --results asv_bench/.asv/results --out asv_bench/.asv/report

asv-preview:
	$(ASV) preview

clean:
	rm -rf $(VENV) site build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
