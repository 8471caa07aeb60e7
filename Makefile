# Set-up that works on a fresh machine: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision: the releases this project is tested with (pip takes them from local disk where cached).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= serve,onnx,backbones,sweep,notebooks,dev

.PHONY: venv demo demo-train test test-all test-slow lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# The shipped model on images the project makes itself; demo-train: train -> evaluate -> predict on stand-in data.
demo: venv
	$(VENV)/bin/synapse7 demo --out demo_out

demo-train: venv
	$(VENV)/bin/synapse7 demo --train --out demo_out/train

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

test-all: venv
	$(PY) -m pytest -q -m "slow or not slow"

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf demo_out .pytest_cache .ruff_cache build dist src/*.egg-info
