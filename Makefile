# Entry points for developers and CI. Everything runs through .venv, which
# `make bootstrap` creates (and keeps in sync with pyproject.toml).
PYTHON := .venv/bin/python
RUFF := .venv/bin/ruff
PYTEST := .venv/bin/pytest
PYTEST_ARGS ?=

.PHONY: bootstrap up down status lint format test

bootstrap:
	bin/bootstrap

up: bootstrap
	$(PYTHON) -m cluster up

# Without a .venv nothing can have been started from this checkout.
down:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m cluster down; else echo "no .venv: nothing to stop"; fi

status:
	$(PYTHON) -m cluster status

lint: bootstrap
	$(RUFF) check .
	$(RUFF) format --check .

format: bootstrap
	$(RUFF) check --fix .
	$(RUFF) format .

# One more shard with a PostgreSQL instance of its own (ALIAS=shard_N, default the next).
.PHONY: add-shard
add-shard:
	$(PYTHON) -m cluster add-shard $(ALIAS)

# Serially this is: bootstrap (once), up, lint, then the tests.
test: up lint
	$(PYTEST) $(PYTEST_ARGS)

# Ingest against raw COPY on shard_1; moving devices against raw COPY between two
# shards and the writer stall under load (docs/benchmarks.md).
.PHONY: bench
bench: up
	$(PYTHON) bench/ingest_bench.py --readings 200000
	$(PYTHON) bench/move_bench.py --readings 200000
