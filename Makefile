# `make play` and `make test` set up everything a fresh Debian machine lacks, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: play test lint docs layouts bench clean

$(STAMP): pyproject.toml Makefile
	@scripts/system-deps.sh runtime
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

play: $(STAMP)
	$(BIN)/endless play $(ARGS)

test: $(STAMP)
	@scripts/system-deps.sh test
	@# the upstream TangoFlux package is the parity reference for tests only: never its pinned deps
	$(BIN)/pip install -q --no-deps tangoflux==0.1.0
	$(BIN)/ruff check instrument tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check instrument tests benchmarks
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/endless docs > docs/osc.md
	$(BIN)/python -c "from instrument.control.mapdoc import mapping_reference as r; print(r(), end='')" > docs/mappings.md

layouts: $(STAMP)
	$(BIN)/python -m instrument.layouts

bench: $(STAMP)
	@scripts/system-deps.sh test
	$(BIN)/python benchmarks/bench_mixer.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
