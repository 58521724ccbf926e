# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-slow test-all bench clean

install: $(VENV)/.installed

# torch==2.13.0 first, pinned so that set-up and CI run what was tested. From PyPI on Linux this is the
# CUDA build (about 0.5 GB plus NVIDIA's CUDA libraries), which also runs on a CPU; a pip configured with
# a local wheel cache may find the CPU build instead. For the CPU-only build from PyTorch's own index
# (optional): make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu  (after `make clean` if .venv exists)
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/daram demo --workdir work/demo

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) work .pytest_cache
