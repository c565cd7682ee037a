"""The small-call route of "auto" (``ops.small``; ``ActivationModule._small``): where it runs, that it
gives the reference's numbers, that it steps aside for everything it is not for, and how deep the
route to every backend is at a steady state."""

import sys
from pathlib import Path

import pytest
import torch

import adaptact
from adaptact.ops import small
from tests.defined import NAME

# (name, options): the activations with a small-call form; the generated ones in a decoder's
# contexts (their per-position coefficients), on channels-last tokens
CASES = [("arelu", {}), ("acon_a", {}), ("acon_b", {}), ("acon_c", {}),
         ("meta_acon_c", {"context": "causal"}),
         ("meta_acon_c", {"context": "token", "granularity": "layer"}),
         ("meta_acon_c", {"context": "causal", "norm": "none"}), ("aprelu", {"context": "causal"}),
         ("aprelu", {"context": "token", "granularity": "layer"}), ("dy_relu_a", {"context": "causal"}),
         ("dy_relu_b", {"context": "token"})]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in CASES]


def _module(name, options, channel_dim=-1, channels=12):
    m = adaptact.create(name, channels=channels, channel_dim=channel_dim, **options).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for b in m.buffers():
            if b.is_floating_point() and b.ndim == 1 and b.numel() == channels:
                b.uniform_(0.5, 1.5)  # BatchNorm running statistics away from their init
    return m


@pytest.mark.parametrize("shape", [(1, 1, 12), (3, 5, 12), (2, 7, 12)])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_small_form_runs_and_equals_the_reference(case, shape):
    name, options = case
    m = _module(name, options)
    x = torch.randn(shape)
    with torch.no_grad():
        y = m(x)
        assert m.ran_backend == "reference"
        m.backend = "reference"
        torch.testing.assert_close(y, m(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channel_dim", [1, 2, -1])
@pytest.mark.parametrize("name", ["acon_a", "acon_b", "acon_c"])
def test_the_small_form_takes_the_channels_on_any_dim(name, channel_dim):
    m = _module(name, {}, channel_dim=channel_dim)
    shapes = {1: (2, 12, 12, 3), 2: (2, 3, 12), -1: (2, 3, 4, 12)}
    x = torch.randn(shapes[channel_dim])
    with torch.no_grad():
        y = m(x)
        m.backend = "reference"
        torch.testing.assert_close(y, m(x), rtol=1e-6, atol=1e-6)


def test_arelu_small_form_keeps_the_reference_at_zero_and_infinities():
    x = torch.tensor([-float("inf"), -2.0, -0.0, 0.0, 3.0, float("inf"), float("nan")])
    alpha, beta = torch.tensor([0.3]), torch.tensor([1.5])
    torch.testing.assert_close(small.arelu(x, alpha, beta), adaptact.functional.arelu(x, alpha, beta),
                               equal_nan=True)


@pytest.mark.parametrize("why", ["grad", "float64", "big", "backend", "training", "sample", "wrapped",
                                 "rank", "norm_training", "sync_norm"])
def test_everything_else_takes_the_usual_route(why, monkeypatch):
    """Each reason not to take the small form, one at a time: the small form must not run. A
    generator BatchNorm left in training mode in an eval module normalises with batch statistics
    there; a SyncBatchNorm in a causal generator is refused with one line."""
    generated = why in ("training", "norm_training", "sync_norm")
    name, options = ("meta_acon_c", {"context": "causal"}) if generated else ("acon_c", {})
    if why == "sample":
        name, options = "meta_acon_c", {}
    m = _module(name, options)
    x = torch.randn(4, 8192, 12) if why == "big" else torch.randn(2, 3, 12)
    if why == "training":
        m.train()
    if why == "norm_training":
        m.bn2.train()
    if why == "sync_norm":
        m = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m).eval()
    if why == "float64":
        m, x = m.double(), x.double()
    if why == "backend":
        m.backend = "autograd"
    if why == "rank":  # causal takes one sequence dim: the usual route explains
        m, x = _module("meta_acon_c", {"context": "causal"}), torch.randn(2, 3, 4, 12)
    for f in small.__all__:
        if f not in ("evaluating", "linear", "plain"):  # (the checks, which send cases the usual way)
            monkeypatch.setattr(small, f, lambda *a, **k: pytest.fail("the small form ran"))
    with torch.set_grad_enabled(why == "grad"):
        if why == "norm_training":  # the usual route: the reference's numbers, bn2 with batch statistics
            y = m(x)
            m.backend = "reference"
            torch.testing.assert_close(y, m(x))
        elif why == "sync_norm":
            with pytest.raises(ValueError, match="SyncBatchNorm in a causal or token generator"):
                m(x)
        elif why == "wrapped":  # a torch.func transform over the parameters (an ensemble)
            params = {k: torch.stack([v, v]) for k, v in m.named_parameters()}
            y = torch.func.vmap(lambda p: torch.func.functional_call(m, p, (x,)))(params)
            assert y.shape == (2, *x.shape)
        elif why == "rank":
            with pytest.raises(ValueError, match="one sequence dim"):
                m(x)
        else:
            m(x)


# the generated activations: in a decoder's contexts, and in a CNN's (context "sample")
GENERATED = [case for case in CASES if case[0] in ("meta_acon_c", "aprelu", "dy_relu_a", "dy_relu_b")] + [
    ("meta_acon_c", {}), ("aprelu", {}), ("dy_relu_b", {})]
# with Linear layers in their generators (Meta-ACON-C "layer" has none)
WITH_LAYERS = [case for case in GENERATED
               if case != ("meta_acon_c", {"context": "token", "granularity": "layer"})]
# torch.ao's eager quantization (deprecated for torchao's, still in torch)
quantized = pytest.mark.skipif(not hasattr(torch.ao.quantization, "quantize_dynamic"),
                               reason="this torch has no torch.ao.quantization.quantize_dynamic")
quiet = pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated",
                                   "ignore:torch.quantize_per_tensor")


