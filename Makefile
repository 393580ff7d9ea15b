# `make run` and `make test` set everything up on a fresh machine with Python 3.11+.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export NBA_CATALOG ?= serving/demo/catalog.yaml
export NBA_API_KEYS ?= demo-channel:channel,demo-analyst:analyst,demo-admin:admin

.PHONY: setup run test lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || (echo "Python 3.11+ is required" && exit 1)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@mkdir -p mlruns
	@echo "API keys for local use: demo-channel (channel), demo-analyst (analyst), demo-admin (admin)"
	$(BIN)/nba serve

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(BIN)/ruff check nba bandits features serving training tests bench
	$(BIN)/mypy nba

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) nba.db nba.db-wal nba.db-shm
