# The two Quickstart commands, each creating its own virtual environment:
#   make run   installs recstack into .venv and trains on built-in synthetic data
#   make test  installs recstack with its test extras into .venv-test and runs the default suite
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build. Elsewhere than this workplace,
# get the CPU build with e.g. `make run PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"`.

PYTHON ?= python3
TORCH ?= torch==2.13.0
PIP_EXTRA ?=
RUN_VENV ?= .venv
TEST_VENV ?= .venv-test
PIP := pip install --quiet --disable-pip-version-check $(PIP_EXTRA)

.PHONY: run test test-all lint bench clean

$(RUN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/$(PIP) "$(TORCH)" -e .
	touch $@

$(TEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/$(PIP) "$(TORCH)" -e ".[test]"
	touch $@

run: $(RUN_VENV)/.installed
	$(RUN_VENV)/bin/recstack train $(ARGS)

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/pytest $(PYTEST_ARGS)

test-all: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/pytest -m "" $(PYTEST_ARGS)

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check recstack tests

bench: $(RUN_VENV)/.installed
	$(RUN_VENV)/bin/recstack bench train --preset criteo-kaggle --report runs/bench-train.json

clean:
	rm -rf $(RUN_VENV) $(TEST_VENV) runs .pytest_cache
