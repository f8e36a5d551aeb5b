# Two commands on a fresh machine: `make run` and `make test` (see README.md).
# `make test` installs redis-server with apt-get if it is missing, `make viewer-check` Chromium,
# `make bench` Orthanc and its plugins (each needs root and a Debian/Ubuntu package source).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-deps lint unit bench bench-deps viewer viewer-deps viewer-check viewer-check-docs gc clean

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

## Orthanc, its DICOMweb plugin and its PostgreSQL plugin, each installed if its file is missing
bench-deps:
	@missing=""; \
	for pair in orthanc:/usr/sbin/Orthanc \
	            orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so \
	            orthanc-postgresql:/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so; do \
		[ -e "$${pair#*:}" ] || missing="$$missing $${pair%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "bench-deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## Black-box benchmark against Orthanc (SQLite and PostgreSQL) and a loopback sink; writes docs/benchmarks.md
bench: install bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

## OHIF Viewer v3 in headless Chromium lists and opens a study stored here (docs/viewer-check.md);
## the screenshot goes to viewer/out/viewer-check.png (viewer-check-docs: docs/viewer-check.png)
viewer-check: install viewer-deps
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/python viewer/check.py $(VIEWER_ARGS)

viewer-check-docs: VIEWER_ARGS += --screenshot docs/viewer-check.png
viewer-check-docs: viewer-check

viewer-deps:
	cd viewer && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

## OHIF Viewer v3 on http://127.0.0.1:3000 showing your studies in the server `make run` runs
## (needs npm once, to fetch OHIF's build; open the printed URL in your browser)
viewer: install
	$(BIN)/python viewer/serve.py $(VIEWER_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
