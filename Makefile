# Quick start: `make demo` (a small sweep on ml-100k) and `make test` (lint, types, tests).
# Each target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Dataset names (ml-100k, ml-1m, ...) are looked up here before being downloaded from their sources.
export CCE_STUDY_DATA_PATH ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test lint typecheck pytest clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e '.[sweep,dev]'
	touch $(STAMP)

# --resume: a second `make demo` finishes (or just reports) the same sweep instead of refusing.
demo: $(STAMP)
	$(BIN)/cce-study sweep sweeps/demo.toml --resume
	$(BIN)/cce-study pareto --db results/demo/results.sqlite --out results/demo/figures --budgets 1.2GiB,2GiB
	@echo
	@echo "To run the README's commands in this shell:"
	@echo "  source $(VENV)/bin/activate"
	@$(if $(CCE_STUDY_DATA_PATH),echo "  export CCE_STUDY_DATA_PATH=$(CCE_STUDY_DATA_PATH)",true)

lint: $(STAMP)
	$(BIN)/ruff check kernels models study tests tools

typecheck: $(STAMP)
	$(BIN)/mypy kernels models study tools

pytest: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
