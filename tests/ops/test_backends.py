"""Every backend equals the reference: outputs and all gradients, on fresh random inputs of every
layout; the fused backends keep only the input (plus O(N*C)) for backward and the Triton path
moves only the floor's passes (their speed: benchmarks/, never a wall clock here).

The Triton cases run on CPU under TRITON_INTERPRET=1 (CI), and on a GPU with
ADAPTACT_TEST_DEVICE=cuda (benchmarks/gpu.sh), which also compiles the Triton path."""

import copy
import os

import pytest
import torch

import adaptact
from adaptact.kernel_benchmark import saved_bytes, tensor_passes
from adaptact.ops import compiled as CP
from adaptact.ops import dispatch
from tests.conftest import random_input

CASES = [
    ("arelu", {}), ("acon_a", {}), ("acon_b", {}), ("acon_c", {}),
    ("meta_acon_c", {}), ("meta_acon_c", {"granularity": "layer"}), ("meta_acon_c", {"granularity": "pixel"}),
    ("meta_acon_c", {"norm": "none"}),
    ("aprelu", {}), ("aprelu", {"granularity": "layer"}),
    ("dy_relu_a", {}), ("dy_relu_b", {}),
]


MAIN_CASES = [("arelu", {}), ("acon_c", {}), ("meta_acon_c", {}), ("aprelu", {})]


def _generated(case) -> bool:
    """A parameter generated from a pool of x (by Linear/BatchNorm layers but for "layer")."""
    name, kwargs = case
    generated = ("meta_acon_c", "aprelu", "dy_relu_a", "dy_relu_b")
    return name in generated and kwargs.get("granularity") != "pixel"


IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in CASES]
SHAPES = {  # ranks 2-5, odd sizes, N = 1
    "rank2": (5, 7), "rank3": (3, 7, 9), "rank4": (2, 7, 5, 3), "rank5": (2, 7, 3, 5, 3), "n1": (1, 7, 5, 5),
}
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DEVICE = torch.device(os.environ.get("ADAPTACT_TEST_DEVICE", "cpu"))
TRITON = ["triton"] if dispatch.triton_available() and (
    DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1") else []
FUSED = ["autograd", *TRITON]


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _layout(x, layout):
    if layout == "channels_last" and x.ndim in (4, 5):
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "strided":  # a non-contiguous view: every other element of a wider tensor
        wide = x.new_empty(x.shape[:-1] + (2 * x.shape[-1],))
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _run(module, x, dy):
    x = x.detach().requires_grad_()  # a view: the same strides (clone would make a strided x dense)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy)
    return y, x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


def _gradient_scale(module, x, dy):
    """Per parameter, the sum over outputs of |dy * dy_out/dparam|: the size of the terms its
    gradient adds up. A sum that cancels to near zero is exact only to about 1e-7 x this scale
    in float32, whatever the order of summation (AReLU's two scalars sum every element), so
    this, not |gradient|, is the yardstick for parameter gradients."""
    m = copy.deepcopy(module).double()
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm1d)):
        bn.track_running_stats = False  # the same numbers, without updating running statistics
    buffers = dict(m.named_buffers())

    def outputs(params):
        return torch.func.functional_call(m, (params, buffers), (x.detach().double(),))

    jacobians = torch.func.jacrev(outputs)(dict(m.named_parameters()))
    w = dy.double().abs().to(x.device)
    return {n: (w.reshape(w.shape + (1,) * (j.ndim - w.ndim)) * j.detach().abs()).sum(tuple(range(w.ndim)))
            for n, j in jacobians.items()}


def _perturb(module):
    torch.manual_seed(int(os.environ.get("ADAPTACT_TEST_SEED", "0")))  # settable: see conftest.rng_seed
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
    check_equals_reference(case, layout, shape, dtype, backend, training)


