# Two commands on a fresh machine: `make run` (the whole loop on the embedded default) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
JOB ?= train_and_deploy_all
CHECKOV_VERSION ?= 3.3.30

export MLOPS_HOME ?= $(CURDIR)/var
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster_home
export MLOPS_PROFILE ?= local
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION ?= 20
export CHECKPOINT_DISABLE ?= 1

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,infra,xgboost,lightgbm]'
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed ## create the virtualenv and install the pinned dependencies

# The pinned cdktf CLI (npm) and checkov in a virtualenv of its own (its pins clash with the platform's).
infra_cdktf/node_modules/.installed: infra_cdktf/package.json infra_cdktf/package-lock.json
	cd infra_cdktf && npm ci --no-audit --no-fund --loglevel=error
	touch $@

.venv-checkov/.installed:
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

infra-tools: infra_cdktf/node_modules/.installed .venv-checkov/.installed promtool ## cdktf CLI, checkov and promtool for the infra checks

# promtool (Debian's prometheus package) runs the alert rules' unit tests; installed when missing and root, else an
# error that says what to install: CI fails without it, never skips.
promtool:
	@command -v promtool >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
	  { echo "promtool is missing: install Debian's prometheus package" >&2; exit 1; }

# Azurite (npm), the Azure Blob emulator the storage tests run against; moto and the GCS emulator come with `.[test]`.
tests/azurite/node_modules/.installed: tests/azurite/package.json tests/azurite/package-lock.json
	cd tests/azurite && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# PostgreSQL's server binaries (Debian's package) for the cloud-profile runs; installed when missing and root.
postgres-server:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  { echo "PostgreSQL's server (initdb) is missing: install Debian's postgresql package" >&2; exit 1; }

emulators: tests/azurite/node_modules/.installed postgres-server ## the storage and database servers the tests start on loopback

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

home: install $(DAGSTER_HOME)/dagster.yaml

run: home ## seed landing, run the end-to-end job, print the endpoint and a prediction
	$(PY) -m mlops_platform.cli seed
	$(BIN)/dagster job execute -m mlops_platform.definitions -j $(JOB)
	$(PY) -m mlops_platform.cli predict

drift-demo: install ## the monitoring loop in one command: drift, failing checks, a drift-started retrain, a new champion
	$(PY) examples/drift/run.py

e2e-aws: install emulators ## the aws profile's whole job on moto's S3 server and PostgreSQL, on loopback
	$(BIN)/pytest -p no:randomly -k "aws or lost" tests/e2e/test_cloud_profiles.py

e2e-azure: install emulators ## the azure profile's whole job on Azurite and PostgreSQL, on loopback
	$(BIN)/pytest -p no:randomly -k azure tests/e2e/test_cloud_profiles.py

e2e-gcp: install emulators ## the gcp profile's whole job on the GCS emulator and PostgreSQL, on loopback
	$(BIN)/pytest -p no:randomly -k gcp tests/e2e/test_cloud_profiles.py

env-table: install ## rewrite the README's table of environment variables from mlops_platform/defs/profiles.py
	$(PY) -c "import re, pathlib; from mlops_platform.defs.profiles import variables_table as t; p = pathlib.Path('README.md'); \
	p.write_text(re.sub(r'(<!-- env-table -->\n).*?(<!-- /env-table -->)', lambda m: m[1] + t() + m[2], p.read_text(), flags=re.S))"

launch: home ## launch the job through the run launcher, as `dagster job launch` does
	$(BIN)/dagster job launch -w workspace.yaml -j $(JOB)

lint: install ## ruff, and the import-linter contracts that keep the layers apart
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install infra-tools emulators lint ## the whole suite CI runs: lint, layer contracts, every test tier in random order
	$(BIN)/pytest

test-fast: install ## the pure core, protocol, routing, storage and metrics tests: seconds, no servers
	$(BIN)/pytest -m "not slow" tests/core tests/serving tests/integrations

ui: home ## open the Dagster UI on http://127.0.0.1:3000
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: home ## open the MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLOPS_HOME)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

stop: ## stop the local model server
	@if [ -x $(PY) ]; then $(PY) -m mlops_platform.cli stop; fi

validate: home ## `dagster definitions validate` for every profile
	for p in local aws azure gcp; do MLOPS_PROFILE=$$p $(BIN)/dagster definitions validate -m mlops_platform.definitions || exit 1; done

bench: home ## end-to-end benchmark: wall time split into compute and orchestration
	$(PY) bench/e2e_local.py

synth: install infra-tools ## synthesize all twelve infrastructure stacks (six environments × cloud, platform) into infra_cdktf/cdktf.out
	cd infra_cdktf && PATH=$(CURDIR)/$(BIN):$$PATH npx cdktf synth

checkov: synth ## scan the synthesized stacks with checkov and the reviewed skip list
	$(PY) infra_cdktf/scan.py

lock: ## regenerate constraints.txt from the current virtualenv
	( sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^-e ' ) > constraints.tmp && mv constraints.tmp constraints.txt

clean: stop ## stop the server and delete local state (MLflow store, Dagster home, landing)
	rm -rf $(MLOPS_HOME)

.PHONY: help install infra-tools emulators postgres-server home run drift-demo e2e-aws e2e-azure e2e-gcp env-table promtool launch lint test test-fast ui mlflow-ui stop validate bench synth checkov lock clean
