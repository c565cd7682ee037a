"""The kinds' records (ops/kinds.py): the kernels' a, b, c from a Function's parameters and the
Function again from them, and the routes and launchers built from a name alone."""

import os

import pytest
import torch

from adaptact import functional as AF
from adaptact.ops import autograd as AG
from adaptact.ops import compiled as CP
from adaptact.ops import dispatch, kinds

# each kind's Function parameters, as ops.autograd takes them (viewed against (N, C, S) x)
PARAMETERS = {
    "arelu": lambda c: (torch.rand(1, c, 1) * 0.9 + 0.05, 1 + torch.rand(1, c, 1)),
    "acon_c": lambda c: (torch.randn(1, c, 1), torch.randn(1, c, 1), torch.randn(2, c, 1)),  # beta per sample
    "acon_c_pixel": lambda c: (torch.randn(1, c, 1), torch.randn(1, c, 1)),
    "aprelu": lambda c: (torch.rand(2, c, 1),),
}


def test_every_kind_is_a_function_of_ops_autograd_with_its_own_number():
    assert set(PARAMETERS) == set(kinds.NAMED)
    assert sorted(kinds.KINDS) == list(range(len(kinds.KINDS)))
    for number, kind in kinds.KINDS.items():
        assert kind.number == number and callable(getattr(AG, kind.name))


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_a_kinds_operands_and_its_fallback_give_back_the_function(name):
    kind = kinds.NAMED[name]
    x = torch.randn(2, 5, 7, requires_grad=True)
    params = PARAMETERS[name](5)
    operands = kind.operands(*params)
    assert [t is not None for t in operands] == [p in kind.parameters for p in "abc"]
    filled = [torch.zeros(()) if t is None else t for t in operands]
    y = kind.lean(x, *filled)
    torch.testing.assert_close(y, getattr(AG, name)(x, *params), rtol=1e-6, atol=1e-6)
    dx, = torch.autograd.grad(y.sum(), x)  # the fallback's gradients are the Function's
    expected, = torch.autograd.grad(getattr(AG, name)(x, *params).sum(), x)
    torch.testing.assert_close(dx, expected, rtol=1e-6, atol=1e-6)


def _slope_and_gain(alpha, beta):
    return alpha.clamp(0.01, 0.99), 1 + torch.sigmoid(beta)


@pytest.mark.parametrize("backend", ["reference", "autograd", "compiled"])
def test_a_route_declared_outside_dispatch_runs_every_backend(backend, monkeypatch):
    """What a new built-in declares beside its module: ``Pointwise(name, prepare=...)`` (here
    AReLU's again) computes the reference by every backend, compiled from its own parameters."""
    route = dispatch.Pointwise("arelu", prepare=_slope_and_gain)
    x = torch.randn(3, 4, 6, requires_grad=True)
    alpha, beta = torch.tensor([0.3], requires_grad=True), torch.tensor([1.5], requires_grad=True)
    keys, real = [], CP._compiled
    monkeypatch.setattr(CP, "_compiled", lambda *key: keys.append(key) or real(*key))
    y = route(x, alpha, beta, backend=backend)
    expected = AF.arelu(x, alpha, beta)
    torch.testing.assert_close(y, expected)
    grads = torch.autograd.grad(y.sum(), (x, alpha, beta))
    for g, e in zip(grads, torch.autograd.grad(expected.sum(), (x, alpha, beta)), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    if backend == "compiled" and CP.available():
        assert [fn for fn, _ in keys] == [route.traced] and route.traced is not dispatch.arelu.traced
    elif backend == "autograd":
        assert y.grad_fn.name() == "AReLUFunctionBackward"


INTERPRETED = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="the kernels run only under TRITON_INTERPRET=1")


@INTERPRETED
def test_triton_runs_a_function_without_a_kind_eagerly():
    from adaptact.ops.triton import launch

    route = dispatch.Pointwise("golu")
    assert not route.kernel and dispatch.arelu.kernel
    with pytest.raises(KeyError):
        launch.lean("golu")
    x = torch.randn(3, 4, requires_grad=True)
    y = route(x, backend="triton")
    assert y.grad_fn.name() == "GoLUFunctionBackward"
    torch.testing.assert_close(y, AF.golu(x))


@INTERPRETED
@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_triton_launches_each_kind_from_its_record(name):
    from adaptact.ops.triton import launch

    x = torch.randn(2, 5, 7, requires_grad=True)
    params = [p.requires_grad_() for p in PARAMETERS[name](5)]
    y = launch.lean(name)(x, *params)
    expected = getattr(AG, name)(x, *params)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, *params), dy)
    for g, e in zip(got, torch.autograd.grad(expected, (x, *params), dy), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
