# Every target installs what it needs into .venv first: a fresh machine needs only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-celery serve test lint typing browser fuzz burst bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Play a partner program's story through the example app's real webhook URL.
demo: $(STAMP)
	$(BIN)/python -m example_app.demo

## The same story with PROCESSING = "celery": a Celery worker on the machine's Redis
## (EXAMPLE_APP_CELERY_BROKER, default redis://127.0.0.1:6379/0) applies the events; it is
## started before and stopped after.
demo-celery: $(STAMP)
	$(BIN)/python -m example_app.demo --celery

## Run the example app on http://127.0.0.1:5000 (after `make demo` it has data to show).
serve: $(STAMP)
	$(BIN)/flask --app example_app db upgrade
	$(BIN)/flask --app example_app run --port 5000

## Lint, then the whole suite on SQLite, PostgreSQL and MariaDB (REQUIRE_POSTGRES=1 makes
## a missing PostgreSQL an error instead of a loud skip; REQUIRE_SERVICES=1 the same for
## MariaDB, and for Redis and RabbitMQ, which the Celery tests use), in two xdist workers.
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2

## The benchmark: ours against the bare minimum, in-process and over HTTP, with targets
## (15 to 45 minutes; BENCH_ARGS="--quick", "--only http", "--markdown bench.md" pass on).
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## The concurrency suite's burst at 10x the steady rate, for a full minute.
burst: $(STAMP)
	BURST_SECONDS=60 $(BIN)/pytest tests/test_server.py -k burst -p no:cacheprovider

## Many more fuzzing examples than `make test` runs, with a fresh random seed each time.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=5000 FUZZ_RANDOM=1 $(BIN)/pytest tests/test_fuzz.py -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Debian's Chromium for the example app's browser tests (Playwright drives it; its own
## browser download is not used). Installs only when missing; needs root and apt-get,
## else says so and the browser tests skip loudly.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "!!! /usr/bin/chromium is missing and apt-get cannot run here: browser tests will skip"; fi

clean:
	rm -rf $(VENV) example_app/instance .pytest_cache .ruff_cache *.egg-info
