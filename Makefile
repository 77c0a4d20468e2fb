# emplifai — README command 1: `make all`; README command 2: `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
STAMP := $(VENV)/.installed

.PHONY: all setup data params repro fixtures test test-slow test-all lint ui bench

all: repro  ## set everything up and run the whole pipeline on the shipped sample
	@echo
	@echo "Done. Reports: reports/ (summary: reports/summary.md); DVC metrics: \`dvc metrics show\`."
	@echo "MLflow UI: \`make ui\` (it prints the link that opens on the runs)"

setup: $(STAMP)  ## venv + CPU torch + the project, pinned by constraints.txt

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # CPU wheel; an unpinned torch pulls a CUDA build
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q -c constraints.txt --no-deps -r requirements-nodeps.txt   # their declared deps are not needed
	touch $(STAMP)

data: setup  ## the shipped sample into data/ on a fresh clone (byte-identical, so data.dvc matches)
	@test -n "$$(ls -A data 2>/dev/null)" || $(PY) -m emplifai.sample data

params: setup  ## conf/ → params.yaml (what `dvc repro` reads; `dvc exp run` does this itself)
	$(PY) -m emplifai.core.params

repro: data params
	dvc repro

test: fixtures  ## the test suite CI runs (fast + real-model tests; `make test-slow` runs the slow ones)
	$(PY) -m pytest

fixtures: data  ## what the tests read: the real packaged models and the sample's splits (skipped when up to date)
	dvc repro models prepare

test-slow: fixtures  ## only the slow tests (CI runs them after `make test`)
	$(PY) -m pytest -m slow

test-all: fixtures
	$(PY) -m pytest -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

ui: setup  ## MLflow UI on localhost (1 worker: ~0.4 GB instead of ~2 GB)
	@echo "Runs: http://127.0.0.1:5000/#/experiments/$$($(PY) -c "from mlflow.tracking import MlflowClient as C; e = C('sqlite:///mlflow.db').get_experiment_by_name('emplifai'); print(e.experiment_id if e else 1)" 2>/dev/null)?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port 5000 --workers 1

BENCH_OUT ?= reports/bench
bench: setup  ## every benchmark, ratios printed side by side; figures in $(BENCH_OUT)/<bench>.json; fails if any goal is missed
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	@mkdir -p $(BENCH_OUT); failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; \
		$(PY) $$b --json $(BENCH_OUT)/$$(basename $$b .py).json || failed="$$failed $$b"; done; \
		test -z "$$failed" || { echo "missed their goal:$$failed"; exit 1; }
