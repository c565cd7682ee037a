"""channel_dim and lazy channels on the modules the backend matrix does not cover (PReLU, Maxout,
FReLU; the adaptive ones: tests/ops/test_backends.py), and what laziness promises for each
lazy module: state_dicts before the first forward, the repr, the dtype it was moved to."""

import copy

import pytest
import torch

import adaptact
from adaptact import nn as ann

C = 6


BUILDS = {"prelu": lambda **kw: ann.PReLU(C, **kw), "maxout": lambda **kw: ann.Maxout(C, pieces=3, **kw),
          "frelu": lambda **kw: ann.FReLU(C, dims=1, **kw)}
SHAPES = {"tokens": (4, 5, C), "nhwc": (4, 3, 5, C), "rows": (4, C)}
CASES = [(b, s) for b in BUILDS for s in SHAPES if b != "frelu" or s == "tokens"]  # FReLU(dims=1): (N, L, C)


@pytest.mark.parametrize("build, shape", [(BUILDS[b], SHAPES[s]) for b, s in CASES],
                         ids=[f"{b}-{s}" for b, s in CASES])
def test_channels_last_equals_channels_first(build, shape):
    torch.manual_seed(0)
    first = build()
    with torch.no_grad():
        for p in first.parameters():
            p.add_(0.3 * torch.randn_like(p))
    last = build(channel_dim=-1)
    last.load_state_dict(first.state_dict())
    x = torch.randn(shape, requires_grad=True)
    xf = x.detach().movedim(-1, 1).requires_grad_()
    y, yf = last(x), first(xf)
    torch.testing.assert_close(y, yf.movedim(1, -1))
    g = torch.randn_like(y)
    y.backward(g)
    yf.backward(g.movedim(-1, 1))
    torch.testing.assert_close(x.grad, xf.grad.movedim(1, -1))
    for (n, a), b in zip(first.named_parameters(), last.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=n)


LAZY = [n for n in adaptact.available() if adaptact.spec(n).lazy]


@pytest.mark.parametrize("name", LAZY)
def test_lazy_modules_load_state_dicts_repr_and_follow_dtype(name):
    torch.manual_seed(0)
    kwargs = {"dims": 1} if name == "frelu" else {}
    sized = adaptact.create(name, channels=C, **kwargs).eval()
    lazy = adaptact.create(name, channel_dim=-1, **kwargs)
    assert "channels=None (uninitialized)" in repr(lazy)
    lazy.load_state_dict(sized.state_dict())  # before any forward: the entries' shapes give C
    assert lazy.channels == C
    x = torch.randn(2, 5, C)
    torch.testing.assert_close(lazy.eval()(x), sized(x.movedim(-1, 1)).movedim(1, -1))
    half = adaptact.create(name, **kwargs).to(torch.bfloat16)
    half(torch.randn(2, C, 5, dtype=torch.bfloat16))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and half.channels == C
    fresh = copy.deepcopy(adaptact.create(name, **kwargs))
    with pytest.raises(ValueError, match="takes its channels from dim 1 of its first input"):
        fresh(torch.randn(5))


def test_a_materialised_module_keeps_its_channels():
    m = adaptact.AconC(channel_dim=-1)
    m(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="expected 8 channels on dim -1, got 9"):
        m(torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match="channel_dim must be a non-zero int"):
        adaptact.AconC(8, channel_dim=0)
