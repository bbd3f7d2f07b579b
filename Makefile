# Two commands on a fresh machine: `make run` and `make test`. Everything else they need
# (the virtualenv, Python packages, PostgreSQL, the Kafka broker's jars) is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help install run test bench bench-debezium faults lint format services stop status clean

help:
	@echo "make run      start PostgreSQL + Kafka locally, migrate, create a dev credential, serve"
	@echo "make test     the whole suite against real PostgreSQL and Kafka"
	@echo "make bench    benchmarks (QUICK=1 for the 5-minute version)"
	@echo "make bench-debezium  only the relay against Debezium (QUICK=1 shorter)"
	@echo "make faults   fault injection under load; table in docs/reliability.md"
	@echo "make lint     ruff check + format check"
	@echo "make stop     stop the local PostgreSQL and Kafka"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	@scripts/run.sh

test: install
	$(BIN)/ruff check service tests scripts examples bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Not part of `make test`: takes ~15 minutes (QUICK=1: under 5) and needs Go for the
# load generator. Ends with the two ratio lines.
bench: install
	@command -v go >/dev/null || { echo "bench needs Go (apt-get install golang)"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)

# The relay against Debezium alone (about 12 minutes; QUICK=1: about 5). Needs Java and
# Maven besides Go; `make bench QUICK=1` skips this part, saying so, when they are missing.
bench-debezium: install
	@command -v go >/dev/null || { echo "bench needs Go (apt-get install golang)"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/run.py --only debezium $(if $(QUICK),--quick,)

# Every fault scenario (a few minutes); the fast ones also run in `make test`.
faults: install
	$(BIN)/python -m tests.faults.run

lint: install
	$(BIN)/ruff check service tests scripts examples bench
	$(BIN)/ruff format --check service tests scripts examples bench

format: install
	$(BIN)/ruff format service tests scripts examples bench
	$(BIN)/ruff check --fix service tests scripts examples bench

services: install
	@scripts/services.sh start

stop:
	@scripts/services.sh stop

status:
	@scripts/services.sh status

clean: stop
	rm -rf .cache $(VENV)
