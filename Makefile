# mestres-observability: developer commands. Every target creates .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS := dev,flask,fastapi,django,otlp,redis,sql,anomaly
STAMP  := $(VENV)/.installed
# benchmarks compare against the peer exporters: their own venv, so the peers'
# OpenTelemetry pins never change the development one
BENCH_VENV  ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
# the demo's own light environment: the runtime and Flask, no development toolchain
DEMO_VENV  ?= .venv-demo
DEMO_PY    := $(DEMO_VENV)/bin/python
DEMO_STAMP := $(DEMO_VENV)/.installed

.PHONY: help venv test lint typecheck unit docs demo serve bench nab test-versions test-newest clean

help:
	@echo "make demo           run the example coffee-shop service (scripted) and show its telemetry"
	@echo "                    (its own light .venv-demo: the library and Flask only)"
	@echo "make serve          keep the example service running on http://127.0.0.1:8000"
	@echo "make test           ruff + lint-imports + mypy --strict + pytest + mkdocs build --strict"
	@echo "make test-versions  core tests on 3.10 and 3.13, adapter tests on 3.11 + Django 5.2 and 3.13 + Django 6.1 (nox)"
	@echo "make test-newest    the whole suite on 3.13 with the newest prometheus-client, OpenTelemetry, structlog, Flask, Starlette/FastAPI, Django (nox)"
	@echo "make bench          benchmarks (ratios measured in one run)"
	@echo "make nab            the anomaly detectors on the Numenta Anomaly Benchmark (NAB_DIR=../shared/nab)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

$(DEMO_STAMP): pyproject.toml
	test -x $(DEMO_PY) || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_PY) -m pip install -q --disable-pip-version-check -e '.[flask]'
	touch $(DEMO_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict mestres_observability

unit: $(STAMP)
	$(VENV)/bin/pytest

docs: $(STAMP)
	$(PY) docs/gen_reference.py
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test: lint typecheck unit docs

# pyenv keeps 3.10, 3.11 and 3.13 out of PATH unless they are listed in PYENV_VERSION.
# core_tests: 3.10 and 3.13; adapter_tests: 3.11 + Django 5.2 and 3.13 + Django 6.1.
test-versions: $(STAMP)
	PYENV_VERSION="$$(pyenv version-name 2>/dev/null):$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(10|11|13)\.[0-9]+$$' | tr '\n' ':')" \
	  $(VENV)/bin/nox --error-on-missing-interpreters -s core_tests adapter_tests

# newest_deps: the whole suite on 3.13 after `pip install --upgrade` of the libraries
# whose internals mestres_observability/_compat.py uses and of the adapters' frameworks.
test-newest: $(STAMP)
	PYENV_VERSION="$$(pyenv version-name 2>/dev/null):$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13\.[0-9]+$$' | tr '\n' ':')" \
	  $(VENV)/bin/nox --error-on-missing-interpreters -s newest_deps

demo: $(DEMO_STAMP)
	$(DEMO_PY) examples/coffee_shop.py --scripted

serve: $(DEMO_STAMP)
	$(DEMO_PY) examples/coffee_shop.py --serve --port 8000

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[flask,fastapi,django,otlp,celery]' -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BENCH_VENV)/bin/python $$b || exit 1; done

# the Numenta Anomaly Benchmark's data is not in the repository: NAB v1.1's
# data/, labels/ and config/ (github.com/numenta/NAB, MIT) under NAB_DIR
NAB_DIR ?= ../shared/nab
NAB_ARGS = --data $(NAB_DIR)/data --windows $(NAB_DIR)/labels/combined_windows.json --jobs 2
nab: $(STAMP)
	$(PY) -m pip install -q -e '.[anomaly]'
	@echo "== seasonal"; $(PY) benchmarks/nab.py $(NAB_ARGS) --detector seasonal
	@echo "== seasonal, its own decisions (no threshold tuned)"; \
	  $(PY) benchmarks/nab.py $(NAB_ARGS) --detector seasonal --decisions
	@echo "== isolation-forest"; $(PY) benchmarks/nab.py $(NAB_ARGS) --detector isolation-forest
	@echo "== forecasts on nyc_taxi"; $(PY) benchmarks/forecast_taxi.py --data $(NAB_DIR)/data/realKnownCause/nyc_taxi.csv
	@echo "== Windowed Gaussian (published scores, scorer check)"; \
	  $(PY) benchmarks/nab.py $(NAB_ARGS) --scores $(NAB_DIR)/results/windowedGaussian

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(DEMO_VENV) site .mypy_cache .pytest_cache .ruff_cache .nox
