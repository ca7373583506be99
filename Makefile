# simstudy: every target installs what it needs through `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= 2
# numba and BLAS: one thread per process; parallelism comes from joblib workers
export NUMBA_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: install test lint bench study study-quick check ci-reference coverage clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[torch,dev]"
	touch $@

test: install
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check simstudy tests benchmarks

bench: install
	$(PY) -m benchmarks

study: install
	@echo "make study: the full-scale studies are not wired up yet (issue 6)." >&2; exit 2

study-quick: study

check: install
	$(PY) -m simstudy check studies/ci.toml

coverage: install
	NUMBA_DISABLE_JIT=1 $(PY) -m coverage run -m pytest -q -p no:xdist && $(PY) -m coverage report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
