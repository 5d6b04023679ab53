# Two commands do all set-up on a fresh clone:  `make run`  and  `make test`.
# Both create/update the local virtualenv .venv from pyproject.toml + constraints.txt first.
# On an NVIDIA GPU box (GH200, H100) run `make gpu` once after that: CUDA torch, onnxruntime-gpu alone, CUDA
# XGBoost, TensorRT; later `make` runs keep the GPU packages (the .venv/.gpu marker picks the `gpu` extra).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GPU    := $(VENV)/.gpu
CONFIG ?= config.toml
# PyTorch's CUDA wheel index (cu128: CUDA 12.8, needs driver >= 570; e.g. TORCH_CUDA=cu130 for CUDA 13)
TORCH_CUDA  ?= cu128
TORCH_INDEX ?= https://download.pytorch.org/whl/$(TORCH_CUDA)
TORCH_CUDA_PIP := --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple
EXTRAS  = $(if $(wildcard $(GPU)),gpu,cpu)

.PHONY: run test venv gpu gpu-check bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt $(if $(wildcard $(GPU)),$(TORCH_CUDA_PIP)) torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS),dev]'
	touch $(STAMP)

venv: $(STAMP)

# GPU install: the CPU twins out first (onnxruntime and onnxruntime-gpu, xgboost-cpu and xgboost each share one
# module), then a CUDA torch from PyTorch's index (torch 2.13.0+$(TORCH_CUDA) outranks PyPI's 2.13.0), then the `gpu` extra; doctor exits 1 on any conflict left.
gpu: $(STAMP)
	$(BIN)/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu xgboost-cpu xgboost torch
	$(BIN)/python -m pip install -q -c constraints.txt $(TORCH_CUDA_PIP) torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[gpu,dev]'
	touch $(GPU) $(STAMP)
	$(BIN)/tradingd doctor

# Every GPU path this machine offers, timed, in one table (+ JSON under reports/); degrades to the CPU parts.
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu-check

run: $(STAMP)
	$(BIN)/tradingd run --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) var .pytest_cache
