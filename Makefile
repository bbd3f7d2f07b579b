# Two commands on a fresh machine: `make run` and `make test`. Everything else they need
# (the virtualenv, Python packages, PostgreSQL, the Kafka broker's jars) is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help install run test bench bench-debezium faults attack lint format services stop \
	status clean dist compose-test testcontainers-test docker-stop

help:
	@echo "make run      start PostgreSQL + Kafka locally, migrate, create a dev credential, serve"
	@echo "make test     the whole suite against real PostgreSQL and Kafka"
	@echo "make bench    benchmarks (QUICK=1 for the 5-minute version)"
	@echo "make bench-debezium  only the relay against Debezium (QUICK=1 shorter)"
	@echo "make faults   fault injection under load; table in docs/reliability.md"
	@echo "make attack   slow headers and bad signatures by strangers; figures in docs/reliability.md"
	@echo "make lint     ruff check + format check + mypy (pyproject [tool.mypy])"
	@echo "make dist     dist/: the wheel and its dependencies' wheels (what the Dockerfile installs)"
	@echo "make compose-test         docker compose up, a signed 201 and its event, down -v"
	@echo "make testcontainers-test  a test session on testcontainers (needs a Docker engine)"
	@echo "make stop     stop the local PostgreSQL and Kafka"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,tools]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	@scripts/run.sh

test: install
	$(BIN)/ruff check service tests scripts examples bench
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Not part of `make test`: takes ~15 minutes (QUICK=1: under 5) and needs Go for the
# load generator. Ends with the two ratio lines.
bench: install
	@command -v go >/dev/null || { echo "bench needs Go (apt-get install golang)"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,tools,bench]'
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)

# The relay against Debezium alone (about 12 minutes; QUICK=1: about 5). Needs Java and
# Maven besides Go; `make bench QUICK=1` skips this part, saying so, when they are missing.
bench-debezium: install
	@command -v go >/dev/null || { echo "bench needs Go (apt-get install golang)"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,tools,bench]'
	$(BIN)/python bench/run.py --only debezium $(if $(QUICK),--quick,)

# Every fault scenario (a few minutes); the fast ones also run in `make test`.
faults: install
	$(BIN)/python -m tests.faults.run

# Two attacks by strangers on a real server (300 slow-header connections for 60 s,
# 10,000 bad signatures; about 3 minutes). The fast form runs in `make test`.
attack: install
	$(BIN)/python -m tests.attack --full

lint: install
	$(BIN)/ruff check service tests scripts examples bench
	$(BIN)/ruff format --check service tests scripts examples bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format service tests scripts examples bench
	$(BIN)/ruff check --fix service tests scripts examples bench

dist: install
	@scripts/dist.sh

# The Docker paths, run for real. Both start dockerd when no engine answers (and say so),
# and use local stand-ins for the official images when Docker Hub cannot be reached
# (README "Docker here"). compose-test ends with `compose: 201 and its event in N s`.
compose-test: install
	$(BIN)/python -m tests.compose.run

# A subset: registration, the wheel, and the relay tests (but the one that stops the broker:
# it drives scripts/services.sh, so it runs on local processes only).
TC_TESTS ?= tests/integration/test_register.py tests/integration/test_wheel.py \
	tests/integration/test_relay.py tests/integration/test_relay_recovery.py -k "not broker_down"
testcontainers-test: install
	@images=$$($(BIN)/python -m tests.docker_images XCLOUD_POSTGRES_IMAGE XCLOUD_KAFKA_IMAGE) \
		&& env $$images XCLOUD_TEST_SERVICES=testcontainers TESTCONTAINERS_RYUK_DISABLED=true \
		$(BIN)/python -m pytest $(TC_TESTS) $(PYTEST_ARGS)

docker-stop:
	@scripts/docker-engine.sh stop

services: install
	@scripts/services.sh start

stop:
	@scripts/services.sh stop

status:
	@scripts/services.sh status

clean: stop
	rm -rf .cache $(VENV)
