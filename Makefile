# One entry point for installing and testing; README and .ci/run call these targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test test-slow test-gpu demo demo-seg compatibility zoo specs-speed

install:  ## Pinned stack + this package, idempotent (fast when already done).
	VENV=$(VENV) bash tools/install.sh

test: install  ## The fast suite (sweeps over all models are marked slow and excluded).
	$(PY) -m pytest -m "not slow" tests $(PYTEST_ARGS)

test-slow: install  ## The sweeps over every timm architecture.
	$(PY) -m pytest -m slow tests $(PYTEST_ARGS)

test-gpu: install  ## The GPU tests (marker gpu; each skips with the reason where no CUDA GPU is present).
	$(PY) -m pytest -m gpu tests -s $(PYTEST_ARGS)

# The demo's numbers vary between machines only through floating-point rounding: PyTorch, oneDNN
# and MKL pick kernels by instruction set (AVX-512 or AVX2) and split reductions by thread count.
# Pinning both makes x86 machines with AVX2 take the same code paths (README, Demo results);
# `make demo DEMO_ENV=` runs with the machine's own (fastest) kernels instead.
DEMO_ENV ?= ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 OMP_NUM_THREADS=2

demo: install  ## The main job: train + evaluate a detector with a timm backbone on built-in data.
	env $(DEMO_ENV) $(PY) tools/train.py configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py

demo-seg: install  ## Segmentation: train + evaluate UPerNet with a timm backbone on built-in data (mIoU, predicted masks).
	$(PY) tools/train.py configs/seg/upernet_timm-resnet18_1xb8-400it_synthetic-shapes-128x128.py

compatibility: install  ## docs/compatibility.{csv,md}: every timm architecture x the detector families (resumes an interrupted run; RESTART=1 starts over).
	nice -n 10 $(PY) tools/sweep.py --jobs $(or $(JOBS),2) --csv docs/compatibility.csv --md docs/compatibility.md $(if $(RESTART),--restart)

zoo: install  ## docs/zoo.{csv,md}: mmdet's model zoo (one config per family) x resnet18 / convnext_atto / vit_tiny: a training step and predict on CPU (resumes; RESTART=1 starts over).
	nice -n 19 $(PY) tools/zoo_sweep.py --md docs/zoo.md --csv docs/zoo.csv $(if $(RESTART),--restart)

specs-speed: install  ## Cold feature_specs vs a raw timm meta build, side by side in fresh processes.
	$(PY) tools/specs_speed.py
