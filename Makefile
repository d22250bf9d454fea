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
## It runs in TEST_WORKERS processes (pytest-xdist), each running whole test files
## (--dist loadfile), so a file's shared node is started once; every process takes its ports
## from a block of its own (tests/nodeharness.py free_port). 3 is the default: on these 2 cores
## it was the fastest measured that stayed green (one process: about twice as long; 4 processes
## failed a test in a few runs, from two races in pynetdicom under load: a rejection read as an
## abort, fixed in the C-STORE sender; a C-STORE answer taken by the association's own
## reactor). TEST_WORKERS=0 runs everything in this one process.
## Files go out in collection order (--no-loadscope-reorder; xdist would otherwise send the files
## with most tests first): tests/conftest.py puts the files with a test marked slow first, then
## browser and integration before unit, so short unit files fill the end of the run.
TEST_WORKERS ?= 3
## In parallel, math libraries one thread per process (the test processes and the nodes'
## workers): with more processes than cores their thread pools spin against each other (seen:
## 3x slower inference).
test: setup-test lint
	$(if $(filter-out 0,$(TEST_WORKERS)),OMP_NUM_THREADS=1 )$(VENV)/bin/python -m pytest \
		-p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
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
