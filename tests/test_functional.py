"""The reference maths: exact values from the papers and identities between the functions."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptact import functional as AF

floats = st.floats(-20, 20, allow_nan=False, width=64)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_arelu_reference_values_and_grads():
    x = t([-2.0, -0.5, 0.0, 0.5, 2.0]).requires_grad_()
    alpha = t([0.90]).requires_grad_()
    beta = t([2.0]).requires_grad_()
    y = AF.arelu(x, alpha, beta)
    torch.testing.assert_close(y, t([-1.8, -0.45, 0.0, 0.94040, 3.76159]), atol=1e-5, rtol=0)
    y.sum().backward()
    assert alpha.grad.item() == pytest.approx(-2.5, abs=1e-12)
    assert beta.grad.item() == pytest.approx(0.262484, abs=1e-6)
    torch.testing.assert_close(x.grad, t([0.9, 0.9, 0.0, 1.8808, 1.8808]), atol=1e-4, rtol=0)


def test_arelu_clamps_alpha():
    x = t([-1.0])
    assert AF.arelu(x, t([5.0]), t([0.0])).item() == pytest.approx(-0.99)
    assert AF.arelu(x, t([-5.0]), t([0.0])).item() == pytest.approx(-0.01)


@settings(max_examples=200, deadline=None)
@given(x=floats, p1=floats, p2=floats, beta=st.floats(-5, 5, width=64))
def test_acon_c_is_smooth_maximum_formula(x, p1, p2, beta):
    d = (p1 - p2) * x
    expected = d / (1 + math.exp(-beta * d)) if beta * d > -700 else 0.0
    y = AF.acon_c(t([[x]]), t([p1]), t([p2]), t([beta])).item()
    assert y == pytest.approx(expected + p2 * x, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(p=st.floats(-3, 3, width=64), beta=st.floats(-5, 5, width=64))
def test_acon_family_reductions(p, beta):
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    pb, bb = torch.full((3,), p, dtype=torch.float64), torch.full((3,), beta, dtype=torch.float64)
    torch.testing.assert_close(AF.acon_a(x, bb), AF.acon_c(x, ones, zeros, bb))
    torch.testing.assert_close(AF.acon_b(x, pb, bb), AF.acon_c(x, ones, pb, bb))
    torch.testing.assert_close(AF.acon_a(x, torch.ones(3, dtype=torch.float64)), F.silu(x))


def test_acon_c_per_channel_and_per_sample_beta_broadcast_on_dim1():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    p1, p2 = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    beta = torch.rand(2, 3, dtype=torch.float64)
    y = AF.meta_acon_c(x, p1, p2, beta)
    n, c = 1, 2
    d = (p1[c] - p2[c]) * x[n, c]
    torch.testing.assert_close(y[n, c], d * torch.sigmoid(beta[n, c] * d) + p2[c] * x[n, c])


def test_aprelu_formula():
    x = t([[-2.0, 3.0], [-1.0, -4.0]])
    alpha = t([[0.5, 0.1], [0.25, 0.75]])
    torch.testing.assert_close(AF.aprelu(x, alpha), t([[-1.0, 3.0], [-0.25, -3.0]]))
    # one alpha per sample (the Keras variant)
    torch.testing.assert_close(AF.aprelu(x, t([[0.5], [0.25]])), t([[-1.0, 3.0], [-0.25, -1.0]]))


def test_crelu_concatenates_on_dim1():
    x = t([[-1.0, 2.0]])
    torch.testing.assert_close(AF.crelu(x), t([[0.0, 2.0, 1.0, 0.0]]))


def test_apl_mixture_slaf_formulas():
    x = t([-2.0, -0.25, 1.0])
    # relu(x) + 0.2 relu(0.5 - x)
    torch.testing.assert_close(AF.apl(x, t([0.2]), t([0.5])), t([0.5, 0.15, 1.0]))
    torch.testing.assert_close(AF.mixture(x, t([0.25])), t([-0.5, -0.0625, 1.0]))
    torch.testing.assert_close(AF.slaf(x, t([1.0, 2.0, 3.0])), 1 + 2 * x + 3 * x**2)


def test_pau_is_safe_rational():
    x = t([-3.0, -1.0, 0.5, 2.0])
    num, den = t([0.1, 1.0, 0.5]), t([-0.5, 0.25])
    expected = (0.1 + x + 0.5 * x**2) / (1 + 0.5 * x.abs() + 0.25 * x**2)
    torch.testing.assert_close(AF.pau(x, num, den), expected)


def test_maxout_per_channel_pieces():
    x = t([[-1.0, 2.0]])
    w = t([[0.0, 1.0], [-1.0, 0.5]])
    b = t([[0.0, 0.0], [0.0, 3.0]])
    torch.testing.assert_close(AF.maxout(x, w, b), t([[0.0, 4.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_parameters_follow_input_dtype(dtype):
    x = torch.randn(2, 3, 4).to(dtype)
    p = torch.randn(3)
    assert AF.acon_c(x, p, p * 0.5, torch.ones(3)).dtype == dtype
    assert AF.aprelu(x, torch.rand(2, 3)).dtype == dtype
