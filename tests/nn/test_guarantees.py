"""Guarantees every module keeps, checked where they once failed: PReLU's checks, PAU in half
precision, 0-D inputs keeping their shape."""

import pytest
import torch
from torch import nn

import adaptact
from adaptact.nn import PAU, PReLU


def test_prelu_checks_channels_and_init():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_parameters must be a positive int"):
            PReLU(bad)
    with pytest.raises(ValueError, match="init must be a finite number"):
        PReLU(3, init=float("nan"))
    with pytest.raises(ValueError, match="PReLU expected 3 channels on dim 1, got 4"):
        PReLU(3)(torch.randn(2, 4, 5))
    assert PReLU(1)(torch.randn(2, 4, 5)).shape == (2, 4, 5)  # one shared slope takes any shape


def test_prelu_takes_the_official_layout_and_refuses_non_finite_slopes():
    m = PReLU(3)
    m.load_state_dict({"weight": torch.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)})
    torch.testing.assert_close(m.weight, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(RuntimeError, match="entry 'weight' has non-finite values"):
        m.load_state_dict({"weight": torch.tensor([0.1, float("inf"), 0.3])})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_prelu_float32_slope_on_half_inputs_equals_torch(dtype):
    m, ref = PReLU(4), nn.PReLU(4)
    with torch.no_grad():
        m.weight.uniform_(0, 1)
        ref.weight.copy_(m.weight)
    x = torch.randn(3, 4, 5)
    y = m(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref(x.to(dtype).float()), rtol=1e-2, atol=1e-2)
    y.float().sum().backward()
    assert m.weight.grad.dtype == torch.float32


def test_pau_in_float16_is_finite_and_close_to_float32():
    m = PAU()
    x = torch.linspace(-50, 50, 20001)
    y32 = m(x)
    y16 = m(x.half())
    assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
    assert ((y16.float() - y32).abs() / y32.abs().clamp_min(1e-3)).max() < 1e-2


@pytest.mark.parametrize("name", ["arelu", "mixture", "swish", "apl", "slaf", "pau", "relu", "gelu"])
def test_zero_dim_input_keeps_its_shape(name):
    m = adaptact.create(name)
    x = torch.tensor(0.7)
    assert m(x).shape == ()
    torch.testing.assert_close(m(x), m(x.reshape(1)).reshape(()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", adaptact.available())
def test_every_float32_module_takes_half_inputs_and_returns_their_dtype(name, dtype):
    """Mixed precision as autocast leaves it: float32 parameters, half activations. The output keeps
    the input's dtype and is the float32 module's output rounded (FReLU once refused this)."""
    torch.manual_seed(0)
    m = adaptact.create(name, channels=6).eval()
    x = torch.randn(2, 6, 5, 5)
    want = m(x)
    got = m(x.to(dtype))
    assert got.dtype == dtype
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance)


LEARNABLE = [n for n in adaptact.available() if adaptact.spec(n).learnable]


@pytest.mark.parametrize("source", LEARNABLE)
def test_a_refused_load_leaves_the_module_as_it_was(source):
    """Another activation's state_dict loaded into each learnable module: it loads (the same entries)
    or raises, and then not one value of the target has changed (torch copies what fits first)."""
    torch.manual_seed(0)
    given = adaptact.create(source, channels=6).state_dict()
    for target in LEARNABLE:
        m = adaptact.create(target, channels=6)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        for strict in (True, False):
            try:
                m.load_state_dict({k: v + 0.5 if v.is_floating_point() else v for k, v in given.items()},
                                  strict=strict)
            except RuntimeError as err:
                assert "nothing was loaded" in str(err), (source, target, err)
                after = m.state_dict()
                assert all(torch.equal(after[k], v) for k, v in before.items()), (source, target, strict)
            else:
                assert strict is False or set(given) == set(before), (source, target)


@pytest.mark.parametrize("name", LEARNABLE)
def test_a_load_that_leaves_the_module_out_is_the_callers_to_judge(name):
    """A model's ``load_state_dict(..., strict=False)`` without the activation's entries (a partial
    load, as PEFT loads an adapter beside the model's own weights) loads the rest and leaves the
    activation as it was; ``strict=True`` raises for the missing keys, and the activation is still
    unchanged. Before, the activation raised in both (torch tells every module's hook strict=True)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), adaptact.create(name, channels=6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear = {"0.weight": torch.ones(6, 6), "0.bias": torch.zeros(6)}
    result = model.load_state_dict(linear, strict=False)
    parameters = {k for k, _ in model.named_parameters() if k.startswith("1.")}
    assert parameters <= set(result.missing_keys) <= set(before) - set(linear) and not result.unexpected_keys
    assert torch.equal(model[0].weight, torch.ones(6, 6))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith("1."))
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith("1."))
