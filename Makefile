# The two commands of the README do their own set-up (pip install -e '.[test,optuna]').
PYTHON ?= python3
DEMO_DIR ?= outputs/multirun/demo

.PHONY: setup demo test lint reproduce

setup:
	$(PYTHON) -m pip install -q -e '.[test,optuna]'

# A 6-job grid (lr x width) on the embedded synthetic data set, then its report.
demo: setup
	$(PYTHON) -m sweeper -m experiment=demo hydra.sweep.dir=$(DEMO_DIR)
	$(PYTHON) -m analysis $(DEMO_DIR)

test: setup
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# The lecture on real CIFAR-10 (point SWEEPER_DATA at it, or let torchvision download it), then
# docs/reproduction.md and its figures. Hours on a CPU; minutes on a GPU.
REPRO_DIR ?= outputs/reproduction
reproduce: setup
	for e in lecture_lr lecture_lr2 lecture_test_loss lecture_overfit_subset lecture_capacity; do \
	  $(PYTHON) -m sweeper -m experiment=$$e hydra.sweep.dir=$(REPRO_DIR)/$$e || echo "$$e: not every job completed"; \
	done
	$(PYTHON) -m analysis.reproduction $(REPRO_DIR) --out docs
