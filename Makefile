# Two commands do everything on a fresh machine:
#   make train   set up (if needed), then train the main job (resumes if interrupted)
#   make test    set up the test dependencies, start the dev SLURM cluster, run the tests
#   make docs    serve the documentation site on http://127.0.0.1:8000 (DOCS_ADDR=127.0.0.1:8001 for another port)
# Options: make train RUN_DIR=runs/x ARGS="--epochs 3"; PYTHON=python3.11 make test; make test TEST_WORKERS=4
# The tests run on TEST_WORKERS pytest-xdist workers, whole files to a worker (--dist loadfile), so that
# a file's module fixtures (e.g. two-worker reference runs) are made once; the longest files first
# (--no-loadscope-reorder keeps tests/conftest.py's order). One more worker runs the files that mostly
# wait (SLURM jobs through their time limits, lost-worker bounds): --waiting-worker, tests/scheduling.py.
PYTHON ?= python3
RUN_DIR ?= runs/fmnist
ARGS ?=
TEST_WORKERS ?= 2
DOCS_ADDR ?= 127.0.0.1:8000

.PHONY: setup setup-test setup-docs train test docs

setup: .setup.stamp
.setup.stamp: pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) scripts/setup.sh
	touch $@

setup-test: .setup-test.stamp
.setup-test.stamp: pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) scripts/setup.sh --test
	touch $@ .setup.stamp .setup-docs.stamp

setup-docs: .setup-docs.stamp
.setup-docs.stamp: pyproject.toml
	$(PYTHON) -m pip install -q -e ".[docs]"
	touch $@

train: setup
	$(PYTHON) -m trainer train --run-dir $(RUN_DIR) $(ARGS)

test: setup-test
	slurm/dev-cluster/start.sh
	$(PYTHON) -m pytest -n $$(($(TEST_WORKERS) + 1)) --waiting-worker --dist loadfile --no-loadscope-reorder

docs: setup-docs
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs serve --dev-addr $(DOCS_ADDR) --watch trainer
