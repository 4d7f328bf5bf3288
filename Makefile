# Two commands for a newcomer: `make run` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv run demo test test-unit test-integration lint bench bench-quick clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "penny_cache needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## run: the main job: the HTTP service on 4 workers + the exporter, sharing one cache
## (embedded Redis unless PENNY_REDIS_URL), a self-check, then URLs to curl until Ctrl-C
run: $(STAMP)
	$(BIN)/penny-cache run --workers 4

## demo: worker processes under a Zipf workload for 5 s, then the shared hit rate
demo: $(STAMP)
	$(BIN)/penny-cache demo

## test: the whole suite (integration tests start their own redis-server)
test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check penny_cache tests bench
	$(BIN)/ruff format --check penny_cache tests bench
	$(BIN)/mypy

## bench: every benchmark, side by side with its baselines and peers, in one run each
## (ratios; JSON in bench/, the charts in bench/peers.png and bench/http.png)
bench: $(STAMP)
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

bench-quick: $(STAMP)
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
