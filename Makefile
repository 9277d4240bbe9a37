# The two commands: `make demo` and `make test`. Both set up .venv on their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.socialcrm/prefect

.PHONY: demo test test-fast lint typecheck check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)
	mkdir -p $(PREFECT_HOME)

demo: $(STAMP)
	$(BIN)/python -m socialcrm.demo

## Everything CI runs: lint, types, the whole test suite (slow end-to-end tests included).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

## The inner loop: unit tests only, no sandbox, no Prefect engine.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Benchmarks: the pipeline against a per-record baseline, the mapping engine against a
## per-row one; writes bench/results/ (markdown, JSON, plot). Takes a while.
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .socialcrm .sandbox .pytest_cache .mypy_cache .ruff_cache *.egg-info
