# The two commands of a fresh machine:  make up  (run everything)  /  make test  (run the tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test install lint prefect-yaml

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/python -m deployments.local_stack

test: $(STAMP)
	bash .ci/ensure-postgres
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

prefect-yaml: $(STAMP)
	$(BIN)/python -m deployments.prefect_yaml
