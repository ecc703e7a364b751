# The two commands a user needs: `make demo` and `make test`. Both set up what is missing first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deltaml-installed
PYTEST_ARGS ?=

.PHONY: browser setup demo demo-monitor demo-flights demo-penguins demo-diamonds test test-fast lint docs zip clean cluster-up cluster-down connect-up connect-down

setup: $(STAMP)
	$(BIN)/deltaml setup-jars

# Reinstall when the dependency list or the pins change; a second `make` reuses the environment.
$(STAMP): setup.py constraints/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/dev.txt -e '.[spark,connect,demo,dev]'
	touch $(STAMP)

# The compatibility matrix: one environment per Databricks runtime line, with the versions that runtime
# ships (constraints/dbr-*.txt) on Python 3.12. Each runs the tests that meet the versioned libraries
# (MATRIX_TESTS: Delta through SQL, MLflow tracking, registry and model files, saved models, scikit-learn
# and LightGBM, Hyperopt, pydantic, matplotlib, scipy, the bundle models), but their slow ones; CI runs
# `make test-matrix` after `make test`. `make test-matrix MATRIX_TESTS=tests` runs the whole fast suite
# in each (about 9 minutes an environment); `make test-dbr-17.3` one environment.
PYTHON312 ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12)),python3.12)
MATRIX := dbr-17.3 dbr-18 dbr-19
MATRIX_TESTS ?= $(addprefix tests/test_,$(addsuffix .py,packaging session config search_space catalog tracking \
	registry_cli saved_models models single_node tuning train evaluation report drift bundle))
.PHONY: test-matrix wheel $(MATRIX:%=test-%)

.venvs/%/.installed: setup.py constraints/%.txt
	test -x .venvs/$*/bin/python || $(PYTHON312) -m venv .venvs/$*
	.venvs/$*/bin/python -m pip install --quiet --disable-pip-version-check -c constraints/$*.txt -e '.[spark,connect,demo,dev]'
	touch $@

# The wheel a runtime installs (no extras); each matrix run first checks it changes no package there.
wheel: $(STAMP)
	rm -f dist/deltaml-*.whl
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .

$(MATRIX:%=test-%): test-%: .venvs/%/.installed wheel
	.venvs/$*/bin/python -m tests.wheel_check dist/deltaml-*-py3-none-any.whl
	.venvs/$*/bin/deltaml setup-jars
	.venvs/$*/bin/python -m pytest -m "not slow" -p no:cacheprovider $(PYTEST_ARGS) $(MATRIX_TESTS)

test-matrix: $(MATRIX:%=test-%)

demo: setup
	$(BIN)/deltaml run conf/telco_churn.yml --env local

# After `make demo`: score what is new, monitor it against the champion's training profile, and
# evaluate the retraining policy without training (run `deltaml retrain` without --dry-run to let it train).
demo-monitor: setup
	$(BIN)/deltaml score conf/telco_churn.yml --env local
	$(BIN)/deltaml monitor conf/telco_churn.yml --env local
	$(BIN)/deltaml retrain conf/telco_churn.yml --env local --dry-run

# The second example: real flights with point-in-time window features (about 3 minutes).
demo-flights: setup
	$(BIN)/deltaml run conf/flight_delays.yml --env local

# A multiclass label (penguin species, about 1 minute) and a regression label (diamond prices, about 2.5 minutes).
demo-penguins: setup
	$(BIN)/deltaml run conf/penguin_species.yml --env local

demo-diamonds: setup
	$(BIN)/deltaml run conf/diamond_prices.yml --env local

# The tests render the HTML reports in headless Chromium (tests/browser.py): Debian's packages, installed once
# with apt-get; elsewhere install Chromium and its chromedriver yourself (the report tests say so if they are missing).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ command -v apt-get >/dev/null || { echo "no apt-get: install Chromium and chromedriver for the report tests"; exit 0; }; \
		  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

test: setup lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Skips the tests marked slow (cluster and end-to-end runs); CI runs everything.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check lib tests jobs notebooks benchmarks docs
	$(BIN)/ruff format --check lib tests jobs notebooks benchmarks docs
	$(BIN)/mypy --strict lib
	$(BIN)/mypy tests docs

# docs/reference/configuration.md and cli.md, generated from the config models and the CLI parser (no Spark needed).
docs: $(STAMP)
	$(BIN)/python docs/generate_reference.py

# The package as a .zip for spark-submit --py-files (executors cannot import from a .whl).
zip: $(STAMP)
	mkdir -p dist
	rm -f dist/deltaml.zip
	cd lib && ../$(BIN)/python -m zipfile -c ../dist/deltaml.zip deltaml

clean:
	rm -rf .deltaml dist

# A Spark standalone cluster (master + two 1-core, 2g workers) and an MLflow server on 127.0.0.1, from the
# installed pyspark and mlflow; `cluster-up` prints the URLs to export, `cluster-down` stops exactly what it started.
cluster-up: setup
	$(BIN)/python -m tests.cluster up

cluster-down:
	$(BIN)/python -m tests.cluster down

# A Spark Connect server on sc://127.0.0.1:15002 (local[2], Delta), the transport of Databricks serverless and
# standard-access clusters; `deltaml run conf/telco_churn.yml --env local-connect` then runs through it.
connect-up: setup
	$(BIN)/python -m tests.connect up

connect-down:
	$(BIN)/python -m tests.connect down
