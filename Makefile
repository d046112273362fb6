# The two set-up commands: `make run` (`aggjobs up`: demo data on the embedded PostgreSQL,
# rolled up, then the worker and scheduler) and `make test` (the whole suite); `make lint` is
# CI's gate on the layers. Each creates the
# virtual environment it needs. `make demo` is the one-shot check: load, refresh, verify, status.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DAYS ?= 7

.PHONY: run demo test lint bench native clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/aggjobs up --demo-days $(DEMO_DAYS)

demo: $(BIN)/.installed
	$(BIN)/aggjobs migrate
	$(BIN)/aggjobs demo --days $(DEMO_DAYS)
	$(BIN)/aggjobs refresh
	$(BIN)/aggjobs verify --force --from "$$($(BIN)/python -c 'import datetime as d; print((d.datetime.now(d.UTC) - d.timedelta(days=$(DEMO_DAYS) + 7)).date())')" --to now
	$(BIN)/aggjobs status

test: $(BIN)/.installed
	$(BIN)/pytest

# The gates CI runs before the suite: ruff's rules, mypy (strict on the core layers) and the
# layers of docs/architecture.md (import-linter's contracts), all written in pyproject.toml.
lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# A quick run of the benchmark suite (minutes); the full one is in docs/benchmarks.md.
bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/suite.py --hours 3 --runs-per-hour 100000 --workspaces 1000 --history 2

# The optional C functions (docs/native.md), built and installed for the PostgreSQL server whose
# pg_config is PG_CONFIG (its -dev headers needed); `aggjobs migrate` then creates the extension.
PG_CONFIG ?= pg_config
# In the package, so that a wheel has them too: `aggjobs up` builds them for its embedded server.
NATIVE := src/aggjobs/native
native:
	$(MAKE) -C $(NATIVE) PG_CONFIG=$(PG_CONFIG) install

# The embedded PostgreSQL and broker under .aggjobs are stopped first: deleting a running
# server's files leaves it running on them. Without the virtual environment, by their pid files.
clean:
	if [ -x $(BIN)/aggjobs ]; then AGGJOBS_DATA_DIR=.aggjobs $(BIN)/aggjobs db stop; \
	elif [ -d .aggjobs ]; then \
	  for f in .aggjobs/broker/valkey.pid .aggjobs/pgdata/postmaster.pid; do \
	    [ ! -f $$f ] || kill -INT "$$(head -1 $$f)" 2>/dev/null || true; done; \
	  for _ in $$(seq 30); do [ -f .aggjobs/pgdata/postmaster.pid ] \
	    || [ -f .aggjobs/broker/valkey.pid ] || break; sleep 1; done; \
	fi
	rm -rf $(VENV) .aggjobs
	$(MAKE) -C $(NATIVE) clean PG_CONFIG=$(PG_CONFIG) 2>/dev/null || true
