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

.PHONY: help install test lint bench study study-quick report-from-data check ci-reference coverage mutate clean

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
	@echo "make report-from-data  rebuild every table and figure from results/data/ (no fits)"
	@echo "make clean         remove .venv and caches"


install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[torch,dev,cluster]"
	touch $@

test: install
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check simstudy tests benchmarks mutation

bench: install
	$(PY) -m benchmarks

# full-scale studies (resumable: rerunning computes only missing tasks), then the reports from
# their stores (which also rewrite the committed per-fit data under results/data/)
STUDIES ?= topk_exact topk_over topk_kbar_sweep topk_K_sweep dense_exact dense_over \
	topk_planar topk_over2 dense_over2 topk_kbar_bounded
# staged runs: `make study MAX_REPS=10` runs (or resumes) every study to 10 replications and
# reports; a later `make study` completes them (tasks run replication-major)
MAX_REPS ?=
# and `make study MAX_N=100000` only the conditions with n <= 1e5
MAX_N ?=
SIMSTUDY := $(PY) -m simstudy

study: install
	@specs=""; for s in $(STUDIES); do \
	  spec=studies/$$s.toml; \
	  echo "make study: $$spec"; \
	  $(SIMSTUDY) run $$spec --jobs $(JOBS) $(if $(MAX_REPS),--max-reps $(MAX_REPS)) \
	    $(if $(MAX_N),--max-n $(MAX_N)) || exit 1; \
	  specs="$$specs $$spec"; \
	done; \
	$(SIMSTUDY) report $$specs --out results
	$(SIMSTUDY) neural routers
	$(SIMSTUDY) neural bridge
	$(SIMSTUDY) neural jei-dnn
	$(SIMSTUDY) neural phatgoose

# rebuild every table, figure and results/README.md from the committed per-fit data
# (results/data/*.parquet), without the stores and without fitting anything
report-from-data: install
	@ls results/data/*.parquet > /dev/null 2>&1 || { echo "make report-from-data: no per-fit data under results/data/ (run make study first)"; exit 1; }
	$(SIMSTUDY) report $$(for f in results/data/*.parquet; do echo studies/$$(basename $$f .parquet).toml; done) \
		--out results --from-data

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

# mutation testing (docs/testing.md): reruns only mutants whose code or tests changed
mutate: install
	nice -n 10 $(PY) -m mutation.run $(if $(MODULE),--module $(MODULE)) $(if $(FRESH),--fresh) \
		$(if $(MUTATE_JOBS),--jobs $(MUTATE_JOBS))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mutate
