"""Every registry entry: names, create/get, and a working module in every supported setting."""

import copy
import functools
import io
import warnings

import pytest
import torch
from torch import nn

import adaptact
from adaptact.registry import FAMILIES
from tests.conftest import RANKS, random_input, sample_shape, shape_of_rank

NAMES = adaptact.available()
C = 5
REQUIRED = [
    "sigmoid", "tanh", "relu", "crelu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu",
    "gelu", "gelu_tanh", "silu", "swish", "hardswish", "hardsigmoid", "mish", "softplus", "softmax",
    "apl", "mixture", "slaf", "pau", "maxout", "arelu", "acon_a", "acon_b", "acon_c", "meta_acon_c", "aprelu",
]
DTYPES = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def test_required_names_are_registered():
    assert set(REQUIRED) <= set(NAMES)
    assert sorted(NAMES) == NAMES


def test_families_partition_the_registry():
    assert sorted(n for f in FAMILIES for n in adaptact.available(f)) == NAMES
    assert set(adaptact.available("adaptive")) == {"arelu", "acon_a", "acon_b", "acon_c", "meta_acon_c",
                                                   "aprelu", "dy_relu_a", "dy_relu_b", "frelu",
                                                   "meta_acon_c_nobn"}
    with pytest.raises(ValueError, match="family must be one of"):
        adaptact.available("fancy")


def test_torch_classes_are_used_where_torch_has_them():
    tanh = adaptact.create("gelu_tanh")
    assert type(tanh) is nn.GELU and tanh.approximate == "tanh"
    assert type(adaptact.create("silu")) is nn.SiLU
    assert type(adaptact.create("mish")) is nn.Mish
    prelu = adaptact.create("prelu", channels=7)
    # torch's PReLU (its maths, isinstance checks and converters keep working) with adaptact's checks
    assert isinstance(prelu, nn.PReLU) and type(prelu) is adaptact.nn.PReLU and prelu.num_parameters == 7
    assert adaptact.create("softmax").dim == 1


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError,
                       match=r"unknown activation 'acon-d'; did you mean 'acon_c', 'acon_b', 'acon_a'\?"):
        adaptact.create("acon-d")
    with pytest.raises(ValueError, match=r"unknown activation 'arleu'; did you mean 'arelu'"):
        adaptact.get("arleu")


def test_names_are_normalised():
    assert isinstance(adaptact.create("Meta-ACON-C", channels=4), adaptact.MetaAconC)


def test_per_channel_without_channels_is_lazy_but_prelu_shares_one_slope():
    m = adaptact.create("acon_c", channel_dim=-1)
    assert not m.initialized and "uninitialized" in repr(m) and not list(m.parameters())
    m(torch.randn(2, 7, 12))
    assert m.channels == 12 and m.p1.shape == (12,)
    shared = adaptact.create("prelu")  # as torch's nn.PReLU() and transformers' ACT2FN["prelu"]
    assert shared.num_parameters == 1 and shared(torch.randn(2, 5, 3)).shape == (2, 5, 3)
    assert isinstance(adaptact.create("relu", channel_dim=-1), nn.ReLU)  # nothing per channel: any layout


@pytest.mark.parametrize("name", NAMES)
def test_channels_always_accepted_and_inplace_keyword(name):
    m = adaptact.create(name, channels=C, inplace=True)
    assert isinstance(m, nn.Module)
    if not adaptact.spec(name).per_channel:
        assert type(adaptact.create(name)) is type(m)


def test_create_and_get_accept_classes_and_callables():
    assert isinstance(adaptact.create(adaptact.AconC, channels=3), adaptact.AconC)
    assert isinstance(adaptact.create(nn.ReLU, channels=3), nn.ReLU)  # channels dropped for ReLU
    relu6 = adaptact.create(functools.partial(nn.Hardtanh, 0.0, 6.0))
    assert relu6.max_val == 6.0
    factory = adaptact.get("acon_c")
    assert factory(channels=3).p1.shape == (3,)
    assert isinstance(adaptact.get(nn.GELU)(channels=3), nn.GELU)
    with pytest.raises(TypeError, match="not an nn.Module"):
        adaptact.create(lambda: 3)
    with pytest.raises(TypeError, match="must be a name, an nn.Module class or a callable"):
        adaptact.create(3)


