"""Every backend equals the reference: outputs and all gradients, on fresh random inputs of every
layout; the fused backends keep only the input (plus O(N*C)) for backward; autograd is fast on CPU."""

import copy
import os
import time

import pytest
import torch

import adaptact
from adaptact.bench.kernels import saved_bytes
from adaptact.ops import dispatch
from tests.conftest import random_input

CASES = [
    ("arelu", {}), ("acon_a", {}), ("acon_b", {}), ("acon_c", {}),
    ("meta_acon_c", {}), ("meta_acon_c", {"granularity": "layer"}), ("meta_acon_c", {"granularity": "pixel"}),
    ("aprelu", {}), ("aprelu", {"alpha": "sample"}),
]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in CASES]
SHAPES = {  # ranks 2-5, odd sizes, N = 1
    "rank2": (5, 7), "rank3": (3, 7, 9), "rank4": (2, 7, 5, 3), "rank5": (2, 7, 3, 5, 3), "n1": (1, 7, 5, 5),
}
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FUSED = ["autograd"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" and dispatch.triton_available()
                        else [])


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _layout(x, layout):
    if layout == "channels_last" and x.ndim in (4, 5):
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "strided":  # a non-contiguous view: every other element of a wider tensor
        wide = torch.empty(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _run(module, x, dy):
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy)
    return y, x.grad, {n: p.grad for n, p in module.named_parameters()}


def _perturb(module):
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backend_equals_reference(case, layout, shape, dtype, backend, training):
    name, kwargs = case
    ref = _perturb(adaptact.create(name, channels=shape[1], backend="reference", **kwargs)).train(training)
    for bn in (m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    fused = copy.deepcopy(ref)  # float32 parameters, activations in ``dtype`` (mixed precision)
    fused.backend = backend
    x = _layout(random_input(shape, dtype), layout)
    dy = torch.randn(shape).to(dtype)
    # the truth: the reference in float32 on the same (low-precision) values
    y_ref, dx_ref, grads_ref = _run(ref.float(), x.float(), dy.float())
    y, dx, grads = _run(fused, x, dy)
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert _rel(y, y_ref) < tol
    assert _rel(dx, dx_ref) < tol
    for n, g in grads_ref.items():
        if training and n.startswith(("fc", "bn")):
            # With batch statistics the generator's gradients are nearly cancelled by BatchNorm
            # (fc1.bias exactly): rounding noise of zero. They get the same beta/alpha gradient from
            # every backend, which the eval-mode runs check through these same layers.
            continue
        assert _rel(grads[n], g) < tol, n
    for a, b in zip(ref.buffers(), fused.buffers()):  # BatchNorm running statistics
        assert _rel(b.float(), a.float()) < tol


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_gradcheck_and_no_silent_double_backward(case):
    name, kwargs = case
    m = _perturb(adaptact.create(name, channels=3, backend="autograd", **kwargs)).double()
    x = random_input((2, 3, 4), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5)
    with pytest.raises(RuntimeError, match="first-order gradients only .* use backend='reference'"):
        torch.autograd.grad(m(x).sum(), x, create_graph=True)
    m.backend = "reference"
    assert torch.autograd.gradgradcheck(m, (x,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_backends_save_only_the_input(case, backend):
    name, kwargs = case
    n, c = 8, 32
    x = torch.randn(n, c, 24, 24, requires_grad=True)
    small = 64 * 1024  # O(N*C) statistics and parameters
    m = adaptact.create(name, channels=c, backend=backend, **kwargs).train()
    saved = saved_bytes(m, x)
    assert saved <= x.nbytes + small, f"{backend}: {saved} bytes saved, input is {x.nbytes}"
    ref = adaptact.create(name, channels=c, backend="reference", **kwargs).train()
    assert saved_bytes(ref, x) >= 2 * x.nbytes  # the plain composition keeps intermediates


def _best_time(module, x, repeats=15):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x).sum().backward()
        times.append(time.perf_counter() - start)
    return min(times[3:])


@pytest.mark.parametrize("name", ["arelu", "acon_c", "meta_acon_c", "aprelu"])
def test_autograd_backend_is_no_slower_than_reference_on_cpu(name):
    x = torch.randn(32, 64, 28, 28, requires_grad=True)
    m = adaptact.create(name, channels=64)
    times = {}
    for backend in ("reference", "autograd", "reference", "autograd"):  # interleaved against drift
        m.backend = backend
        times[backend] = min(times.get(backend, float("inf")), _best_time(m, x))
    assert times["autograd"] <= times["reference"], times


def test_backend_argument_is_checked():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'reference', 'autograd', 'triton'"):
        adaptact.AconC(4, backend="cuda")
    assert "backend='reference'" in repr(adaptact.AReLU(backend="reference"))


def test_auto_picks_autograd_on_cpu():
    assert dispatch.resolve("auto", torch.zeros(1)) == "autograd"


def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    m = adaptact.AconC(4, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        m(torch.randn(2, 4))
