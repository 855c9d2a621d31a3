# moeaccel: `make demo` and `make test` set everything up themselves (a .venv in this folder).

PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(VENV)/bin/python -m pytest
# Two workers: the cocotb builds and the Python tests share the machine's cores.
JOBS   ?= 2

.PHONY: all demo test sim bench venv clean

all: test

# The venv is (re)installed only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moeaccel demo

test: $(STAMP)
	$(PYTEST) -n $(JOBS) -q

# Only the cocotb regressions (RTL in Verilator).
sim: $(STAMP)
	$(PYTEST) -n $(JOBS) -q -m sim

# Every cycle figure the docs quote (docs/figures.json) re-measured in RTL simulation (long: the
# attention rows take most of it); fails when one differs. Results: build/bench/figures.json.
bench: $(STAMP)
	$(VENV)/bin/moeaccel bench figures --out build/bench/figures.json

clean:
	rm -rf build .pytest_cache .hypothesis
