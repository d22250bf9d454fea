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

## Install what is missing, check style and types, then run the whole test suite in parallel:
## TEST_WORKERS processes (pytest-xdist), each running whole test files (--dist loadfile), so a
## file's shared node is started once. Tests wait on what they see, never on time, and every
## process takes its ports from a block of its own (tests/nodeharness.py free_port), so files
## run safely side by side; TEST_WORKERS=0 runs everything in this one process. Most of a test's
## time is spent waiting on Orthanc, Redis and the worker, so more processes than cores help.
TEST_WORKERS ?= 4
## Math libraries one thread per process (the test processes and the nodes' workers): with more
## processes than cores, their thread pools spin against each other (seen: 3x slower inference).
test: export OMP_NUM_THREADS := 1
test: setup-test lint
	$(VENV)/bin/python -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile \
		--durations=20 $(PYTEST_ARGS)

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
