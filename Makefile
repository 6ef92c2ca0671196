# lbproxy: `make run` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 5000
REPLICAS ?= 3
PYTEST_ARGS ?=

.PHONY: help install run test test-fast lint images bench analyze soak clean

help:
	@echo "make run        start the balancer on :$(PORT) with $(REPLICAS) process replicas"
	@echo "make test       install and run every test tier in order, stopping at the first failing one"
	@echo "make test-fast  the unit and in-process tiers only (under a minute)"
	@echo "make lint       ruff and mypy"
	@echo "make images     build the replica and balancer images (works without a registry)"
	@echo "make analyze    SPEC Task 4: charts and report into docs/analysis (seed 42);"
	@echo "                ANALYZE_ARGS='--parts all' adds A-5, the autoscaler (~6 min)"
	@echo "make bench      lbproxy vs HAProxy and NGINX on the same replicas (docs/performance.md)"
	@echo "make soak       60 s chaos soak: a replica killed every 5 s under load"

$(STAMP): pyproject.toml tools/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lbproxy needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./tools
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lbproxy serve --port $(PORT) --replicas $(REPLICAS) --backend process

# The tiers, in order (scripts/test-tiers.sh; each test declares its tier, tests/conftest.py):
# unit (pure) -> inprocess (real sockets in the test's loop) -> process (real `lbproxy serve`)
# -> docker (the real engine, when `docker info` answers) -> slow (fuzz, soak, browser,
# analysis). Stops at the end of the first failing tier; a tier that collects nothing fails.
test: $(STAMP)
	@TIERS_PYTHON=$(BIN)/python PYTEST_ARGS='$(PYTEST_ARGS)' bash scripts/test-tiers.sh unit,inprocess process docker slow

test-fast: $(STAMP)
	@TIERS_PYTHON=$(BIN)/python PYTEST_ARGS='$(PYTEST_ARGS)' bash scripts/test-tiers.sh unit,inprocess

lint: $(STAMP)
	$(BIN)/ruff check lbproxy lbproxy_tools server_app tests bench
	$(BIN)/mypy

images:
	bash scripts/ensure-images.sh

# A-1..A-4 by default; ANALYZE_ARGS='--parts a5' (or all) adds issue 12's A-5 (~6 min).
ANALYZE_ARGS ?=
analyze: $(STAMP)
	$(BIN)/lbproxy analyze --seed 42 --out docs/analysis $(ANALYZE_ARGS)

# lbproxy vs HAProxy vs NGINX on the same replicas, memory, ring figures and a py-spy
# profile; see docs/performance.md. BENCH_QUICK=1 for a smoke run. Installs wrk, haproxy
# and nginx from Debian's packages when missing (root only).
bench: $(STAMP)
	bash bench/run.sh

# Chaos soak (lbproxy_tools/soak.py, docs/operations.md): under steady load, a random replica is
# killed every 5 s for 60 s (SIGKILL, then `docker kill` when `docker info` answers); fails
# on any failed request, an unrecovered kill, a pool not back at N or anything left behind.
SOAK_ARGS ?= --duration 60 --kill-every 5 --concurrency 16
soak: $(STAMP)
	$(BIN)/python -m lbproxy_tools.soak --backend process $(SOAK_ARGS)
	@if docker info >/dev/null 2>&1; then \
		echo "$(BIN)/python -m lbproxy_tools.soak --backend docker $(SOAK_ARGS)"; \
		$(BIN)/python -m lbproxy_tools.soak --backend docker $(SOAK_ARGS); \
	else echo "soak: no Docker engine answers 'docker info': docker soak skipped"; fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
