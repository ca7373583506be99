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

# full-scale studies (resumable: rerunning computes only missing tasks), then the reports
STUDIES ?= topk_exact topk_over topk_kbar_sweep topk_K_sweep dense_exact dense_over
STUDY_SPECS = $(addprefix studies/,$(addsuffix .toml,$(STUDIES)))
SIMSTUDY := $(PY) -m simstudy

study: install
	for s in $(STUDY_SPECS); do $(SIMSTUDY) run $$s --jobs $(JOBS) || exit 1; done
	$(SIMSTUDY) report $(STUDY_SPECS) --out results
	$(SIMSTUDY) neural routers
	$(SIMSTUDY) neural bridge
	$(SIMSTUDY) neural jei-dnn
	$(SIMSTUDY) neural phatgoose

# the quick variant of the main job: the small CI study and the neural benchmarks' quick sizes
study-quick: install
	$(SIMSTUDY) run studies/ci.toml --jobs $(JOBS)
	$(SIMSTUDY) report studies/ci.toml --out results/quick
	$(SIMSTUDY) neural routers --quick --out results/quick/neural/routers
	$(SIMSTUDY) neural bridge --quick --out results/quick/neural/routers
	$(SIMSTUDY) neural jei-dnn --quick --out results/quick/neural/jei_dnn
	$(SIMSTUDY) neural phatgoose --quick --out results/quick/neural/phatgoose

# CI rate check: fails on a slope inconsistent with theory or moved from the reference
check: install
	$(SIMSTUDY) check studies/ci.toml --jobs $(JOBS) --no-progress --reference results/ci_reference.json

# rewrite the committed reference slopes (explicit, never automatic); commit the result
ci-reference: install
	$(SIMSTUDY) check studies/ci.toml --jobs $(JOBS) --reference results/ci_reference.json \
		--update-reference

coverage: install
	NUMBA_DISABLE_JIT=1 $(PY) -m coverage run --source=simstudy -m pytest -q -p no:xdist -m "not slow" && $(PY) -m coverage report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
