# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-deps lint unit bench bench-deps viewer-check gc clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

## Serve on 127.0.0.1:8080 with an embedded PostgreSQL and local storage under .data/
run: install
	$(BIN)/dicomweb-server serve --host $${DICOMWEB_HOST:-127.0.0.1} --port $${DICOMWEB_PORT:-8080}

lint: install
	$(BIN)/ruff check dicomweb_server tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

## The whole suite: lint, types, layers, unit, integration (PostgreSQL, SeaweedFS) and end to end.
test: lint test-deps
	$(BIN)/pytest -q

## System packages the suite runs for real: redis-server (shared rate limits)
test-deps:
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq redis-server >/dev/null; }

unit: install
	$(BIN)/pytest -q tests/unit

gc: install
	$(BIN)/dicomweb-server gc

bench-deps:
	@command -v Orthanc >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq orthanc orthanc-dicomweb orthanc-postgresql >/dev/null; }

## Black-box benchmark against Orthanc (SQLite and PostgreSQL) and a loopback sink; writes docs/benchmarks.md
bench: install bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

## OHIF Viewer v3 in headless Chromium lists and opens a study stored here; writes docs/viewer-check.png (docs/viewer-check.md)
viewer-check: install
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; }
	cd viewer && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	$(BIN)/python viewer/check.py $(VIEWER_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
