# Tether developer entry points. On a fresh clone with only python3, make and git:
#   make up     create .venv, install, run `tether up` (initializes ./.tether, serves)
#   make test   create .venv, ensure PostgreSQL binaries and Chromium, run the full test suite
# Run `make help` for the rest.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Stamp file: reinstall only when pyproject.toml is newer than the last install.
STAMP  := $(VENV)/.tether-installed

# The PostgreSQL half of the suite must run, never be skipped quietly
# (tests/conftest.py fails instead of skipping when this is set).
TETHER_TEST_PG ?= 1
export TETHER_TEST_PG

PYTEST_ARGS ?=
UP_ARGS     ?=
# TEST_WORKERS=N runs the suite on N pytest-xdist workers, each with its own throwaway
# PostgreSQL server (tests/_pg.py); loadscope keeps a module on one worker, so
# module-scoped fixtures (a whole demo run) happen once. Most tests wait on processes and
# sockets, so N above the core count pays. Default 3: green on a quiet 2-core machine in
# about 10.5 minutes (serial: about three times that). `make test TEST_WORKERS=0` runs
# serially, one process, as a check that no test leaks state into the next.
TEST_WORKERS ?= 3

MCP_SERVERS := scripts/ensure-mcp-servers

.PHONY: help venv up test postgres chromium mcp-servers systemd-tools lint typecheck check bench revision clean distclean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

venv: $(STAMP) ## create .venv and install tether with test extras (fast when up to date)

$(STAMP): pyproject.toml
	@# Debian's python3 lacks ensurepip until python3-venv is installed.
	@if [[ ! -x $(BIN)/python ]]; then \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    rm -rf $(VENV); scripts/apt-install python3-venv; $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

up: venv ## run the broker (first run initializes ./.tether)
	$(BIN)/tether up $(UP_ARGS)

postgres: ## install PostgreSQL server binaries if initdb is missing (apt-get)
	@scripts/ensure-postgres

chromium: ## install headless Chromium if missing (apt-get; HTML report tests)
	@scripts/ensure-chromium

mcp-servers: ## install the npm MCP servers the gateway tests drive into ./.node
	@$(MCP_SERVERS)

systemd-tools: ## install systemd-analyze if missing (apt-get; checks of deploy/systemd)
	@scripts/ensure-systemd-tools

test: venv postgres chromium mcp-servers systemd-tools ## full test suite, sqlite + a throwaway PostgreSQL server
	@# Any non-zero exit fails the target: a failed test (1), a crashed worker (reported as a
	@# failed test, 1), an interrupted or broken run (2, 3, 4) and "no tests collected" (5).
	$(BIN)/python -m pytest -q --durations=10 -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

lint: venv ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv ## mypy --strict on src/tether (settings in pyproject.toml)
	$(BIN)/mypy src/tether

check: lint typecheck test ## everything CI can run

bench: venv ## run every bench/bench_*.py (small n), then print the performance table
	@shopt -s nullglob; scripts=(bench/bench_*.py); \
	if (( $${#scripts[@]} == 0 )); then echo "no bench/bench_*.py scripts"; fi; \
	out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
	for f in "$${scripts[@]}"; do echo "== $$f"; TETHER_BENCH_OUT=$$out $(BIN)/python "$$f"; done; \
	$(BIN)/python bench/summary.py "$$out"

revision: venv ## new schema revision from the table changes: make revision m="add x to y"
	@if [[ -z "$${m:-}" ]]; then echo 'usage: make revision m="what changes"' >&2; exit 2; fi
	@f=$$($(BIN)/python -m tether.store.revise "$$m" | tail -n1) && $(BIN)/ruff format -q "$$f" && echo "wrote $$f (read it, edit it, commit it)"

clean: ## remove caches and build output (keeps .venv and ./.tether state)
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
