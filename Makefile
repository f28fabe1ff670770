# Everything runs from a project-local virtualenv; the first target that needs it creates it.
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= local,dev,dj-db-conn-pool,load,asgi,tasks
# An extra requirement for the install, e.g. DJANGO="Django>=6,<6.2"
DJANGO ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo overhead run run-ab test test-native test-dj-db-conn-pool django-suite lint db-start db-stop db-status db-reset clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) with $(PYTHON) and installing the project"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" $(if $(DJANGO),"$(DJANGO)")
	@touch $@

install: $(STAMP)

## The A/B demonstration: stock Django, release, the ceiling (and PgBouncer where installed)
## under Locust, report in reports/ (raw, orm, atomic under gunicorn's threads, async under
## uvicorn workers; about 6 minutes on 2 cores, 8 with the install).
.PHONY: demo-full sweep
demo: install
	@$(BIN)/python -m loadtests.compare $(COMPARE_ARGS)

## Every scenario (orm, raw, mixed, atomic, leaky, async, tasks), 30 s per side: about 25 minutes on 2 cores.
demo-full: install
	@$(BIN)/python -m loadtests.compare --scenarios all --duration 30 $(COMPARE_ARGS)

## Connections needed: stock and release at pool sizes 1 to 32 (about 10 minutes on 2 cores).
## Under ASGI: make sweep COMPARE_ARGS="--server asgi --scenarios async --pool-sizes 1,2,4,8,16,32,64"
sweep: install
	@$(BIN)/python -m loadtests.compare --scenarios raw,orm --pool-sizes 1,2,4,8,16,32 --duration 12 \
		--overhead-rounds 0 $(COMPARE_ARGS)

## Per-query cost of release, one thread.
overhead: install
	@$(BIN)/python -m loadtests.overhead

## The same cost in CPU instructions, counted by valgrind (steady on a busy machine).
instructions: install
	@$(BIN)/python -m loadtests.instructions

## The shop under Locust while backends are killed and PostgreSQL stops 5 s and 15 s, release and
## stock on both pools, on a PostgreSQL of its own (about 10 minutes on 2 cores). FAULTS_ARGS: e.g.
## "--pools native --faults kill".
.PHONY: faults dead-connection
faults: install
	@$(BIN)/python -m loadtests.faults $(FAULTS_ARGS)

## Release under the mixed (WSGI) and async (ASGI) load for 30 minutes, every server session killed
## every 4 minutes and PostgreSQL restarted twice, on a PostgreSQL of its own: memory, descriptors,
## connections, hold and wait sampled, with verdicts, in reports/soak/ (docs/soak.md). SOAK_ARGS: e.g.
## "--pool dj_db_conn_pool", "--engine baseline", "--minutes 0.5".
.PHONY: soak
soak: install
	@$(BIN)/python -m loadtests.soak $(SOAK_ARGS)

## What a dead pooled connection costs one query, each engine and psycopg_pool alone.
dead-connection: install
	@$(BIN)/python -m loadtests.deadconn

## A Celery worker (threads pool, 32 threads) confirming orders, on the embedded PostgreSQL (or
## DATABASE_URL), its broker a folder in .localdb/ (or CELERY_BROKER_URL). Queue tasks for it from
## another terminal: .venv/bin/python -m loadtests.tasks queue 100
.PHONY: worker
worker: install
	@$(BIN)/python -m loadtests.tasks worker

## Serve the sample site under gunicorn on the embedded PostgreSQL (or DATABASE_URL).
run: install
	@$(BIN)/python -m devtools.serve

## The shop twice: release on :8000, stock Django on :8001, each /pool/ showing both.
run-ab: install
	@$(BIN)/python -m devtools.serve_ab

## The test suite, once per pool.
test: test-native test-dj-db-conn-pool
	@echo "==> all tests passed for both pools"

test-native: install
	@echo "==> tests with DB_POOL=native"
	DB_POOL=native $(BIN)/python -m pytest $(PYTEST_ARGS)

test-dj-db-conn-pool: install
	@echo "==> tests with DB_POOL=dj_db_conn_pool"
	DB_POOL=dj_db_conn_pool $(BIN)/python -m pytest $(PYTEST_ARGS)

## Django's own test suite (chosen apps) against both release engines; known differences are
## listed in devtools/djangosuite/expected.py. DJANGO_SUITE_ARGS: e.g. "backends -v 2".
django-suite: install
	@$(BIN)/python -m devtools.djangosuite $(DJANGO_SUITE_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The alerting rules (docker/prometheus/alerts.yml, docs/operating.md): promtool checks both
## Prometheus configs and runs the rules' unit tests. Debian: apt-get install prometheus.
.PHONY: alerts-test prometheus
PROMTOOL ?= promtool
alerts-test:
	$(PROMTOOL) check config docker/prometheus/prometheus.yml docker/prometheus/native.yml
	$(PROMTOOL) test rules docker/prometheus/alerts_test.yml
	@echo "==> rules and configs valid, every alert's unit tests passed"

## Prometheus for `make run-ab`'s two sites (start those first), its data in a fresh temporary
## folder; then http://127.0.0.1:9090/targets (both sites up) and /alerts.
PROMETHEUS ?= prometheus
prometheus:
	@data=$$(mktemp -d) && echo "==> Prometheus on http://127.0.0.1:9090 for :8000 and :8001, data in $$data" && \
		$(PROMETHEUS) --config.file=docker/prometheus/native.yml --storage.tsdb.path=$$data \
			--web.listen-address=127.0.0.1:9090

db-start: install
	@$(BIN)/python -m devtools.localdb start
db-stop: install
	@$(BIN)/python -m devtools.localdb stop
db-status: install
	@$(BIN)/python -m devtools.localdb status || [ $$? -eq 1 ]  # 1: not running, which is an answer
## Stop the embedded server and delete its data.
db-reset: db-stop
	rm -rf .localdb/pgdata
	@echo "==> removed .localdb/pgdata; the next command creates a fresh one"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
