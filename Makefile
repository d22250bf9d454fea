# The two commands of the quick start: `make up` and `make test`.
VENV ?= .venv
export AINODE_VENV := $(VENV)
PYTEST_ARGS ?=

.PHONY: setup setup-test up test lint unit lock clean gpu-check

setup:
	scripts/bootstrap.sh

setup-test:
	AINODE_WITH_TEST_TOOLS=1 scripts/bootstrap.sh

## Install what is missing, then run the node in the foreground with the bundled demo model.
up: setup
	$(VENV)/bin/ainode up

## Install what is missing, check style and types, then run the whole test suite.
test: setup-test lint
	$(VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: setup-test
	$(VENV)/bin/python -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

## On a CUDA machine: the tests marked cuda and `ainode bench --full`, into bench/RESULTS-gpu.md.
## Without a GPU it says so and exits 0.
gpu-check: setup-test
	scripts/gpu_check.sh

## Re-pin the Python environment after changing pyproject.toml's dependencies.
lock:
	$(VENV)/bin/pip freeze --exclude-editable | grep -v -E '^(sam2|ainode)==' > requirements.lock.new
	{ head -2 requirements.lock; cat requirements.lock.new; } > requirements.lock && rm requirements.lock.new

clean:
	rm -rf var .mypy_cache .ruff_cache
