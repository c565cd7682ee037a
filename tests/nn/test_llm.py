"""The activations of today's language models against their sources: transformers' classes where
it has them, the papers' formulas in float64 otherwise (values and gradients)."""

import pytest
import torch

from adaptact.nn import XIELU, GoLU, PolyNorm, ReLU2

transformers_activations = pytest.importorskip("transformers.activations")


def _x(*shape, dtype=torch.float64):
    return (3 * torch.randn(*shape, dtype=dtype)).requires_grad_()


def test_xielu_equals_transformers_in_values_gradients_and_state_dict():
    theirs = transformers_activations.XIELUActivation(dtype=torch.float64)
    ours = XIELU(dtype=torch.float64)
    for name, tensor in theirs.state_dict().items():  # the same initial parameters, by name and shape
        torch.testing.assert_close(ours.state_dict()[name], tensor, rtol=0, atol=0)
    with torch.no_grad():  # away from the initial values, so that every term counts
        theirs.alpha_p.add_(0.3)
        theirs.alpha_n.sub_(0.2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.cat([_x(500), torch.tensor([0.0, -1e-7, 1e-7, -40.0, 40.0], dtype=torch.float64)]).detach()
    x.requires_grad_()
    y, y_ref = ours(x), theirs._xielu_python(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, ours.alpha_p, ours.alpha_n], dy)
    grads_ref = torch.autograd.grad(y_ref, [x, theirs.alpha_p, theirs.alpha_n], dy)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-10)


def test_xielu_loads_transformers_bfloat16_state_dict_into_float32():
    theirs = transformers_activations.XIELUActivation()  # bfloat16 parameters, as transformers makes them
    ours = XIELU()
    ours.load_state_dict(theirs.state_dict())
    assert ours.alpha_p.dtype == torch.float32
    torch.testing.assert_close(ours.alpha_p, theirs.alpha_p.float(), rtol=0, atol=0)
    x = torch.randn(64)
    torch.testing.assert_close(ours(x), theirs._xielu_python(x.bfloat16()).float(), rtol=2e-2, atol=2e-2)


def test_relu2_equals_transformers_and_its_formula():
    x = _x(300)
    torch.testing.assert_close(ReLU2()(x), transformers_activations.ReLUSquaredActivation()(x))
    assert torch.autograd.gradcheck(ReLU2(), (x[x.abs() > 1e-3].detach().requires_grad_(),))


def test_golu_is_its_formula_with_finite_gradients_everywhere():
    x = _x(300)
    torch.testing.assert_close(GoLU()(x), x * torch.exp(-torch.exp(-x)), rtol=1e-14, atol=1e-300)
    assert torch.autograd.gradcheck(GoLU(), (x.detach()[:40].requires_grad_(),))
    far = torch.tensor([-1e4, -800.0, -100.0, 0.0, 100.0, 1e4], dtype=torch.float32, requires_grad=True)
    y = GoLU()(far)
    (dx,) = torch.autograd.grad(y.sum(), far)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    torch.testing.assert_close(dx[-2:], torch.ones(2))


def _official_polynorm(x, weight, bias, eps=1e-6):
    def norm(u):
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)

    return weight[0] * norm(x ** 3) + weight[1] * norm(x ** 2) + weight[2] * norm(x) + bias


def test_polynorm_equals_the_official_code_on_tokens_and_channels_first():
    m = PolyNorm(channel_dim=-1, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.2, -0.5, 0.9]))
        m.bias.fill_(0.1)
    x = _x(2, 7, 16)
    torch.testing.assert_close(m(x), _official_polynorm(x, m.weight, m.bias), rtol=1e-12, atol=1e-12)
    first = PolyNorm(channel_dim=1, dtype=torch.float64)
    first.load_state_dict(m.state_dict())
    torch.testing.assert_close(first(x.transpose(1, 2)).transpose(1, 2), m(x), rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(x)
    grads = torch.autograd.grad(m(x), [x, m.weight, m.bias], dy)
    grads_ref = torch.autograd.grad(_official_polynorm(x, m.weight, m.bias), [x, m.weight, m.bias], dy)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: m(t), (x[:1, :3].detach().requires_grad_(),))
    with pytest.raises(ValueError, match="channel_dim=-1"):
        m(torch.randn(4))


