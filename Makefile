# probgen: the README's two commands (make demo, make test) do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test test-integration test-all lint bench docs clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch request pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The benchmarks' peer libraries, without their dependencies (torch stays pinned).
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-bench.txt
	touch $(BENCH_STAMP)

# The documentation builder (Sphinx), pinned; it does not touch torch.
$(DOCS_STAMP): $(STAMP) requirements-docs.txt
	$(PY) -m pip install --quiet -r requirements-docs.txt
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/probgen fit realnvp-moons --out runs/demo --set train.steps=1500

# Fast tier: unit and mathematics tests, the model contract, one short fit per family.
test: $(STAMP)
	$(PY) -m pytest -q

# Integration tier: notebooks (quick mode), every preset through the CLI, torchrun, MNIST
# runs, every benchmark in --quick mode (needs the peers).
test-integration: $(BENCH_STAMP) $(DOCS_STAMP)
	$(PY) -m pytest -q -m slow

# Both tiers in one run.
test-all: $(BENCH_STAMP) $(DOCS_STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check probgen models inference tests benchmarks

bench: $(BENCH_STAMP)
	$(PY) benchmarks/flows_2d.py
	$(PY) benchmarks/metrics.py --root ../shared/data/mnist

# The documentation site from the docstrings into docs/_build/html; warnings are errors.
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html -q docs docs/_build/html

clean:
	rm -rf $(VENV) runs build *.egg-info docs/_build docs/api
