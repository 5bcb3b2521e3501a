# The two entry points of the README: `make demo` and `make test`. Both build .venv (pip + venv) first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/compass demo

# the whole suite: what CI (.ci/run) and the README run. One test process per core (each one torch thread);
# a test module stays on one process (its ledger and fixtures are module-scoped). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# the edit loop: unit tests that build no model and open no browser (under a minute)
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/pytest -q tests/unit -m "not (models or slow or browser or e2e or faults)"

clean:
	rm -rf $(VENV) compass-demo runs .pytest_cache