def check_equals_reference(case, layout, shape, dtype, backend, training):
    """``backend`` against the float32 reference: output, input and parameter gradients, BatchNorm
    running statistics, within TOL[dtype]."""
    name, kwargs = case
    if training and _generated(case) and shape[0] in (2, 3):
        # BatchNorm with the statistics of 2-3 samples makes the generator's input gradient a
        # cancellation (with 2 samples its output is +-1 whatever the input): there the float32
        # reference itself is up to ~2e-4 off the float64 truth, so two float32 implementations
        # that round differently would be compared on noise. With 8 samples both stay within
        # ~3e-6 of the float64 truth, and the same code paths run.
        shape = (8, *shape[1:])
    ref = _perturb(adaptact.create(name, channels=shape[1], backend="reference", **kwargs)).train(training)
    for bn in (m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    fused = copy.deepcopy(ref).to(DEVICE)  # float32 parameters, activations in ``dtype`` (mixed precision)
    fused.backend = backend
    x = random_input(shape, dtype)
    dy = torch.randn(shape).to(dtype)
    # the truth: the reference in float32 on the CPU, on the same (low-precision) values
    y_ref, dx_ref, grads_ref = _run(ref.float(), x.float(), dy.float())
    if layout == "tokens":  # channels last, (N, *, C), given to a module with channel_dim=-1
        if hasattr(fused, "channel_dim"):
            fused.channel_dim = -1
        last = (x.to(DEVICE).movedim(1, -1).contiguous(), dy.to(DEVICE).movedim(1, -1).contiguous())
        y, dx, grads = _run(fused, *last)
        y, dx = y.movedim(-1, 1), dx.movedim(-1, 1)
    else:
        y, dx, grads = _run(fused, _layout(x.to(DEVICE), layout), dy.to(DEVICE))
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert _rel(y, y_ref) < tol
    assert _rel(dx, dx_ref) < tol
    scale = _gradient_scale(ref, x, dy)
    for n, g in grads_ref.items():
        if training and n.startswith(("fc", "bn")):
            # With batch statistics BatchNorm cancels the generator's gradients inside its backward
            # (fc1.bias's exactly): rounding noise of zero. They get the same beta/alpha gradient
            # from every backend, which the eval-mode runs check through these same layers.
            continue
        error = (grads[n].double().cpu() - g.double()).abs().max()
        assert float(error / scale[n].max().clamp_min(1e-12)) < tol, n
    for a, b in zip(ref.buffers(), fused.buffers()):  # BatchNorm running statistics
        assert _rel(b.float(), a.float()) < tol


TOKEN_SHAPES = [("rank3", torch.float32), ("rank3", torch.bfloat16), ("rank3", torch.float16),
                ("rank4", torch.float32), ("rank4", torch.bfloat16), ("rank2", torch.float32),
                ("rank5", torch.float32)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape_dtype", TOKEN_SHAPES, ids=[f"{s}-{d}" for s, d in TOKEN_SHAPES])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_channels_last_tokens_equal_reference(case, shape_dtype, training):
    """channel_dim=-1 on (N, *, C) inputs: the channels-first reference's numbers (autograd; the
    compiled default in tests/ops/test_compiled.py, Triton below)."""
    shape, dtype = shape_dtype
    check_equals_reference(case, "tokens", SHAPES[shape], dtype, "autograd", training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("shape_dtype", TOKEN_SHAPES[:2], ids=[f"{s}-{d}" for s, d in TOKEN_SHAPES[:2]])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_channels_last_tokens_equal_reference(case, shape_dtype, backend, training):
    """Rank 3 only: (N, H, W, C) tokens have the strides of the channels_last layout above, whose
    launches the matrix has; each distinct launch is compiled for two GPUs in the main pass."""
    shape, dtype = shape_dtype
    check_equals_reference(case, "tokens", SHAPES[shape], dtype, backend, training)


# Per-position coefficients (contexts "causal" and "token") on channels-last tokens: the fused
# backends run them as (B*T, C) rows, each row a sample of one position.
POSITION_CASES = [
    ("meta_acon_c", {"context": "causal"}), ("meta_acon_c", {"granularity": "layer", "context": "token"}),
    ("aprelu", {"context": "causal"}), ("aprelu", {"granularity": "layer", "context": "token"}),
    ("dy_relu_a", {"context": "token"}), ("dy_relu_b", {"context": "causal"}),
]
POSITION_IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in POSITION_CASES]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["autograd", *TRITON])
@pytest.mark.parametrize("case", POSITION_CASES, ids=POSITION_IDS)
def test_per_position_coefficients_on_tokens_equal_reference(case, backend, training):
    """The reference runs channels first, (B, C, T), with the same context."""
    check_equals_reference(case, "tokens", SHAPES["rank3"], torch.float32, backend, training)
    if backend != "autograd":
        check_equals_reference(case, "tokens", SHAPES["rank3"], torch.bfloat16, backend, training)


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


# (case, backend, channel_dim): every case on autograd in both layouts; Triton's Functions save x
# whatever the layout and the variants share the main cases' Functions (each case costs seconds in
# the interpreter)
SAVING = ([(c, "autograd", d) for c in CASES for d in (1, -1)]
          + [(c, b, 1) for c in CASES if c in MAIN_CASES or c == ("dy_relu_b", {}) for b in TRITON])


@pytest.mark.parametrize("case, backend, channel_dim", SAVING, ids=[
    f"{IDS[CASES.index(c)]}-{b}-{'tokens' if d < 0 else 'nchw'}" for c, b, d in SAVING])
def test_fused_backends_save_only_the_input(case, backend, channel_dim):
    name, kwargs = case
    n, c = 8, 32
    x = torch.randn(n, c, 12, 12) if channel_dim == 1 else torch.randn(n, 144, c)
    x.requires_grad_()
    small = 16 * n * c * 4  # O(N*C) statistics and generator activations (at most 9.3 KB here), << x
    m = adaptact.create(name, channels=c, backend=backend, channel_dim=channel_dim, **kwargs).train()
    saved = saved_bytes(m.to(DEVICE), x.detach().to(DEVICE).requires_grad_())
    assert saved <= x.nbytes + small, f"{backend}: {saved} bytes saved, input is {x.nbytes}"
    ref = adaptact.create(name, channels=c, backend="reference", channel_dim=channel_dim, **kwargs).train()
    assert saved_bytes(ref, x) >= 2 * x.nbytes  # the plain composition keeps intermediates


# Every case in training mode in both dtypes and layouts; eval mode where BatchNorm layers generate
# a parameter (running statistics instead of the batch's: the generator's O(N*C) work differs,
# the route of x does not), in one dtype and layout.
FLOOR = ([(c, True, d, lay) for c in CASES for d in (torch.float32, torch.bfloat16)
          for lay in ("contiguous", "channels_last")]
         + [(c, False, torch.float32, "contiguous") for c in CASES
            if _generated(c) and c[1].get("norm") != "none"])


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize(("case", "training", "dtype", "layout"), FLOOR, ids=[
    f"{IDS[CASES.index(c)]}-{'train' if t else 'eval'}-{str(d)[6:]}-{lay}" for c, t, d, lay in FLOOR])
def test_triton_moves_only_the_floor_passes(case, training, dtype, layout, backend):
    """The floor (docs/architecture.md): 5 x-sized passes for forward+backward (read x, write y;
    read x and dy, write dx), 8 when a parameter is generated from a pool of x (a pooling read in forward, the
    parameter-gradient read of x and dy before the dx pass in backward). Parameter-gradient
    reductions ride along."""
    name, kwargs = case
    m = adaptact.create(name, channels=8, backend=backend, **kwargs).train(training).to(DEVICE)
    x = _layout(torch.randn(4, 8, 6, 5, device=DEVICE).to(dtype), layout)
    dy = torch.randn(4, 8, 6, 5, device=DEVICE).to(dtype)
    assert tensor_passes(m, x, dy) == (8 if _generated(case) else 5)


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("case", [c for c in CASES if _generated(c)], ids=[i for i, c in zip(IDS, CASES)
                                                                          if _generated(c)])
def test_triton_route_under_torch_compile_equals_the_fused_one(case, backend, monkeypatch):
    """Under torch.compile the generated activations take the composite route (pooling, generator,
    activation op); it gives the fused Function's numbers. (Compiling the Triton ops themselves
    needs a GPU: under TRITON_INTERPRET=1 torch runs the kernels on fake tensors.)"""
    name, kwargs = case
    fused = _perturb(adaptact.create(name, channels=7, backend=backend, **kwargs)).eval().to(DEVICE)
    x, dy = random_input((3, 7, 5, 4)).to(DEVICE), torch.randn(3, 7, 5, 4, device=DEVICE)
    y, dx, grads = _run(fused, x, dy)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert tensor_passes(fused, x, dy) > 8  # the composite route ran (eagerly it moves more)
    y2, dx2, grads2 = _run(fused, x, dy)
    assert _rel(y2, y) < 1e-5 and _rel(dx2, dx) < 1e-5
    ref = copy.deepcopy(fused).cpu()
    ref.backend = "reference"
    scale = _gradient_scale(ref, x.cpu(), dy.cpu())  # parameter gradients are sums: see there
    for n, g in grads.items():
        error = (grads2[n].double().cpu() - g.double().cpu()).abs().max()
        assert float(error / scale[n].max().clamp_min(1e-12)) < 1e-5, n


ON_CUDA = pytest.mark.skipif(DEVICE.type != "cuda" or not TRITON,
                             reason="compiling the Triton ops needs a GPU (ADAPTACT_TEST_DEVICE=cuda)")


@ON_CUDA
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_path_compiles_whole_and_matches_eager(case, training):
    name, kwargs = case
    eager = _perturb(adaptact.create(name, channels=16, backend="triton",
                                     **kwargs)).train(training).to(DEVICE)
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)  # fullgraph: a graph break raises
    x, dy = random_input((4, 16, 9, 7)).to(DEVICE), torch.randn(4, 16, 9, 7, device=DEVICE)
    y, dx, grads = _run(eager, x, dy)
    y2, dx2, grads2 = _run(compiled, x, dy)
    assert _rel(y2, y) < 1e-5 and _rel(dx2, dx) < 1e-5
    for n, g in grads.items():
        if not (training and n.startswith(("fc", "bn"))):  # see test_backend_equals_reference
            assert _rel(grads2[n], g) < 1e-5, n
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(compiled(x)).all()


