# One command to run the service, one to run the tests. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench bench-pg bench-embedded bench-workers bench-shadow bench-reload proto clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/nba serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python loadtests/bench_engine.py

bench-embedded: $(STAMP)
	$(BIN)/python loadtests/bench_embedded.py

bench-workers: $(STAMP)
	$(BIN)/python loadtests/bench_workers.py

bench-pg: $(STAMP)
	$(BIN)/python loadtests/bench_postgres.py

bench-shadow: $(STAMP)
	$(BIN)/python loadtests/bench_shadow.py

bench-reload: $(STAMP)
	$(BIN)/python loadtests/bench_reload.py

proto: $(STAMP)
	$(BIN)/python -m nba_service.protogen

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
