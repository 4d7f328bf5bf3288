# Two commands for a newcomer: `make run` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One venv, two stamps: `make run` installs only the [service] extra (what running needs,
# about 30 packages); `make test` adds [dev] (pytest, mypy, schemathesis, the bench peers,
# matplotlib) to the same venv, and its stamp also stands for [service], its subset.
SERVICE_STAMP := $(VENV)/.service-stamp
DEV_STAMP     := $(VENV)/.dev-stamp
PIP := $(BIN)/pip install --disable-pip-version-check

.PHONY: venv venv-dev run demo test test-unit test-integration lint bench bench-quick clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "penny_cache needs Python >= 3.11")'
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)

$(SERVICE_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing penny_cache[service] into $(VENV) (first time: under a minute)"
	$(PIP) -e '.[service]'
	@touch $(SERVICE_STAMP)
	@echo "==> installed; starting"

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing penny_cache[dev] into $(VENV) (tests, linters, bench peers)"
	$(PIP) -e '.[dev]'
	@touch $(DEV_STAMP) $(SERVICE_STAMP)

venv: $(SERVICE_STAMP)

venv-dev: $(DEV_STAMP)

## run: the main job: the HTTP service on 4 workers + the exporter, sharing one cache
## (embedded Redis unless PENNY_REDIS_URL), a self-check, then URLs to curl until Ctrl-C
run: $(SERVICE_STAMP)
	$(BIN)/penny-cache run --workers 4

## demo: worker processes under a Zipf workload for 5 s, then the shared hit rate
demo: $(SERVICE_STAMP)
	$(BIN)/penny-cache demo

## test: the whole suite (integration tests start their own redis-server)
test: $(DEV_STAMP)
	$(BIN)/python -m pytest

test-unit: $(DEV_STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(DEV_STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(DEV_STAMP)
	$(BIN)/ruff check penny_cache tests bench
	$(BIN)/ruff format --check penny_cache tests bench
	$(BIN)/mypy

## bench: every benchmark, side by side with its baselines and peers, in one run each
## (ratios; JSON in bench/, the charts in bench/peers.png and bench/http.png)
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.bench_foundation --json bench/results.json
	$(BIN)/python -m bench.bench_near --json bench/results_near.json
	$(BIN)/python -m bench.bench_peers --json bench/results_peers.json
	$(BIN)/python -m bench.bench_workload --json bench/results_workload.json
	@# the HTTP service against bare FastAPI (wrk; PostgreSQL too when
	@# PENNY_BENCH_DATABASE_URL is set); rewrites its section of bench/README.md
	$(BIN)/python -m bench.bench_http --json bench/results_http.json
	$(BIN)/python -m bench.bench_stats --json bench/results_stats.json
	$(BIN)/python -m bench.bench_strict --json bench/results_strict.json
	$(BIN)/python -m bench.bench_bound --json bench/results_bound.json
	$(BIN)/python -m bench.bench_sign --json bench/results_sign.json
	@# the same workload on PostgreSQL when PENNY_BENCH_DATABASE_URL names a server
	@if [ -n "$$PENNY_BENCH_DATABASE_URL" ]; then \
	    $(BIN)/python -m bench.bench_workload --json bench/results_workload_postgres.json; fi

bench-quick: $(DEV_STAMP)
	$(BIN)/python -m bench.bench_foundation --quick
	$(BIN)/python -m bench.bench_near --quick
	$(BIN)/python -m bench.bench_peers --quick
	$(BIN)/python -m bench.bench_workload --quick
	$(BIN)/python -m bench.bench_http --quick
	$(BIN)/python -m bench.bench_stats --quick
	$(BIN)/python -m bench.bench_strict --quick
	$(BIN)/python -m bench.bench_bound --quick
	$(BIN)/python -m bench.bench_sign --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
