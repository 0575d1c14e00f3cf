# One command to run the service, one to run the tests. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint chromium bench bench-engine-peers bench-pg bench-embedded bench-workers bench-shadow bench-reload bench-diff bench-dialer bench-report bench-published bench-cpu bench-metrics bench-tracing proto clean

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

# The suite on every core (TEST_PROCESSES=0 runs it in this process), two tests handed out at a time so that the
# slow ones, collected first, start at once (tests/conftest.py).
TEST_PROCESSES ?= auto
test: lint chromium
	$(BIN)/python -m pytest --numprocesses $(TEST_PROCESSES) --maxschedchunk 2

# The browser test (tests/e2e/test_render_browser.py) opens the rendered ruleset in a real headless Chromium.
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: /usr/bin/chromium or /usr/bin/chromedriver is missing and apt-get is not available: install Chromium and its driver by hand, or the browser test skips (and fails under CI=true)" >&2; \
	elif [ "$$(id -u)" -ne 0 ]; then \
		echo "note: /usr/bin/chromium or /usr/bin/chromedriver is missing; run 'sudo apt-get install -y chromium chromium-driver' (make is not root), or the browser test skips (and fails under CI=true)" >&2; \
	else \
		echo "installing chromium and chromium-driver for the browser test"; \
		apt-get install -y chromium chromium-driver || { apt-get update && apt-get install -y chromium chromium-driver; }; \
	fi

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

bench-tracing: $(STAMP)
	$(BIN)/python loadtests/bench_tracing.py

bench-reload: $(STAMP)
	$(BIN)/python loadtests/bench_reload.py

bench-diff: $(STAMP)
	$(BIN)/python loadtests/bench_diff.py

bench-dialer: $(STAMP)
	$(BIN)/python loadtests/bench_dialer.py

bench-report: $(STAMP)
	$(BIN)/python loadtests/bench_report.py $(ARGS)

# Echo baseline, then the service on the embedded store and on PostgreSQL; writes docs/benchmarks/ and docs/images/.
bench-published: $(STAMP)
	$(BIN)/python loadtests/bench_published.py $(ARGS)

bench-cpu: $(STAMP)
	$(BIN)/python loadtests/bench_cpu.py $(ARGS)

bench-metrics: $(STAMP)
	$(BIN)/python loadtests/bench_metrics.py

proto: $(STAMP)
	$(BIN)/python -m nba_service.protogen

clean:
	rm -rf $(VENV) var .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis

bench-engine-peers: $(STAMP)
	$(BIN)/python loadtests/bench_engine_peers.py