def _quantized(name, options):
    model = torch.nn.Sequential(_module(name, options))
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)[0]


@quantized
@quiet
@pytest.mark.parametrize("shape", [(1, 1, 12), (2, 1500, 12)])  # a decoded token; beyond the small form
@pytest.mark.parametrize("case", GENERATED, ids=[n + "".join(f"-{v}" for v in kw.values())
                                                  for n, kw in GENERATED])
def test_a_dynamically_quantized_generator_runs_as_quantized(case, shape):
    """``torch.ao.quantization.quantize_dynamic(model, {nn.Linear})``, the usual CPU serving step,
    swaps the generators' Linear layers for ones that pack an int8 weight: every backend calls
    them (before: a KeyError in the small form, an AttributeError in the usual route)."""
    name, options = case
    m = _quantized(name, options)
    assert "fc1" not in m._modules or type(m.fc1) is not torch.nn.Linear
    x = torch.randn(shape)
    with torch.no_grad():
        y = m(x)
        for backend in ("reference", "autograd", "compiled"):
            m.backend = backend
            torch.testing.assert_close(m(x), y, rtol=1e-6, atol=1e-6)


@quantized
@quiet
def test_a_dynamically_quantized_meta_acon_generator_gives_its_formula():
    m = _quantized("meta_acon_c", {"context": "causal"})
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        means = (x.cumsum(1) / torch.arange(1, 6).view(1, 5, 1)).reshape(10, 12)
        beta = torch.sigmoid(m.bn2(m.fc2(m.bn1(m.fc1(means))))).view(2, 5, 12)
        d = m.p1 - m.p2
        torch.testing.assert_close(m(x), d * x * torch.sigmoid(beta * d * x) + m.p2 * x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", WITH_LAYERS, ids=lambda c: c[0] + "".join(f"-{v}" for v in c[1].values()))
def test_a_generator_whose_layers_peft_wraps_takes_their_dtype(case, dtype):
    """LoRA on a generator's layers (PEFT's wrapper is no nn.Linear and keeps its weight in the
    layer it wraps): the statistics take the wrapped weight's dtype, in a decoded token's call and
    in training, and a fresh adapter (B = 0) changes nothing."""
    peft = pytest.importorskip("peft")
    name, options = case
    m = _module(name, options).to(dtype)
    x = torch.randn(2, 5, 12, dtype=dtype)
    with torch.no_grad():
        before = [m(x[:1, :1]), m(x)]
    wrapped = peft.get_peft_model(torch.nn.Sequential(m), peft.LoraConfig(r=2, target_modules=["fc1", "fc2"]))
    act = wrapped.base_model.model[0]
    assert type(act.fc1) is not torch.nn.Linear
    with torch.no_grad():
        for y, x_ in zip(before, [x[:1, :1], x], strict=True):
            torch.testing.assert_close(act(x_), y)  # (the small form and the usual route: rounding)
    act.train()(x).float().sum().backward()
    assert act.fc2.lora_B.default.weight.grad is not None


def test_the_route_is_decided_once_per_kind_of_input_and_forgotten_with_the_backend(monkeypatch):
    m = adaptact.create("acon_c", channels=12, channel_dim=-1)
    x = torch.randn(4, 64, 12, requires_grad=True)
    m(x)
    assert len(m.__dict__["_routes"]) == 1
    from adaptact.ops import dispatch

    monkeypatch.setattr(dispatch, "fused_backend", lambda x: pytest.fail("decided again"))
    m(x)
    m(torch.randn(2, 9, 12, requires_grad=True))  # same kind: dtype, device, rank, grad mode (any size)
    monkeypatch.undo()
    m.backend = "autograd"
    assert "_routes" not in m.__dict__


SRC = Path(adaptact.__file__).parent
IMPLEMENTATIONS = tuple(str(SRC / p) for p in ("functional.py", "ops/small.py", "ops/autograd.py",
                                               "ops/compiled.py", "ops/triton", "ops/defined.py"))
COMPOSITES = {"_meta_acon_c", "_aprelu", "_dy_relu", "_generated_then"}  # dispatch's per backend


def _is_implementation(code) -> bool:
    """A backend's own code: the reference, the small forms, the lean Functions, the compiled
    entries, Triton, a defined formula's (not ``DefinedOp.__call__``, its dispatch), or the
    composite of pooling, generator and activation that a backend runs for the generated ones."""
    if code.co_filename.startswith(IMPLEMENTATIONS):
        return code.co_name != "__call__"
    return code.co_filename == str(SRC / "ops" / "dispatch.py") and code.co_name in COMPOSITES


def _route_depths(m, x) -> list[tuple[int, str]]:
    """For each entry into a backend's implementation from adaptact's own code during one call
    (not from inside another implementation), in order, the number of adaptact frames on the
    stack, the entered one included. The last is the chosen callable, which computes the output;
    those before it are helpers that returned (parameter views, ``compiled.available``)."""
    depths = []

    def profile(frame, event, arg):
        if event != "call" or not _is_implementation(frame.f_code):
            return
        caller = frame.f_back
        if caller is None or not caller.f_code.co_filename.startswith(str(SRC)):
            return
        depth, f = 1, caller
        while f is not None:
            if _is_implementation(f.f_code):
                return  # inside a backend already
            depth += f.f_code.co_filename.startswith(str(SRC))
            f = f.f_back
        depths.append((depth, frame.f_code.co_name))

    for _ in range(3):  # a steady state: routes decided, lazy parameters made, compiled entries built
        y = m(x)  # (with gradients, "auto" compiles once a backward came: ActivationModule._route)
        if y.requires_grad:
            y.sum().backward()
    sys.setprofile(profile)
    try:
        m(x)
    finally:
        sys.setprofile(None)
    return depths


ROUTES = [("arelu", {}), ("acon_c", {}), ("meta_acon_c", {}), ("aprelu", {}), ("dy_relu_b", {}), (NAME, {}),
          ("meta_acon_c", {"context": "causal"}), ("dy_relu_b", {"context": "causal"})]


@pytest.mark.parametrize("backend", ["auto", "reference", "autograd"])
@pytest.mark.parametrize("mode", ["train", "eval-small", "eval"])
@pytest.mark.parametrize("case", ROUTES, ids=[n + "".join(f"-{v}" for v in kw.values()) for n, kw in ROUTES])
def test_the_route_to_the_backend_is_at_most_five_adaptact_frames(case, mode, backend):
    name, options = case
    m = adaptact.create(name, channels=16, channel_dim=-1, backend=backend, **options).train(mode == "train")
    x = torch.randn(4, 8 if mode != "eval" else 512, 16, requires_grad=mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        depths = _route_depths(m, x)
    assert depths, "no backend ran"
    assert depths[-1][0] <= 5, depths


def test_the_compiled_route_is_at_most_five_adaptact_frames(monkeypatch):
    from adaptact.ops import compiled as CP

    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    monkeypatch.setattr(CP, "_failure", [])
    for name in ("acon_c", NAME):
        m = adaptact.create(name, channels=16, channel_dim=-1)
        depths = _route_depths(m, torch.randn(4, 8, 16, requires_grad=True))
        assert m.ran_backend == "compiled" and depths[-1][0] <= 5, (name, depths)


class _ShiftedLinear(torch.nn.Linear):
    """A Linear subclass with its own forward (as adapters and quantized layers have)."""

    def forward(self, x):
        return super().forward(x) + 1


SMALL_WITH_LAYERS = [case for case in WITH_LAYERS if case[1].get("context") in ("causal", "token")]


@pytest.mark.parametrize("how", ["hook", "pre_hook", "subclass"])
@pytest.mark.parametrize("case", SMALL_WITH_LAYERS,
                         ids=lambda c: c[0] + "".join(f"-{v}" for v in c[1].values()))
def test_a_generator_layer_that_is_more_than_its_operations_is_called(case, how):
    """The small form computes a generator's layers as torch's operations on their tensors; a layer
    whose call is more than that (a hook of its own, a subclass's forward, an offloaded layer's
    forward set by accelerate) is called, as the usual route calls it: a decoded token's output is
    the usual route's (before, the small form left the hook and the subclass out)."""
    name, options = case
    m = _module(name, options)
    x = torch.randn(1, 1, 12)
    with torch.no_grad():
        plain = m(x)
    if how == "hook":
        m.fc2.register_forward_hook(lambda layer, args, out: out * 0.5)
    elif how == "pre_hook":
        m.fc2.register_forward_pre_hook(lambda layer, args: (args[0] + 1,))
    else:
        shifted = _ShiftedLinear(m.fc2.in_features, m.fc2.out_features)
        shifted.load_state_dict(m.fc2.state_dict())
        m.fc2 = shifted
    with torch.no_grad():
        y = m(x)
        m.backend = "reference"  # the usual route: every layer called
        want = m(x)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y, plain)