def _expected_shape(name, shape):
    return (shape[0], shape[1] * adaptact.spec(name).channel_factor) + tuple(shape[2:])


def _forward_backward(m, x):
    y = m(x)
    y.float().square().sum().backward()
    return y


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_backward_every_rank_dtype_mode(name, rank, dtype, training):
    m = adaptact.create(name, channels=C).to(dtype).train(training)
    x = random_input(shape_of_rank(rank), dtype, requires_grad=True)
    ranks = adaptact.registry.spec(name).ranks
    if ranks and rank not in ranks:  # an input it is not defined for: a clear error, no broadcast
        with pytest.raises(ValueError, match="expects"):
            m(x)
        return
    if name == "rrelu" and training and dtype == torch.float16:
        with pytest.raises(NotImplementedError, match="Half"):  # torch's own gap on CPU
            m(x)
        return
    y = _forward_backward(m, x)
    assert y.shape == _expected_shape(name, x.shape) and y.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if name == "rrelu" and training:
        return  # random slopes
    # same numbers as float64 at the dtype's precision
    ref = copy.deepcopy(m).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
    expected = ref.train(training)(x.detach().double())
    torch.testing.assert_close(y.double(), expected, rtol=DTYPES[dtype] * 10, atol=DTYPES[dtype] * 10)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name):
    m = adaptact.create(name, channels=C).train(False)
    x = random_input((2, C, 4, 3))
    y = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, m(x))


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_input(name):
    m = adaptact.create(name, channels=C).eval()
    x = random_input(sample_shape(name, (3, 2 * C, 4)))[:, ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(m(x), m(x.contiguous()))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    a = adaptact.create(name, channels=C)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.rand_like(p))
    a.train()(random_input(sample_shape(name, (4, C, 3))))  # move BN running statistics
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = adaptact.create(name, channels=C)
    b.load_state_dict(torch.load(buf))
    a.eval(), b.eval()
    x = random_input(sample_shape(name, (2, C, 3)))
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


class _AllActivations(nn.Module):
    """Every registry entry applied to the same input, so one compile covers them all."""

    def __init__(self):
        super().__init__()
        self.acts = nn.ModuleDict({n: adaptact.create(n, channels=C) for n in NAMES})

    def forward(self, x):
        return [act(x) for act in self.acts.values()]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_compile_matches_eager(training):
    torch.manual_seed(0)
    model = _AllActivations().train(training)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    x1 = random_input((4, C, 6, 5), requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y_eager, y_comp = model(x1), compiled(x2)
    ours = [str(w.message) for w in caught if "adaptact" in w.filename or "adaptact" in str(w.message)
            or "distributed.py" in str(w.message)]
    assert not ours, ours  # tracing our code warns of nothing (it did of a cached DTensor check)
    for name, a, b in zip(NAMES, y_eager, y_comp):
        if name == "rrelu" and training:
            continue
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
    keep = [i for i, n in enumerate(NAMES) if not (n == "rrelu" and training)]
    sum(y_eager[i].square().sum() for i in keep).backward()
    sum(y_comp[i].square().sum() for i in keep).backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-4)
    for (n, p), (_, q) in zip(model.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4, msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_matches_eager(name):
    m = adaptact.create(name, channels=C).eval()
    x = random_input((2, C, 4, 3))
    exported = torch.export.export(m, (x,))
    x2 = random_input((2, C, 4, 3))
    torch.testing.assert_close(exported.module()(x2), m(x2))


# --- the names of Hugging Face configs, and the gated forms ----------------------------------------


def _hf_module(name):
    from transformers.activations import ACT2CLS

    cls, kwargs = ACT2CLS[name] if isinstance(ACT2CLS[name], tuple) else (ACT2CLS[name], {})
    if name == "xielu":
        kwargs = {**kwargs, "dtype": torch.float64}
    return cls(**kwargs)


def _act2cls_names():
    try:
        from transformers.activations import ACT2CLS
    except ImportError:
        return []
    return sorted(name for name, entry in ACT2CLS.items()  # transformers' own, not the names adaptact adds
                  if not (isinstance(entry, tuple) and type(entry[0]).__module__ == "adaptact.huggingface"))


@pytest.mark.parametrize("name", _act2cls_names())
def test_every_transformers_activation_name_resolves_with_equal_numbers(name):
    """Iterates over transformers' own ACT2CLS: a name added upstream fails here until it resolves."""
    hf = _hf_module(name).double()
    ours = adaptact.create(name, channels=C).double()
    if name == "xielu":
        ours.load_state_dict(hf.state_dict())
    # both sides of every branch point, the clipping of gelu_10 and xIELU's eps included
    x = torch.cat((torch.linspace(-12, 12, 241, dtype=torch.float64), torch.tensor([-1e-7, 1e-7, 0.0])))
    x = x[: 240].reshape(4, C, 12).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_hf, y = hf(x), ours(x2)
    torch.testing.assert_close(y, y_hf, rtol=1e-10, atol=1e-12)
    (y_hf * torch.cos(x)).sum().backward()
    (y * torch.cos(x2)).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-9, atol=1e-12)
    for (n, p), (_, q) in zip(sorted(hf.named_parameters()), sorted(ours.named_parameters())):
        if p.shape == q.shape:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_act2cls_is_nonempty_where_transformers_installs():
    pytest.importorskip("transformers")
    assert {"gelu_new", "xielu", "relu2", "quick_gelu", "laplace"} <= set(_act2cls_names())


def test_aliases_resolve_to_their_entries_and_stay_out_of_the_listing():
    assert adaptact.spec("gelu-new").name == "gelu_tanh" and adaptact.spec("linear").name == "identity"
    assert set(adaptact.registry.ALIASES).isdisjoint(NAMES)
    assert all(adaptact.registry.ALIASES[a] in NAMES or a in adaptact.registry.GATED
               for a in adaptact.registry.ALIASES)
    assert set(adaptact.registry.GATED).isdisjoint(NAMES)


@pytest.mark.parametrize("name, gate", [
    ("swiglu", nn.SiLU), ("geglu", nn.GELU), ("reglu", nn.ReLU), ("acon_c_glu", adaptact.AconC),
    ("meta_acon_c_glu", adaptact.MetaAconC)])
def test_gated_forms_gate_half_the_channels(name, gate):
    s = adaptact.spec(name)
    assert s.gated and s.channel_factor == 0.5 and s.takes_channel_dim and s.name == name
    m = adaptact.create(name, channels=12)
    assert isinstance(m, adaptact.nn.GatedActivation) and type(m.gate) is gate and m.channel_dim == -1
    if hasattr(m.gate, "channels"):
        assert m.gate.channels == 6 and m.gate.channel_dim == -1
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    m = m.double()
    torch.testing.assert_close(m(x), m.gate(x[..., :6]) * x[..., 6:])
    assert adaptact.spec(name).family == ("classic" if name in adaptact.registry.GATED else "adaptive")


def test_gated_forms_refuse_what_they_cannot_split():
    with pytest.raises(ValueError, match="needs an even number"):
        adaptact.create("swiglu", channels=7)
    with pytest.raises(ValueError, match="'crelu' changes the number of channels and cannot be a GLU's gate"):
        adaptact.spec("crelu_glu")
    with pytest.raises(ValueError, match="unknown activation 'swigl'; did you mean 'swiglu'"):
        adaptact.spec("swigl")
    lazy = adaptact.create("acon_c_glu", channel_dim=1)
    assert lazy(torch.randn(2, 8, 3)).shape == (2, 4, 3) and lazy.gate.channels == 4
