# Two commands for a fresh machine (see README.md):
#   make demo   set up, record the three offline demo runs, reduce them and open the dashboard on them
#   make test   set up (Python packages and Debian's chromium) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO   ?= data/demo

.PHONY: setup chromium jemalloc demo test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# `neuromapper serve` runs under jemalloc when it is installed (closed sessions' memory goes back
# to the system; README, "Many users"); skipped where there is no apt-get
jemalloc:
	@dpkg -s libjemalloc2 >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y libjemalloc2; }

demo: setup jemalloc
	$(BIN)/neuromapper demo --dataset moons --out data/moons --no-serve
	$(BIN)/neuromapper demo --dataset digits-mlp --out data/digits-mlp --no-serve
	$(BIN)/neuromapper demo --out $(DEMO) --no-serve
	$(BIN)/neuromapper serve data

test: setup chromium jemalloc
	$(BIN)/python -m pytest

bench: setup chromium
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
