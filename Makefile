# One entry point for installing and testing; README and .ci/run call these targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test test-slow demo

install:  ## Pinned stack + this package, idempotent (fast when already done).
	VENV=$(VENV) bash tools/install.sh

test: install  ## The fast suite (sweeps over all models are marked slow and excluded).
	$(PY) -m pytest -m "not slow" tests $(PYTEST_ARGS)

test-slow: install  ## The sweeps over every timm architecture.
	$(PY) -m pytest -m slow tests $(PYTEST_ARGS)

demo: install  ## The main job: train + evaluate a detector with a timm backbone on built-in data.
	$(PY) tools/train.py configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py
