# The two commands a user needs: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
PIP_FLAGS ?= --disable-pip-version-check --quiet

.PHONY: demo test lint typecheck unit install install-dev install-bench up bench clean audit

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[bench]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-bench: $(VENV)/.installed-bench

## Summarize the shipped sample documents on the embedded default (no services, no keys).
demo: $(VENV)/.installed
	$(BIN)/llmq demo

## Lint, type-check and run the whole test suite.
test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

unit: $(VENV)/.installed-dev
	$(BIN)/pytest -q tests/unit

## Every benchmark in one run (docs/benchmarks.md); BENCH_ARGS=--quick for a smoke test.
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

## Run the stack (embedded PostgreSQL and Redis unless DATABASE_URL / REDIS_URL are set).
up: $(VENV)/.installed
	$(BIN)/llmq up

## Known vulnerabilities in the installed dependencies (needs the PyPI/OSV advisory services;
## --strict: a package that cannot be checked fails the run instead of passing silently).
audit: $(VENV)/.installed-dev
	$(BIN)/pip-audit --progress-spinner off --skip-editable --strict

clean:
	rm -rf $(VENV) .llmq .pytest_cache .mypy_cache .ruff_cache