@ON_CUDA
@pytest.mark.parametrize("kind", [0, 1, 2, 3], ids=["arelu", "acon", "acon_pixel", "aprelu"])
def test_triton_ops_pass_opcheck(kind):
    """torch.library's checks of schema, fake tensors, autograd registration and AOT dispatch."""
    x, dy = torch.randn(3, 5, 7, 6, device=DEVICE), torch.randn(3, 5, 7, 6, device=DEVICE)
    a, b, c = (torch.rand(1, 5, 1, 1, device=DEVICE) + 0.1 for _ in range(3))
    ops = torch.ops.adaptact
    neg, pos = torch.randn(3, 5, device=DEVICE), torch.randn(3, 5, device=DEVICE)
    cases = [(ops.activation_fwd.default, (x.requires_grad_(), a.requires_grad_(), b, c, kind)),
             (ops.activation_bwd.default, (x.detach(), dy, a.detach(), b, c, kind)),
             (ops.activation_param_grads.default, (x.detach(), dy, a.detach(), b, c, kind)),
             (ops.activation_input_grad.default, (x.detach(), dy, a.detach(), b, c, neg, pos, kind)),
             (ops.signed_sums.default, (x.detach(),))]
    for op, args in cases:
        torch.library.opcheck(op, args)


@ON_CUDA
def test_dy_relu_triton_ops_pass_opcheck():
    x, dy = torch.randn(3, 5, 7, 6, device=DEVICE), torch.randn(3, 5, 7, 6, device=DEVICE)
    a, b = torch.randn(3, 5, 2, device=DEVICE), torch.randn(3, 1, 2, device=DEVICE)  # per channel, shared
    pool = torch.randn(3, 5, device=DEVICE)
    ops = torch.ops.adaptact
    cases = [(ops.dy_relu_fwd.default, (x.requires_grad_(), a.requires_grad_(), b.requires_grad_())),
             (ops.dy_relu_bwd.default, (x.detach(), dy, a.detach(), b.detach())),
             (ops.dy_relu_param_grads.default, (x.detach(), dy, a.detach(), b.detach())),
             (ops.dy_relu_input_grad.default, (x.detach(), dy, a.detach(), b.detach(), pool))]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_backend_argument_is_checked():
    with pytest.raises(ValueError,
                       match="backend must be one of 'auto', 'reference', 'autograd', 'compiled', 'triton'"):
        adaptact.AconC(4, backend="cuda")
    assert "backend='reference'" in repr(adaptact.AReLU(backend="reference"))


