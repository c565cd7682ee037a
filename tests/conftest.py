import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
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


@pytest.fixture
def rng_seed(request):
    """A seed for torch's RNG, fixed by ADAPTACT_TEST_SEED or drawn and printed (pytest shows it
    with a failure): rerun with ADAPTACT_TEST_SEED=<seed> to see the same inputs."""
    seed = int(os.environ.get("ADAPTACT_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"{request.node.nodeid}: ADAPTACT_TEST_SEED={seed}")
    torch.manual_seed(seed)
    return seed


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """No data set installed: the system folder is empty and $ADAPTACT_DATA unset; caches cleared."""
    from adaptact.bench import data

    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.delenv("ADAPTACT_DATA", raising=False)
    data.load.cache_clear()
    yield
    data.load.cache_clear()
