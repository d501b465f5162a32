# Two set-up commands: `make bench` and `make test`. Both create .venv if missing
# and install the project with its dev extras (torch pinned to the local CPU wheel).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: bench test test-fast docs asv clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-dev.txt -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/fastrnn bench

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) tests

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

asv: $(STAMP)
	cd asv_bench && ../$(VENV)/bin/asv run --python=same --quick --show-stderr

clean:
	rm -rf $(VENV) site build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
