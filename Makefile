# The two commands of a fresh machine:  make up  (run everything)  /  make test  (run the tests)
PYTHON ?= python3
VENV := .venv
# Test files run on this many processes (each with its own PostgreSQL and Prefect server):
# the tests mostly wait on servers and scripts, so two share even a 2-core machine well.
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-fast check lint typecheck imports install prefect-yaml bench lock

# The install is locked: every package at the version of requirements.lock (pip constraints).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/python -m scripts.local_stack

test: $(STAMP)
	bash .ci/ensure-postgres
	bash .ci/ensure-node
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Every figure of the performance table against its baseline, side by side (~10 min; not CI).
bench: $(STAMP)
	bash .ci/ensure-postgres
	bash .ci/ensure-wrk
	$(BIN)/python -m bench

# Unit tests on TEST_WORKERS processes too: half the time of one (make check's slowest part).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m unit -q -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

check: lint typecheck imports test-fast

prefect-yaml: $(STAMP)
	$(BIN)/python -m deployments.prefect_yaml

# Resolve pyproject.toml's dependencies afresh in a throwaway virtualenv and pin what came.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^poligraph-jobs'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv
