"""Module semantics: gradients, official state_dict layouts, batch size 1, bad input."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import adaptact
from adaptact import functional as AF
from adaptact.nn import ActivationModule
from tests.conftest import RANKS, random_input, sample_shape, shape_of_rank

LEARNABLE = [n for n in adaptact.available() if adaptact.spec(n).learnable]
C = 5


def _gradcheck_module(module, x):
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())
    buffers = dict(module.named_buffers())

    def fn(x, *ps):
        return functional_call(module, {**dict(zip(names, ps)), **buffers}, (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", LEARNABLE)
@pytest.mark.parametrize("training", [True, False])
def test_float64_gradcheck_input_and_parameters(name, training):
    module = adaptact.create(name, channels=C).double().train(training)
    if name == "apl":  # move the hinge off the kink-free default so its gradient is exercised
        torch.nn.init.normal_(module.b)
    x = random_input(sample_shape(name, (4, C, 3)), torch.float64, requires_grad=True)
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    if not training and any(isinstance(m, norms) for m in module.modules()):
        for bn in (m for m in module.modules() if isinstance(m, norms)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    # buffers are not differentiated; BN in training mode depends on the batch, which is fine
    _gradcheck_module(module, x)


def test_arelu_module_reference_values():
    m = adaptact.AReLU().double()
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, torch.tensor([-1.8, -0.45, 0, 0.94040, 3.76159], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    y.sum().backward()
    assert m.alpha.grad.item() == pytest.approx(-2.5)
    assert m.beta.grad.item() == pytest.approx(0.262484, abs=1e-6)


# --- official layouts -------------------------------------------------------------------------


def test_arelu_loads_official_state_dict():
    official = {"alpha": torch.tensor([0.3]), "beta": torch.tensor([1.5])}
    m = adaptact.AReLU()
    m.load_state_dict(official)
    x = torch.randn(2, 3, 4)
    expected = (1 + torch.sigmoid(torch.tensor(1.5))) * F.relu(x) - 0.3 * F.relu(-x)
    torch.testing.assert_close(m(x), expected)


def test_acon_c_loads_official_state_dict():
    c = 6
    official = {k: torch.randn(1, c, 1, 1) for k in ("p1", "p2", "beta")}
    m = adaptact.AconC(c)
    m.load_state_dict(official)
    assert m.p1.shape == (c,)
    x = torch.randn(2, c, 5, 4)
    p1, p2, beta = official["p1"], official["p2"], official["beta"]
    expected = (p1 * x - p2 * x) * torch.sigmoid(beta * (p1 * x - p2 * x)) + p2 * x
    torch.testing.assert_close(m(x), expected)


def _official_meta_acon_state(c, r=16):
    h = max(r, c // r)

    def bn(n):
        return {"weight": torch.rand(n) + 0.5, "bias": torch.randn(n), "running_mean": torch.randn(n),
                "running_var": torch.rand(n) + 0.5, "num_batches_tracked": torch.tensor(7)}

    sd = {"fc1.weight": torch.randn(h, c, 1, 1) / c**0.5, "fc1.bias": torch.randn(h),
          "fc2.weight": torch.randn(c, h, 1, 1) / h**0.5, "fc2.bias": torch.randn(c),
          "p1": torch.randn(1, c, 1, 1), "p2": torch.randn(1, c, 1, 1)}
    sd.update({f"bn1.{k}": v for k, v in bn(h).items()})
    sd.update({f"bn2.{k}": v for k, v in bn(c).items()})
    return sd


def _official_meta_acon_forward(sd, x, training):
    """The official MetaAconC forward (nmaac/acon), written from its formula with 1x1 convs."""

    def bn(prefix, h):
        return F.batch_norm(h, sd[f"{prefix}.running_mean"].clone(), sd[f"{prefix}.running_var"].clone(),
                            sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training, 0.1, 1e-5)

    s = x.mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
    h = bn("bn1", F.conv2d(s, sd["fc1.weight"], sd["fc1.bias"]))
    beta = torch.sigmoid(bn("bn2", F.conv2d(h, sd["fc2.weight"], sd["fc2.bias"])))
    p1, p2 = sd["p1"], sd["p2"]
    return (p1 * x - p2 * x) * torch.sigmoid(beta * (p1 * x - p2 * x)) + p2 * x


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("c", [8, 64])
def test_meta_acon_c_loads_official_state_dict(training, c):
    sd = _official_meta_acon_state(c)
    m = adaptact.MetaAconC(c)
    m.load_state_dict(sd)
    m.train(training)
    x = torch.randn(4, c, 7, 6)
    # the official formula in float64 is the truth: in float32 it is itself up to ~3e-5 off it in
    # training mode (batch statistics of 4 samples amplify rounding), ours stays within ~3e-6
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    truth = _official_meta_acon_forward(sd64, x.double(), training)
    torch.testing.assert_close(m(x).double(), truth, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("c", [8, 64])
def test_meta_acon_c_without_bn_loads_the_first_official_and_yolov5_layout(c, n):
    """The first official acon.py and YOLOv5's MetaAconC: 1x1 convs with bias, hidden width
    max(r, C // r), no BatchNorm; the formula written here with conv2d on the official tensors."""
    hidden = max(16, c // 16)
    g = torch.Generator().manual_seed(c)
    sd = {"fc1.weight": torch.randn(hidden, c, 1, 1, generator=g),
          "fc1.bias": torch.randn(hidden, generator=g),
          "fc2.weight": torch.randn(c, hidden, 1, 1, generator=g), "fc2.bias": torch.randn(c, generator=g),
          "p1": torch.randn(1, c, 1, 1, generator=g), "p2": torch.randn(1, c, 1, 1, generator=g)}
    m = adaptact.MetaAconC(c, norm="none")
    m.load_state_dict(sd)
    x = torch.randn(n, c, 5, 6, dtype=torch.float64)
    s = x.mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
    sd64 = {k: v.double() for k, v in sd.items()}
    beta = torch.sigmoid(F.conv2d(F.conv2d(s, sd64["fc1.weight"], sd64["fc1.bias"]), sd64["fc2.weight"],
                                  sd64["fc2.bias"]))
    p1, p2 = sd64["p1"], sd64["p2"]
    expected = (p1 * x - p2 * x) * torch.sigmoid(beta * (p1 * x - p2 * x)) + p2 * x
    for training in (True, False):  # no BatchNorm: the same in both modes, batch size 1 included
        torch.testing.assert_close(m.double().train(training)(x), expected, rtol=1e-10, atol=1e-10)
    assert not any(isinstance(b, torch.nn.BatchNorm1d) for b in m.modules())
    assert "norm='none'" in repr(m)
    with pytest.raises(ValueError, match="norm must be 'bn' or 'none'"):
        adaptact.MetaAconC(c, norm="ln")
    with pytest.raises(ValueError, match="granularity 'layer' has none"):
        adaptact.MetaAconC(c, granularity="layer", norm="none")


def test_aprelu_matches_paper_formula():
    c = 4
    m = adaptact.APReLU(c).eval()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, c, 5, 5)
    s = torch.cat((x.clamp(max=0).mean((2, 3)), x.clamp(min=0).mean((2, 3))), 1)
    h = F.relu(F.batch_norm(m.fc1(s), m.bn1.running_mean, m.bn1.running_var, m.bn1.weight, m.bn1.bias))
    alpha = torch.sigmoid(F.batch_norm(m.fc2(h), m.bn2.running_mean, m.bn2.running_var,
                                       m.bn2.weight, m.bn2.bias))
    expected = x.clamp(min=0) + alpha[:, :, None, None] * x.clamp(max=0)
    torch.testing.assert_close(m(x), expected)


def test_aprelu_layer_granularity_has_one_alpha_per_sample():
    m = adaptact.APReLU(6, granularity="layer")
    x = torch.randn(4, 6, 3)
    alpha = m.generate_alpha(x)
    assert alpha.shape == (4, 1)
    torch.testing.assert_close(m(x), AF.aprelu(x, alpha))
    assert adaptact.APReLU(6).generate_alpha(x).shape == (4, 6)


# --- Meta-ACON granularities and batch size 1 -------------------------------------------------


def test_meta_acon_granularities():
    x = torch.randn(3, 4, 5, 6)
    layer = adaptact.MetaAconC(4, granularity="layer")
    beta = layer.generate_beta(x)
    torch.testing.assert_close(beta, torch.sigmoid(x.mean((1, 2, 3))).unsqueeze(1))
    torch.testing.assert_close(layer(x), AF.acon_c(x, layer.p1, layer.p2, beta))
    pixel = adaptact.MetaAconC(4, granularity="pixel")
    torch.testing.assert_close(pixel(x), AF.acon_c(x, pixel.p1, pixel.p2, torch.sigmoid(x)))
    assert not hasattr(pixel, "fc1")


def test_meta_acon_hidden_width():
    assert adaptact.MetaAconC(64).fc1.out_features == 16
    assert adaptact.MetaAconC(1024).fc1.out_features == 64
    assert adaptact.MetaAconC(1024, reduction=8).fc1.out_features == 128


@pytest.mark.parametrize("name", ["meta_acon_c", "aprelu"])
def test_batch_size_one_in_training_uses_running_stats(name):
    m = adaptact.create(name, channels=4).train()
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = m(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(y, copy.deepcopy(m).eval()(x))
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} changed")


@pytest.mark.parametrize("name", ["meta_acon_c", "aprelu"])
def test_batch_statistics_for_larger_batches(name):
    m = adaptact.create(name, channels=4).train()
    x = torch.randn(8, 4, 3, 3)
    assert not torch.allclose(m(x), copy.deepcopy(m).eval()(x))
    assert int(m.bn1.num_batches_tracked) == 1


def test_mixed_precision_module_keeps_input_dtype():
    m = adaptact.MetaAconC(8)
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert m.p1.grad.dtype == torch.float32 and m.fc1.weight.grad is not None


@pytest.mark.parametrize("rank", RANKS)
def test_pau_init_approximates_leaky_relu(rank):
    m = adaptact.PAU()
    x = torch.linspace(-3, 3, 601)
    err = (m(x) - F.leaky_relu(x, 0.01)).abs()
    assert err.max() < 0.04 and err.mean() < 0.01
    assert torch.isfinite(m(random_input(shape_of_rank(rank)) * 100)).all()


def test_maxout_starts_as_relu():
    x = torch.randn(3, 7, 4)
    torch.testing.assert_close(adaptact.Maxout(7)(x), F.relu(x))


def test_extra_repr():
    assert "channels=16, reduction=16, granularity='channel'" in repr(adaptact.MetaAconC(16))
    assert "alpha=0.9, beta=2" in repr(adaptact.AReLU())
    assert "channels=3, granularity='layer'" in repr(adaptact.APReLU(3, granularity="layer"))
    assert "granularity='layer', k=2, reduction=4" in repr(adaptact.DyReLU(3, granularity="layer"))


# --- bad input --------------------------------------------------------------------------------

PER_CHANNEL = [n for n in adaptact.available() if adaptact.spec(n).per_channel and n != "prelu"]


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_wrong_channel_count_says_expected_and_got(name):
    m = adaptact.create(name, channels=8)
    with pytest.raises(ValueError, match=r"expected 8 channels on dim 1, got 4 \(input shape \(2, 4, 3\)\)"):
        m(torch.randn(2, 4, 3))


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_rank_below_two_is_refused(name):
    m = adaptact.create(name, channels=8)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, C, \*\).*got a 1-D tensor"):
        m(torch.randn(8))


OWN = [n for n in adaptact.available() if isinstance(adaptact.create(n, channels=4), ActivationModule)]


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_and_bool_inputs_raise_type_error(name, dtype):
    m = adaptact.create(name, channels=4)
    x = torch.ones(2, 4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=f"expects a floating-point tensor, got dtype {dtype}"):
        m(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_refused_on_load(bad):
    m = adaptact.AconC(3)
    sd = m.state_dict()
    sd["beta"] = torch.tensor([1.0, bad, 1.0])
    with pytest.raises(RuntimeError, match="AconC: entry 'beta' has non-finite values"):
        m.load_state_dict(sd)
    sd = adaptact.MetaAconC(3).state_dict()
    sd["bn1.running_var"][0] = bad
    with pytest.raises(RuntimeError, match="entry 'bn1.running_var' has non-finite values"):
        adaptact.MetaAconC(3).load_state_dict(sd)


def test_mismatched_layout_is_not_silently_reshaped():
    m = adaptact.AconC(4)
    with pytest.raises(RuntimeError, match="size mismatch for p1"):
        m.load_state_dict({"p1": torch.randn(2, 2), "p2": torch.randn(4), "beta": torch.randn(4)})


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 0}, "channels must be a positive int, got 0"),
    ({"channels": 4, "granularity": "image"}, "granularity must be 'channel', 'layer' or 'pixel'"),
    ({"channels": 4, "reduction": 0}, "reduction must be a positive int"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adaptact.MetaAconC(**kwargs)


def test_bad_aprelu_granularity():
    with pytest.raises(ValueError, match="granularity must be 'channel' or 'layer', got 'pixel'"):
        adaptact.APReLU(4, granularity="pixel")


@pytest.mark.parametrize("make, old, error", [
    (adaptact.MetaAconC, {"r": 8}, "unexpected keyword argument 'r'"),
    (adaptact.APReLU, {"alpha": "sample"}, "unexpected keyword argument 'alpha'"),
    (adaptact.DyReLU, {"variant": "A"}, "unexpected keyword argument 'variant'"),
    (adaptact.APReLU, {"granularity": "sample"}, "granularity must be 'channel' or 'layer', got 'sample'"),
    (adaptact.DyReLU, {"granularity": "B"}, r"granularity must be 'channel' \(DY-ReLU-B\) or 'layer'"),
], ids=["meta_acon_c-r", "aprelu-alpha", "dy_relu-variant", "aprelu-sample", "dy_relu-B"])
def test_one_name_per_knob(make, old, error):
    """Meta-ACON-C's reduction is DY-ReLU's; APReLU's and DY-ReLU's granularity is Meta-ACON-C's
    ("channel": one value per channel, "layer": one per sample). The names used before 0.1.0 are
    refused, never quietly mapped."""
    with pytest.raises((TypeError, ValueError), match=error):
        make(16, **old)


def _keras_aprelu(x_nhwc: np.ndarray, w: list, training: bool) -> np.ndarray:
    """The authors' Keras ``aprelu`` block (ResNet_APReLU_Keras_Cifar10.py) written in numpy, float64:
    channel means of GAP(pos) and GAP(neg), Concatenate([neg, pos]), Dense(2), BN(eps 1e-3), ReLU,
    Dense(1), BN, sigmoid; Keras kernels are (in, out)."""
    def bn(h, gamma, beta, mean, var):
        if training:
            mean, var = h.mean(0), h.var(0)  # batch statistics, biased variance
        return gamma * (h - mean) / np.sqrt(var + 1e-3) + beta

    pos, neg = np.maximum(x_nhwc, 0), np.minimum(x_nhwc, 0)
    scales_p = pos.mean(axis=(1, 2)).mean(axis=1, keepdims=True)
    scales_n = neg.mean(axis=(1, 2)).mean(axis=1, keepdims=True)
    h = np.concatenate([scales_n, scales_p], axis=1) @ w[0] + w[1]
    h = np.maximum(bn(h, *w[2:6]), 0) @ w[6] + w[7]
    scale = 1 / (1 + np.exp(-bn(h, *w[8:12])))
    return pos + scale[:, None, None, :] * neg


@pytest.mark.parametrize("training", [False, True])
def test_aprelu_sample_variant_equals_the_authors_keras_code(training):
    rng = np.random.default_rng(7)
    shapes = [(2, 2), (2,), (2,), (2,), (2,), (2,), (2, 1), (1,), (1,), (1,), (1,), (1,)]
    weights = [rng.normal(size=s) for s in shapes]
    weights[5], weights[11] = rng.uniform(0.5, 2, 2), rng.uniform(0.5, 2, 1)  # moving variances
    weights = [w.astype(np.float32) for w in weights]  # as Keras holds them
    m = adaptact.APReLU(5, granularity="layer").double().train(training)
    m.load_state_dict(adaptact.nn.aprelu.keras_state_dict(weights))
    x = rng.normal(size=(4, 6, 7, 5))  # NHWC, as Keras holds it
    expected = _keras_aprelu(x, [w.astype(np.float64) for w in weights], training)
    out = m(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert m.bn1.eps == m.bn2.eps == 1e-3 and m.fc1.weight.shape == (2, 2) and m.fc2.weight.shape == (1, 2)


def test_keras_state_dict_refuses_other_layouts():
    with pytest.raises(ValueError, match="12 weight arrays"):
        adaptact.nn.aprelu.keras_state_dict([np.zeros((2, 2))])
    shapes = [(2, 2), (2,), (2,), (2,), (2,), (2,), (2, 1), (1,), (1,), (1,), (1,), (1,)]
    weights = [np.zeros(s) for s in shapes]
    weights[0] = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"Keras weight 0 has shape \(4, 2\), expected \(2, 2\)"):
        adaptact.nn.aprelu.keras_state_dict(weights)
