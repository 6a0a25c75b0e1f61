# make run  - the default experiment (LeNet-5, Fashion-MNIST, unstructured global 0.5) -> ./mlflow.db
# make test - the test suite;  make lint - ruff (lint, format) and mypy;  make bench - benchmarks/ -> benchmarks/RESULTS.md (about 47 min)
# make ui   - the MLflow UI over ./mlflow.db on 127.0.0.1:5000 (prints the link to open)
# make team-server - PostgreSQL + an MLflow server on 127.0.0.1:5000 (prints the tracking.uri)
# Each creates .venv and installs the project on first use (torch pinned to the CPU build).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
# pip on some machines warns about every missing local index folder: keep the log readable.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
# A pytest worker per CPU core (pytest-xdist); each worker's torch, and the processes it starts, use one thread.
WORKERS ?= -n auto --dist worksteal

.PHONY: install run test test-fast lint bench ui team-server clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' $(QUIET_PIP)
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m prunelab $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q $(WORKERS) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m benchmarks --sweep

ui: $(STAMP)
	$(PY) -m prunelab.tracking.ui --store sqlite:///mlflow.db

team-server: $(STAMP)
	$(PY) -m prunelab.tracking.team_server --dir team-store

clean:
	rm -rf $(VENV) outputs multirun mlruns mlartifacts team-store
