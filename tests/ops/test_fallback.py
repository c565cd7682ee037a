"""Under backend="auto" a failing Triton kernel (one that does not compile or launch) costs a
warning, not the run: the module switches to the autograd backend for good, with the same numbers.
backend="triton" raises. Failures are injected at the launcher."""

import copy
import os
import warnings

import pytest
import torch

import adaptact
from adaptact.ops import dispatch
from tests.conftest import random_input
from tests.ops.test_backends import CASES, IDS, _perturb

pytestmark = pytest.mark.skipif(not dispatch.triton_available(), reason="needs Triton")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # kernels run (on CPU) only under the interpreter


@pytest.fixture
def triton_for_auto(monkeypatch):
    """"auto" picks the Triton path for these CPU tensors, as it does for CUDA ones; every launch
    goes through ``failing`` (set ``failing.kernels`` to the kernels that raise)."""
    from adaptact.ops.triton import kernels as K
    from adaptact.ops.triton import launch

    monkeypatch.setattr(dispatch, "_on_gpu", lambda x: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # resolve() takes CPU tensors; kernels run if interpreted
    real = launch._launch

    def failing(kernel, plan, **arguments):
        failing.calls += 1
        if kernel in failing.kernels:
            raise RuntimeError(f"injected failure of {kernel.__name__}")
        return real(kernel, plan, **arguments)

    failing.calls, failing.kernels, failing.K = 0, (), K
    monkeypatch.setattr(launch, "_launch", failing)
    return failing


def _grads(module, x, dy):
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(dy)
    return y, x.grad, {n: p.grad for n, p in module.named_parameters()}


def _same(a, b):
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _run_with_failure(case, match):
    """A module under "auto" run forward+backward while kernels fail: it warns (``match``) and
    gives the autograd backend's output and gradients. Returns the module."""
    name, kwargs = case
    m = _perturb(adaptact.create(name, channels=5, **kwargs)).eval()
    expected = copy.deepcopy(m)
    expected.backend = "autograd"
    x, dy = random_input((3, 5, 4, 2)), torch.randn(3, 5, 4, 2)
    with pytest.warns(RuntimeWarning, match=match):
        y, dx, grads = _grads(m, x, dy)
    y_ref, dx_ref, grads_ref = _grads(expected, x, dy)
    _same(y, y_ref)
    _same(dx, dx_ref)
    for n, g in grads_ref.items():
        _same(grads[n], g)
    return m, x, dy


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_failure_under_auto_warns_once_and_switches_to_autograd(case, triton_for_auto):
    K = triton_for_auto.K
    triton_for_auto.kernels = (K.activation_fwd, K.signed_sums, K.dy_relu_fwd)
    m, x, dy = _run_with_failure(case, "injected failure .* uses backend='autograd' from now on")
    calls = triton_for_auto.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again
        _grads(m, x, dy)
    assert triton_for_auto.calls == calls  # the Triton path is not tried again
    m.backend = "auto"  # setting the backend again tries Triton again
    with pytest.warns(RuntimeWarning):
        m(x)


@pytest.mark.skipif(not INTERPRETED, reason="the forward kernels run only under TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_backward_failure_under_auto_gives_autograd_gradients(case, triton_for_auto):
    K = triton_for_auto.K
    triton_for_auto.kernels = (K.activation_bwd, K.dy_relu_bwd)
    m, x, dy = _run_with_failure(case, "injected failure of (activation|dy_relu)_bwd")
    assert triton_for_auto.calls >= 2  # forward ran on Triton, backward failed
    calls = triton_for_auto.calls
    _grads(m, x, dy)
    assert triton_for_auto.calls == calls  # autograd from then on


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_explicit_triton_backend_raises_on_failure(case, triton_for_auto):
    name, kwargs = case
    K = triton_for_auto.K
    triton_for_auto.kernels = (K.activation_fwd, K.signed_sums, K.activation_bwd, K.dy_relu_fwd,
                               K.dy_relu_bwd)
    m = adaptact.create(name, channels=5, backend="triton", **kwargs)
    with pytest.raises(RuntimeError, match="injected failure"):
        m(random_input((3, 5, 4, 2)))
