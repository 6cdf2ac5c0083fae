# Ecosistema: `make up` runs the platform, `make test` runs the tests. Both create .venv on first use.

VENV    ?= .venv
PYTHON  ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
             && { command -v $$p; break; }; done)
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
HOST    ?= 127.0.0.1
PORT    ?= 8000
# Test processes: the suite waits on databases, brokers and sockets, so more than the cores pays.
TEST_WORKERS ?= 3

.PHONY: up test lint format bench clean help native

help:
	@echo "make up      install into .venv, migrate, seed demo data, serve on http://$(HOST):$(PORT)"
	@echo "make test    install into .venv and run the test suite (embedded and distributed shapes)"
	@echo "make lint    ruff and mypy"
	@echo "make bench   run the benchmarks in bench/ and print their figures"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The gateway's hot path compiled with mypyc (under a minute, again only when its sources change);
# without a C compiler the gateway runs the same code interpreted.
native: $(STAMP)
	@$(BIN)/ecosistema native status >/dev/null 2>&1 || $(BIN)/ecosistema native build \
	  || echo "note: the gateway runs interpreted (compiling its hot path failed)"

up: native
	$(BIN)/ecosistema up --demo --host $(HOST) --port $(PORT)

test: native
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: native
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
