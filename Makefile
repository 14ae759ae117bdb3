# Everything runs from a project-local virtualenv that this Makefile makes itself,
# so `make test` and `make demo` work on a fresh machine with nothing installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install test lint bench demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The benchmarks' peers and baselines (Ray, Dask, pykka, thespian) are big; only `make bench`
# needs them, so `make test` stays quick to set up.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check libproc mesa bench tests examples
	$(VENV)/bin/ruff format --check libproc mesa bench tests examples

bench: $(BENCH_STAMP)
	$(PY) -m bench.libproc_bench --json bench-libproc.json
	$(PY) -m bench.allocator_bench --json bench-allocator.json
	$(PY) -m bench.offers --json bench-offers.json
	$(PY) -m bench.containers --json bench-containers.json
	$(PY) -m bench.agent_bench --json bench-agent.json
	$(PY) -m bench.tasks --json bench-tasks.json

# A whole local cluster (a master, two agents) running a framework with real tasks, then stopped.
demo: $(STAMP)
	$(PY) -m mesa.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
