# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
# torch==2.13.0 goes in first: it is a local CPU build here, any other spec pulls a multi-GB CUDA build.
.PHONY: install data demo test test-fast quality style clean

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
CHECK_DIRS := aesam_hf tests examples

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Real data for the demo: Debian's dataset-fashion-mnist, installed when missing and apt-get is there.
$(FASHION_MNIST):
	@if command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: install Debian's dataset-fashion-mnist or pass --data_dir" >&2; exit 1; \
	fi

data: $(FASHION_MNIST)

demo: install data
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests -m "not slow and not distributed"

quality: install
	$(VENV)/bin/ruff check $(CHECK_DIRS)
	$(VENV)/bin/ruff format --check $(CHECK_DIRS)
	$(PY) -c "import aesam_hf; from aesam_hf import *; print('aesam_hf', aesam_hf.__version__, 'imports cleanly')"

style: install
	$(VENV)/bin/ruff check --fix $(CHECK_DIRS)
	$(VENV)/bin/ruff format $(CHECK_DIRS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
