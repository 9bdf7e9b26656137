# Quick start: `make demo` (a small sweep on ml-100k) and `make test` (lint, types, tests).
# Each target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e '.[sweep,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cce-study sweep sweeps/demo.toml

lint: $(STAMP)
	$(BIN)/ruff check kernels models study tests

typecheck: $(STAMP)
	$(BIN)/mypy kernels models study

pytest: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