def _saved_bytes(fn, *args):
    sizes = {}

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(sizes.values())


FUSED_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", list(FUSED_TOL), ids=str)
@pytest.mark.parametrize("backend", ["autograd", "compiled"])
@pytest.mark.parametrize("make", [lambda b: GoLU(backend=b), lambda b: XIELU(backend=b),
                                  lambda b: PolyNorm(channel_dim=1, backend=b),
                                  lambda b: PolyNorm(channel_dim=-1, backend=b)],
                         ids=["golu", "xielu", "polynorm-first", "polynorm-last"])
def test_the_lean_backends_give_the_reference_numbers_and_save_x_alone(make, backend, dtype):
    torch.manual_seed(0)
    fused, reference = make(backend).to(dtype), make("reference").to(dtype)
    with torch.no_grad():  # away from the initial values, so that every term counts
        for p in fused.parameters():
            p.add_(0.3 * torch.randn_like(p))
    reference.load_state_dict(fused.state_dict())
    x = (3 * torch.randn(4, 6, 5, dtype=torch.float64)).to(dtype)
    x[0, 0, :3] = torch.tensor([0.0, -1e-7, -30.0])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = fused(x1), reference(x2)
    tol = FUSED_TOL[dtype]
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    dy = torch.randn_like(y)
    params, params_ref = list(fused.parameters()), list(reference.parameters())
    grads = torch.autograd.grad(y, [x1, *params], dy)
    grads_ref = torch.autograd.grad(y_ref, [x2, *params_ref], dy)
    for g, g_ref in zip(grads, grads_ref, strict=True):  # parameter gradients sum 120 terms
        scale = 1 + float(g_ref.abs().max())
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=10 * tol, atol=10 * tol * scale)
    assert fused.ran_backend == backend
    x3 = x.clone().requires_grad_()
    scalars = sum(p.numel() * p.element_size() for p in fused.parameters()) + 64  # beta and eps too
    assert _saved_bytes(fused, x3) <= x3.numel() * x3.element_size() + scalars
    assert _saved_bytes(reference, x3) > 2 * x3.numel() * x3.element_size()


@pytest.mark.parametrize("module", [GoLU, XIELU, PolyNorm])
def test_the_lean_functions_pass_gradcheck_and_have_no_triton_kernel(module):
    m = module(backend="autograd").double()
    x = (3 * torch.randn(3, 10, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,))
    if isinstance(m, XIELU):  # the scalar parameters (and the beta and eps buffers) through the Function
        from adaptact.ops import autograd as AG

        beta, eps = m.beta.clone().requires_grad_(), m.eps.clone().requires_grad_()
        args = (x.detach()[x.abs() > 1e-3].requires_grad_(), m.alpha_p, m.alpha_n, beta, eps)
        assert torch.autograd.gradcheck(AG.xielu, args)
    refusal = f"{module.__name__} has no Triton kernel yet: use backend='autograd'"
    with pytest.raises(ValueError, match=refusal):
        module(backend="triton")(torch.randn(2, 3))
    if module is PolyNorm:  # weight and bias through the Function
        from adaptact.ops import autograd as AG

        args = (x.detach().requires_grad_(), torch.randn(3, dtype=torch.float64, requires_grad=True),
                torch.randn(1, dtype=torch.float64, requires_grad=True), 1e-6)
        assert torch.autograd.gradcheck(AG.polynorm, args)


def test_polynorm_auto_runs_the_eager_lean_function_on_the_cpu():
    m = PolyNorm(channel_dim=-1)
    m(torch.randn(2, 3, 8, requires_grad=True)).sum().backward()
    assert m.ran_backend == "autograd"
