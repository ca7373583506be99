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

.PHONY: help install test lint bench study study-quick check ci-reference coverage mutate clean

help:
	@echo "make install       build .venv from the local wheels (every target does this first)"
	@echo "make test          the test suite (JOBS workers)"
	@echo "make lint          ruff on simstudy, tests, benchmarks, mutation"
	@echo "make coverage      coverage of the fast tests, numba JIT disabled"
	@echo "make bench         benchmarks (python -m benchmarks)"
	@echo "make study         full-scale studies, reports and neural benchmarks (hours)"
	@echo "make study-quick   the small CI study and the neural benchmarks' quick sizes"
	@echo "make check         CI rate check against results/ci_reference.json"
	@echo "make ci-reference  rewrite the committed reference slopes"
	@echo "make mutate        mutation testing (cosmic-ray) of the modules that decide results,"
	@echo "                   each against its fast tests; not in CI, minutes per module."
	@echo "                   MODULE=engine/seeds.py: one module (path under simstudy/);"
	@echo "                   FRESH=1: ignore the cache; MUTATE_JOBS=2: two modules at once."
	@echo "                   See docs/testing.md"
	@echo "make clean         remove .venv and caches"


install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[torch,dev]"
	touch $@

test: install
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check simstudy tests benchmarks mutation

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
	$(SIMSTUDY) neural jei-dnn
	$(SIMSTUDY) neural phatgoose

# the quick variant of the main job: the small CI study and the neural benchmarks' quick sizes
study-quick: install
	$(SIMSTUDY) run studies/ci.toml --jobs $(JOBS)
	$(SIMSTUDY) report studies/ci.toml --out results/quick
	$(SIMSTUDY) neural routers --quick --out results/quick/neural/routers
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

# mutation testing (docs/testing.md): reruns only mutants whose code or tests changed
mutate: install
	nice -n 10 $(PY) -m mutation.run $(if $(MODULE),--module $(MODULE)) $(if $(FRESH),--fresh) \
		$(if $(MUTATE_JOBS),--jobs $(MUTATE_JOBS))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mutate
