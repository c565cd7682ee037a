"""Dynamic ReLU against the paper's formulas (Chen et al., ECCV 2020): the hyper function, the
coefficient ranges, the max of K pieces; the memory-lean backends; the common implementation's
state_dict layout."""

import os

import pytest
import torch
import torch.nn.functional as F

import adaptact
from adaptact.kernel_benchmark import saved_bytes
from tests.conftest import random_input
from tests.ops.test_backends import check_equals_reference

VARIANTS = ["layer", "channel"]  # granularity of DY-ReLU-A, DY-ReLU-B
REGISTRY = {"layer": "dy_relu_a", "channel": "dy_relu_b"}


def _paper(m, x):
    """The paper's Eq. 1-4 written out: theta = 2 sigmoid(fc2(relu(fc1(GAP(x))))) - 1, then
    a^k = alpha^k + lambda_a theta_a^k, b^k = beta^k + lambda_b theta_b^k, y = max_k a^k x + b^k."""
    k = m.k
    gap = x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x
    theta = 2 * torch.sigmoid(F.linear(F.relu(F.linear(gap, m.fc1.weight, m.fc1.bias)), m.fc2.weight,
                                       m.fc2.bias)) - 1
    theta = theta.reshape(x.shape[0], -1, 2 * k)  # per channel (B) or per sample (A)
    alpha, beta = m.init_v[:k], m.init_v[k:]
    a = alpha + m.lambdas[0] * theta[..., :k]
    b = beta + m.lambdas[k] * theta[..., k:]
    view = (x.shape[0], a.shape[1]) + (1,) * (x.ndim - 2)
    pieces = [a[..., j].reshape(view) * x + b[..., j].reshape(view) for j in range(k)]
    return torch.stack(pieces).amax(0), a, b


@pytest.mark.parametrize("backend", ["reference", "autograd"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(3, 8), (2, 8, 5), (2, 8, 4, 3), (2, 8, 2, 3, 2)])
def test_equals_the_paper_and_its_gradients(shape, variant, backend):
    torch.manual_seed(0)
    m = adaptact.DyReLU(8, granularity=variant, backend=backend).double()
    for p in m.parameters():
        torch.nn.init.normal_(p)
    x = random_input(shape, torch.float64, requires_grad=True)
    expected, a, _ = _paper(m, x)
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    assert a.shape == (shape[0], 8 if variant == "channel" else 1, 2)
    names = [n for n, _ in m.named_parameters()]
    assert torch.autograd.gradcheck(lambda x, *p: torch.func.functional_call(m, dict(zip(names, p)), (x,)),
                                    (x, *m.parameters()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_coefficients_stay_in_the_papers_ranges(variant):
    m = adaptact.DyReLU(6, granularity=variant, k=3, lambda_a=0.7, lambda_b=0.3)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 30)  # saturate the hyper function both ways
    a, b = m.coefficients(torch.randn(16, 6, 4, 4) * 10)
    alpha, beta = m.init_v[:3], m.init_v[3:]
    assert torch.equal(alpha, torch.tensor([1.0, 0.0, 0.0])) and torch.equal(beta, torch.zeros(3))
    assert ((a - alpha).abs() <= 0.7 + 1e-6).all() and ((b - beta).abs() <= 0.3 + 1e-6).all()
    assert (a - alpha).abs().max() > 0.69 and (b - beta).abs().max() > 0.29  # the bounds are reached


def test_starts_near_relu_with_the_papers_defaults():
    m = adaptact.DyReLU(4)
    torch.nn.init.zeros_(m.fc2.weight)
    torch.nn.init.zeros_(m.fc2.bias)  # residuals 0: a = (1, 0), b = (0, 0)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(m(x), F.relu(x))
    assert m.k == 2 and m.reduction == 4 and m.lambdas.tolist() == [1.0, 1.0, 0.5, 0.5]


# (backend, dtype, layout): compiled float32 (channels_last, strided) and bfloat16 (contiguous) are
# in tests/ops/test_compiled.py; here the compiled bfloat16 graph of the channels-last layout
LEAN = [("autograd", dtype, layout) for dtype in (torch.float32, torch.bfloat16)
        for layout in ("contiguous", "channels_last", "strided")]
LEAN.append(("compiled", torch.bfloat16, "channels_last"))


@pytest.mark.parametrize("backend, dtype, layout", LEAN, ids=[f"{b}-{d}-{lay}" for b, d, lay in LEAN])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lean_backends_equal_the_reference(variant, layout, dtype, backend, monkeypatch):
    monkeypatch.setenv("ADAPTACT_COMPILE", "1" if backend == "compiled" else os.environ["ADAPTACT_COMPILE"])
    for training in (True, False):
        check_equals_reference((REGISTRY[variant], {}), layout, (4, 7, 5, 3), dtype, backend,
                               training)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lean_backend_keeps_the_input_and_its_coefficients(variant):
    x = torch.randn(8, 32, 24, 24, requires_grad=True)
    m = adaptact.DyReLU(32, granularity=variant, backend="autograd")
    assert saved_bytes(m, x) <= x.nbytes + 64 * 1024  # x plus O(N C K)
    m.backend = "reference"
    assert saved_bytes(m, x) >= 2 * x.nbytes


def test_loads_the_common_implementations_state_dict():
    """Islanna/DynamicReLU's DyReLUB: fc1, fc2 Linear layers and the lambdas/init_v buffers."""
    c, k, r = 16, 2, 4
    sd = {"fc1.weight": torch.randn(c // r, c), "fc1.bias": torch.randn(c // r),
          "fc2.weight": torch.randn(2 * k * c, c // r), "fc2.bias": torch.randn(2 * k * c),
          "lambdas": torch.tensor([1.0] * k + [0.5] * k), "init_v": torch.tensor([1.0] + [0.0] * (2 * k - 1))}
    m = adaptact.create("dy_relu_b", channels=c)
    m.load_state_dict(sd)
    x = torch.randn(2, c, 3, 3)
    torch.testing.assert_close(m(x), _paper(m, x)[0])


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="granularity must be 'channel' .* DY-ReLU-C is not built"):
        adaptact.DyReLU(4, granularity="pixel")
    with pytest.raises(ValueError, match="k = 2 values each"):
        adaptact.DyReLU(4, init_a=(1.0,))
