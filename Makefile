# The two commands of the README do their own set-up (pip install -e '.[test]').
PYTHON ?= python3
DEMO_DIR ?= outputs/multirun/demo

.PHONY: setup demo test lint

setup:
	$(PYTHON) -m pip install -q -e '.[test]'

# A 6-job grid (lr x width) on the embedded synthetic data set, then its report.
demo: setup
	$(PYTHON) -m sweeper -m experiment=demo hydra.sweep.dir=$(DEMO_DIR)
	$(PYTHON) -m analysis $(DEMO_DIR)

test: setup
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
