# `make demo` and `make test` set themselves up from nothing on a fresh machine.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-test demo test lint

# Keep an installed torch; otherwise install a pinned one (an unpinned torch pulls GBs of CUDA).
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) "torch==$(TORCH_VERSION)"
	$(PIP) -e .

install-test: install
	$(PIP) -e ".[test]"

test: install-test
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check src tests
