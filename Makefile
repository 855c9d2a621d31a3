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

# Cycle benchmarks in RTL simulation (long): writes build/bench/expert_ffn.md and attention.json.
bench: $(STAMP)
	$(VENV)/bin/moeaccel bench sweep --out build/bench/expert_ffn.md
	$(VENV)/bin/moeaccel bench attention --seq 512 --heads 8 --head-dim 64 --json \
		> build/bench/attention.json

clean:
	rm -rf build .pytest_cache .hypothesis
