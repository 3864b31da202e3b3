# Entry points people remember: install, demo, test, bench, lint, stack-up, stack-down.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install debs demo test test-unit test-faults bench lint format stack-up stack-down stack-status clean lock

install: $(STAMP) debs

# Debian packages: Chromium and ChromeDriver for the UI test
# (tests/integration/test_end_to_end.py), wrk for the serving benchmark's HTTP load,
# iproute2 for the several-hosts tests (tests/hosts: network namespaces).
# Installed with apt-get where it is available (as root, or through sudo); elsewhere the
# UI test and the serving benchmark's wrk runs are skipped and say why.
APT_GET := $(shell command -v apt-get 2>/dev/null)
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo 2>/dev/null)
DEBS := chromium chromium-driver wrk iproute2
debs:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/wrk ] && command -v ip >/dev/null; then :; \
	elif [ -n "$(APT_GET)" ]; then \
		echo "installing Debian's $(DEBS)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -q $(DEBS) >/dev/null \
		|| { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $(DEBS) >/dev/null; }; \
	else echo "no apt-get: install $(DEBS) to run the UI test and the serving benchmark"; fi

# Reinstall only when the dependency set changes. requirements.lock pins every
# package; torch==2.13.0 is the CPU wheel this machine keeps on disk.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	rm -rf /tmp/mlsys-lock-venv && $(PYTHON) -m venv /tmp/mlsys-lock-venv
	/tmp/mlsys-lock-venv/bin/python -m pip install --quiet --upgrade pip
	/tmp/mlsys-lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	/tmp/mlsys-lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements.lock

DEMO_BATCH := demo-$(shell date -u +%Y%m%dT%H%M%SZ)

# Start the stack, run the end_to_end deployment through the Prefect API on the worker
# (ingest -> weak_label -> train -> promote -> batch_infer), then read each stage's
# output back from S3 through boto3.
demo: $(STAMP)
	$(BIN)/mlsys stack up
	$(BIN)/mlsys run end_to_end/end_to_end --param batch=$(DEMO_BATCH)
	$(BIN)/mlsys data show s3://$${MLSYS_BUCKET:-mlsys}/raw/youtube-spam/$(DEMO_BATCH).parquet
	$(BIN)/mlsys data show s3://$${MLSYS_BUCKET:-mlsys}/labeled/youtube-spam/$(DEMO_BATCH).parquet
	$(BIN)/mlsys data show s3://$${MLSYS_BUCKET:-mlsys}/predictions/youtube-spam/$(DEMO_BATCH)/part-0000-00000.parquet

test: install
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# Services killed during runs (every service during every stage) and many runs at once,
# on stacks of their own (slow: about 1 h 45 min on 2 cores, the 200-run PostgreSQL
# case and the matrix the longest); not part of `make test`.
test-faults: $(STAMP)
	$(BIN)/python -m pytest tests/faults

# Every benchmark, then docs/benchmarks.md from their results (benchmarks/report.py), then
# their figures to MLflow when MLFLOW_TRACKING_URI is set.
# Every script with the settings docs/benchmarks.md quotes (its defaults), plus the
# Spill runs with torch's default Adam that the page compares with the fused one.
bench: $(STAMP)
	for b in $$(ls benchmarks/*.py | grep -v -e log_results -e /report.py -e "/_"); do $(BIN)/python $$b || exit 1; done
	$(BIN)/python benchmarks/spill.py --adam default --output benchmarks/results/spill_adam_default.json
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/log_results.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: $(STAMP)
	$(BIN)/mlsys stack up

stack-down:
	@test -x $(BIN)/mlsys && $(BIN)/mlsys stack down || echo "no venv: nothing to stop"

stack-status: $(STAMP)
	$(BIN)/mlsys stack status

clean: stack-down
	rm -rf .stack .pytest_cache .mypy_cache .ruff_cache