def test_auto_picks_compiled_on_cpu_unless_switched_off(monkeypatch):
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert dispatch.resolve("auto", torch.zeros(1, dtype=dtype)) == "compiled"
    assert dispatch.resolve("auto", torch.zeros(1, dtype=torch.float64)) == "autograd"
    monkeypatch.setenv("ADAPTACT_COMPILE", "0")
    assert dispatch.resolve("auto", torch.zeros(1)) == "autograd"


@pytest.mark.parametrize("name, options", [
    ("arelu", {}), ("acon_c", {}), ("meta_acon_c", {"context": "causal"}), ("aprelu", {"context": "causal"}),
    ("dy_relu_b", {"context": "causal"})])
def test_auto_runs_small_calls_without_gradients_eagerly(monkeypatch, name, options):
    """A decoded token (a small float32 CPU call under no_grad) runs the reference's maths eagerly
    under "auto" (in the fewest ops, ``ops.small``: equal up to float32 rounding): no compiled
    entry is built or called for it. Calls that record gradients, larger inputs and half precision
    keep the compiled path."""
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    keys, real = [], CP._compiled
    monkeypatch.setattr(CP, "_compiled", lambda *key: keys.append(key) or real(*key))
    m = adaptact.create(name, channels=8, channel_dim=-1, **options).eval()
    reference = copy.deepcopy(m)
    reference.backend = "reference"
    x = torch.randn(1, 1, 8)
    with torch.no_grad():
        y = m(x)
        assert m.ran_backend == "reference" and not keys
        torch.testing.assert_close(y, reference(x), rtol=1e-6, atol=1e-6)
        for big in (torch.randn(1, dispatch.EAGER_NUMEL // 8 + 1, 8), x.to(torch.bfloat16)):
            m(big)  # the first call of a kind of input runs the eager lean Function, the second compiles
            assert m.ran_backend == "autograd"
            m(big)
            assert m.ran_backend == "compiled" and keys
    m(x).sum().backward()  # with gradients: the lean Function, compiled once backward reached it
    assert m.ran_backend == "autograd"
    m(x)
    assert m.ran_backend == "compiled"


def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    m = adaptact.AconC(4, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        m(torch.randn(2, 4))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backend_attribute_is_checked_when_set(case):
    name, kwargs = case
    m = adaptact.create(name, channels=4, **kwargs)
    for bad in ("autgrad", "cuda", None, 1):
        with pytest.raises(ValueError,
                           match="backend must be one of 'auto', 'reference', 'autograd', 'compiled', "
                                 "'triton'"):
            m.backend = bad
    assert m.backend == "auto"
    m.backend = "reference"
    assert m.backend == "reference" and "backend='reference'" in repr(m)
    assert copy.deepcopy(m).backend == "reference"


def test_float64_takes_the_autograd_path(monkeypatch):
    """The kernels compute in float32: "auto" sends float64 to autograd, "triton" refuses it."""
    monkeypatch.setattr(dispatch, "_on_gpu", lambda x: True)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.auto_backend(torch.zeros(2, dtype=torch.float64)) == "autograd"
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert dispatch.auto_backend(torch.zeros(2, dtype=dtype)) == "triton"
    m = adaptact.AconC(3, backend="triton").double()
    with pytest.raises(TypeError, match="backend='triton' takes float32, float16 and bfloat16 inputs"):
        m(torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_reads_expanded_and_strided_output_gradients_in_place(case, backend):
    """dy from ``y.sum().backward()`` is an expanded tensor (all strides 0) and a slice of a
    wider gradient is strided: the backward kernels read both where they are."""
    name, kwargs = case
    ref = _perturb(adaptact.create(name, channels=6, backend="reference", **kwargs)).eval().to(DEVICE)
    fused = copy.deepcopy(ref)
    fused.backend = backend
    x = random_input((3, 6, 5, 4)).to(DEVICE)
    wide = torch.randn(3, 6, 5, 8, device=DEVICE)
    for dy in (torch.ones(()).expand(3, 6, 5, 4).to(DEVICE), wide[..., ::2]):
        _, dx_ref, grads_ref = _run(ref, x, dy)
        _, dx, grads = _run(fused, x, dy)
        assert _rel(dx, dx_ref) < 1e-5
        scale = _gradient_scale(ref, x, dy)  # parameter gradients are sums that may cancel
        for n, g in grads_ref.items():
            assert float((grads[n] - g).abs().max() / scale[n].max().clamp_min(1e-12)) < 1e-5, n


@pytest.mark.parametrize("case", CASES + [("frelu", {})], ids=IDS + ["frelu"])
def test_torch_func_transforms_run_the_reference_under_auto(case):
    """torch.func.grad and vmap (per-sample gradients, batched evaluation) of a module with
    backend="auto" give the reference's numbers: our Functions compute first-order gradients only
    and have no batching rules, so the plain composition runs there. (Eval mode: torch.func refuses
    BatchNorm's in-place running-statistics update in training, as for any torch model.)"""
    name, kwargs = case
    torch.manual_seed(0)
    m = adaptact.create(name, channels=6, **kwargs).eval()
    ref = copy.deepcopy(m)
    ref.backend = "reference"
    x = torch.randn(4, 6, 5, 5)
    grad = torch.func.grad(lambda t: (m(t) ** 2).sum())(x)
    xr = x.clone().requires_grad_()
    (ref(xr) ** 2).sum().backward()
    torch.testing.assert_close(grad, xr.grad, rtol=1e-5, atol=1e-6)
    xs = torch.randn(3, 4, 6, 5, 5)
    torch.testing.assert_close(torch.vmap(m)(xs), torch.stack([ref(x) for x in xs]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["arelu", "meta_acon_c", "aprelu", "dy_relu_b"])
def test_torch_func_over_parameters_or_other_tensors_runs_the_reference_under_auto(name, monkeypatch):
    """The transform sees our tensors only through the parameters (jacrev of a functional_call:
    the input is a plain tensor), or not at all (a gradient of a later layer only, the last-layer
    Laplace and linearised-network recipes): "auto" runs the reference in the first; in the
    second our Functions on plain tensors, or the reference where torch refuses a Function under
    the transform; the numbers are the reference's and compiling stays on."""
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")  # the default as it ships
    torch.manual_seed(0)
    m = _perturb(adaptact.create(name, channels=6).eval())
    ref = copy.deepcopy(m)
    ref.backend = "reference"
    x = torch.randn(4, 6, 5, 5)
    params = dict(m.named_parameters())
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(m, p, (x,)))(params)
    assert m.ran_backend == "reference"
    ref_jac = torch.func.jacrev(lambda p: torch.func.functional_call(ref, p, (x,)))(params)
    for n in params:
        torch.testing.assert_close(jac[n], ref_jac[n], rtol=1e-5, atol=1e-6)
    head = torch.randn(6)

    def loss(w):
        return (m(x).mean((2, 3)) @ w).square().sum()

    features = ref(x).mean((2, 3))
    torch.testing.assert_close(torch.func.grad(loss)(head), 2 * features.T @ (features @ head))
    assert CP.available()  # where dynamo refuses to trace under the transform, that call runs eagerly


@pytest.mark.parametrize("backend", ["autograd", "compiled"])
def test_a_lean_backend_named_under_a_torch_func_transform_is_refused_clearly(backend):
    m = adaptact.AconC(6, backend=backend)
    with pytest.raises(RuntimeError, match=f"backend='{backend}' cannot run under torch.func transforms"):
        torch.vmap(m)(torch.randn(3, 4, 6, 5, 5))


def test_the_backend_table_names_every_backend_and_its_implementation():
    from adaptact import functional
    from adaptact.ops import autograd

    assert set(dispatch.IMPLEMENTATIONS) == set(dispatch.BACKENDS) - {"auto"}
    assert dispatch.implementation("reference") is functional
    assert dispatch.implementation("autograd") is autograd and dispatch.implementation("compiled") is CP
    x = torch.randn(2, 3)
    assert dispatch.resolve("auto", x) in dispatch.IMPLEMENTATIONS
