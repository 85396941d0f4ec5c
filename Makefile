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

# The benchmark suite (bench/suite.py: uploads through HAProxy, end-to-end ingest, HAProxy
# and router overhead, directory queries, moves under load, the import against raw COPY,
# memory), written to bench/results/<timestamp>.json and .md; then the rollup benchmark
# (docs/benchmarks.md). BENCH_ARGS=--quick for a short trial run.
BENCH_ARGS ?=
.PHONY: bench
bench: up
	@status=0; $(PYTHON) bench/suite.py $(BENCH_ARGS) || status=$$?; \
	if test -f bench/rollup_bench.py; then \
		$(PYTHON) bench/rollup_bench.py --readings 200000 || status=$$?; fi; \
	exit $$status

# Rebalancing 200 small devices from two shards onto a third (added if missing) with 1 and 4
# moves at once, under a steady upload load through HAProxy, verified (bench/rebalance_bench.py;
# docs/benchmarks.md). Not part of `make bench`: it adds a shard to the local cluster.
REBALANCE_BENCH_ARGS ?=
.PHONY: bench-rebalance
bench-rebalance: up
	$(PYTHON) bench/rebalance_bench.py $(REBALANCE_BENCH_ARGS)

# One Locust scenario against the local cluster through HAProxy, verified afterwards
# (loadtest/README.md). SCENARIO=swarm|web|mix|ceiling; reports under var/loadtest/.
SCENARIO ?= swarm
USERS ?= 20
RUN_TIME ?= 60s
INTERVAL ?= 1
.PHONY: loadtest
loadtest: up
	$(PYTHON) loadtest/run.py --scenario $(SCENARIO) --users $(USERS) --run-time $(RUN_TIME) \
		--interval $(INTERVAL)
