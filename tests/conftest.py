import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

os.environ.setdefault("MPLBACKEND", "Agg")

# hypothesis prints the failing example and the blob that replays it (@reproduce_failure)
settings.register_profile("adaptact", print_blob=True)
settings.load_profile("adaptact")
# The compiled CPU path (the default) costs seconds of compilation per kind of input: its tests
# (tests/ops/test_compiled.py) turn it on; everywhere else the same Functions run eagerly.
os.environ.setdefault("ADAPTACT_COMPILE", "0")
# Inductor's on-disk cache of the suite's own: the suite neither reads code a user's scripts
# compiled nor leaves code of its own where theirs will look. It outlives a clone (compiling the
# suite's kernels cold costs minutes); tests of a cold cache make their own
# (tests/ops/test_compiled.py).
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
INDUCTOR_CACHE = CACHE_HOME / "adaptact-tests" / "inductor"
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(INDUCTOR_CACHE)

RANKS = (2, 3, 4, 5)

# A defined activation joins the registry here, before collection: every test over
# adaptact.available() runs over it too.
import tests.defined  # noqa: E402,F401


def random_input(shape, dtype=torch.float32, margin=0.05, requires_grad=False):
    """N(0,1) values kept at least ``margin`` away from 0, where several activations have kinks."""
    x = torch.randn(shape, dtype=torch.float64)
    x = torch.where(x.abs() < margin, x.sign() * margin + x, x)
    x = torch.where(x == 0, torch.full_like(x, margin), x)
    return x.to(dtype).requires_grad_(requires_grad)


def sample_shape(name, shape):
    """``shape`` with trailing dims of 3 added until the named activation takes its rank (FReLU
    needs 2-D maps); unchanged for the rest."""
    from adaptact.registry import spec

    ranks = spec(name).ranks
    shape = tuple(shape)
    while ranks and len(shape) not in ranks and len(shape) < max(ranks):
        shape += (3,)
    return shape


def shape_of_rank(rank, n=3, c=5):
    return (n, c) + (4, 3, 2)[: rank - 2]


@pytest.fixture(autouse=True)
def registry_as_it_was():
    """Names a test defines (``adaptact.define``, the README's example) leave with it: tests over
    ``adaptact.available()`` in the same process see the registry their module saw."""
    from adaptact import registry

    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


@pytest.fixture(autouse=True)
def rng_seed(request):
    """Every test starts from a seed of its own (torch, numpy and Python ``random``): the CRC-32
    of its id plus ADAPTACT_TEST_SEED (default 0; set it to draw other inputs). So a failure
    reproduces with the test run alone or in any order, and the seed is printed (pytest shows it
    with a failure)."""
    offset = int(os.environ.get("ADAPTACT_TEST_SEED", "0"))
    seed = (zlib.crc32(request.node.nodeid.encode()) + offset) % 2**32
    print(f"{request.node.nodeid}: seed {seed} (ADAPTACT_TEST_SEED={offset})")
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """No data set installed: the system folder is empty and $ADAPTACT_DATA unset; caches cleared."""
    from adaptact.datasets import builtin as data

    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.delenv("ADAPTACT_DATA", raising=False)
    data.load.cache_clear()
    yield
    data.load.cache_clear()
