# The two Quickstart commands: `make run` (install, then train on built-in synthetic data) and
# `make test` (install with test extras, then the default test suite). Each creates the virtual
# environment it needs. torch is pinned: an unpinned torch pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test test-all lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/recstack train $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(BIN)/pytest -m "" $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check recstack tests

bench: $(VENV)/.installed
	$(BIN)/recstack bench train --preset criteo-kaggle --report runs/bench-train.json

clean:
	rm -rf $(VENV) runs .pytest_cache
