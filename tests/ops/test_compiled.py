"""The compiled CPU path (``backend="auto"`` on the CPU): it equals the reference on every rank,
layout and dtype, keeps only the input for backward, really runs compiled, falls back to the eager
Functions with one warning when compiling fails, and ADAPTACT_COMPILE=0 switches it off."""

import warnings

import pytest
import torch

import adaptact
from adaptact.bench.kernels import saved_bytes
from adaptact.ops import compiled as CP
from adaptact.ops import dispatch

from .test_backends import CASES, IDS, SHAPES, TOL, check_equals_reference

MAIN = [c for c in CASES if c in (("arelu", {}), ("acon_c", {}), ("meta_acon_c", {}), ("aprelu", {}))]
VARIANTS = [c for c in CASES if c not in MAIN]


@pytest.fixture(autouse=True)
def compiling(monkeypatch):
    """Compiling on (the suite turns it off elsewhere); a failure in one test stays in it."""
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    monkeypatch.setattr(CP, "_failure", [])
    yield


@pytest.fixture
def fresh_entries(monkeypatch):
    """No compiled entries yet (compiling again costs seconds; only tests that count them)."""
    monkeypatch.setattr(CP, "_entries", {})


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to eager would fail the test
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", ["rank2", "rank3", "rank4", "rank5"])
@pytest.mark.parametrize("case", MAIN, ids=[IDS[CASES.index(c)] for c in MAIN])
def test_compiled_equals_reference_on_every_rank_and_dtype(case, shape, dtype):
    check_equals_reference(case, "contiguous", SHAPES[shape], dtype, "compiled", training=True)
    assert CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compiled_equals_reference_on_layouts_and_variants(case, layout, training):
    check_equals_reference(case, layout, SHAPES["rank4"], torch.float32, "compiled", training)
    if layout == "contiguous" or case in VARIANTS:
        check_equals_reference(case, "contiguous", SHAPES["n1"], torch.bfloat16, "compiled", training)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_auto_runs_compiled_code_and_keeps_the_layout(monkeypatch):
    m = adaptact.AconC(6)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    keys, real = [], CP._compiled
    monkeypatch.setattr(CP, "_compiled", lambda *key: keys.append(key) or real(*key))
    y = m(x)
    fn, kind = keys[0]
    assert fn is CP._acon_c_traced  # its parameters viewed against x in the graph
    assert kind[0] is True  # grad mode
    assert kind[1][:3] == (torch.float32, (0, 2, 1), (False, False, False))  # x as (N, C, S)
    entry = real(*keys[0])
    assert entry is real(*keys[0])  # compiled once per process and kind of input
    assert len(entry.variants) == 1 and entry.jit is None  # ahead of time, called directly
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert dispatch.resolve("auto", x) == "compiled"


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", MAIN + [("dy_relu_b", {})],
                         ids=[IDS[CASES.index(c)] for c in MAIN] + ["dy_relu_b"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_compiled_saves_only_the_input(case, dtype):
    """What Inductor's partitioner keeps is its choice: it kept a bool mask of DY-ReLU's winning
    piece beside x (a quarter of x in float32) until the forward stopped computing one."""
    name, kwargs = case
    x = torch.randn(8, 32, 24, 24, dtype=dtype, requires_grad=True)
    m = adaptact.create(name, channels=32, **kwargs).train()
    assert saved_bytes(m, x) <= x.nbytes + 64 * 1024


def _variants() -> int:
    return sum(len(entry.variants) for entry in CP._entries.values())


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_shapes_change_without_compiling_again(fresh_entries):
    m = adaptact.AReLU()
    for _ in range(2):
        x = torch.randn(3, 5, 7, 2, requires_grad=True)
        m(x).sum().backward()
    variants = _variants()
    for shape in [(4, 9, 3, 3), (2, 3, 11, 5), (6, 4, 2, 2)]:  # other sizes, one kind
        x = torch.randn(shape, requires_grad=True)
        m(x).sum().backward()
    assert _variants() == variants
    # other ranks share the entry of the (N, C, S) view; dynamo guarded the base of the first (a
    # 4-D x), so a 3-D x, no view, gets a variant of its own, whose guards then take any rank
    for shape in [(2, 3, 11), (5, 2, 7), (6, 4, 2, 2, 2), (2, 3, 2, 2, 5)]:
        x = torch.randn(shape, requires_grad=True)
        m(x).sum().backward()
    assert _variants() == variants + 1


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_what_guards_refuse_gets_a_variant_of_its_own(fresh_entries):
    """The entries run without dynamo's frame evaluation, but not without its guards: a BatchNorm
    eps of another value (a constant in the graph, not part of our key) must not reuse the graph."""
    ms = [adaptact.MetaAconC(8).train() for _ in range(2)]
    ms[1].bn1.eps = 0.25
    for m in ms:
        x = torch.randn(4, 8, 3, 3, requires_grad=True)
        ref = adaptact.MetaAconC(8, backend="reference").train()
        ref.load_state_dict(m.state_dict())
        ref.bn1.eps = m.bn1.eps
        xr = x.detach().clone().requires_grad_()
        torch.testing.assert_close(m(x), ref(xr), rtol=1e-5, atol=1e-6)
    (entry,) = [e for (fn, _), e in CP._entries.items() if fn is dispatch._meta_acon_c]
    assert len(entry.variants) == 2


def test_inputs_beyond_the_variants_run_eagerly_and_without_ahead_of_time_torch_compile_runs(
        monkeypatch, fresh_entries):
    monkeypatch.setattr(CP, "VARIANTS", 1)
    m = adaptact.AReLU()
    eager = adaptact.AReLU(backend="autograd")
    x = torch.randn(3, 5, 7, 2, requires_grad=True)  # a view of a 4-D x, then a 3-D x: two variants wanted
    torch.testing.assert_close(m(x), eager(x), rtol=1e-6, atol=1e-6)
    x = torch.randn(3, 5, 7, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="has 1 compiled variants and met an input that fits none"):
        torch.testing.assert_close(m(x), eager(x), rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # once
        m(x)
    (entry,) = CP._entries.values()
    assert len(entry.variants) == 1 and entry.jit is None and CP.available()

    CP._entries.clear()
    monkeypatch.setattr(CP._Entry, "_ahead_of_time", lambda self, args: 1 / 0)
    x = torch.randn(3, 5, 7, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        torch.testing.assert_close(m(x), eager(x), rtol=1e-6, atol=1e-6)
    (entry,) = CP._entries.values()
    assert not entry.variants and entry.jit is not None and CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name, kwargs", [("meta_acon_c", {"r": 4}), ("aprelu", {}),
                                          ("aprelu", {"alpha": "sample"}), ("dy_relu_b", {}), ("acon_c", {})],
                         ids=["meta_acon_c", "aprelu", "aprelu_sample", "dy_relu_b", "acon_c"])
def test_generators_of_every_width_share_one_compiled_graph(name, kwargs):
    """Pooling, generator and activation compile as one graph whose generator sizes are symbolic:
    a network's many widths (more than dynamo's recompile limit of 8) compile once per training
    mode, not once per width, which would also end compiling for the process at the limit. The
    same for ACON-C's (C,) parameters (its ninth width ended compiling, before they were symbolic)."""
    def step(channels: int, training: bool) -> None:
        m = adaptact.create(name, channels=channels, **kwargs).train(training)
        x = torch.randn(3, channels, 6, 7, requires_grad=True)
        m(x).sum().backward()

    for training in (True, False):
        step(20, training)
    variants = _variants()
    # widths whose generator has no size of 1 (dynamo specialises those), reductions of at most 4096
    # elements (Inductor's C++ code sums longer ones another way: one graph more)
    for channels in (9, 10, 12, 17, 24, 33, 40, 64, 96):
        for training in (True, False):
            step(channels, training)
    assert _variants() == variants
    assert CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_new_generator_function_each_call_is_not_a_new_compiled_entry():
    m = adaptact.MetaAconC(6).train()
    x = torch.randn(4, 6, 3, 3, requires_grad=True)
    entries = []
    for _ in range(3):
        generate = lambda mean: m.beta_from_mean(mean)  # noqa: E731  (a new function object each call)
        y = dispatch.meta_acon_c(x, m.p1, m.p2, generate, m._weights, torch.float32)
        y.sum().backward()
        entries.append(len(CP._entries))
    assert entries[0] == entries[1] == entries[2]


def test_a_failing_compiler_falls_back_once_with_one_warning(monkeypatch):
    def broken(fn, kind):
        def call(*args):
            raise RuntimeError("InductorError: no C++ compiler found")
        return call

    monkeypatch.setattr(CP, "_compiled", broken)
    m = adaptact.AconC(4)
    x = torch.randn(3, 4, 5, requires_grad=True)
    failed = r"compiling the CPU activation kernels failed .* no C\+\+ compiler"
    with pytest.warns(RuntimeWarning, match=failed):
        y = m(x)
    eager = adaptact.AconC(4, backend="autograd")
    eager.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, eager(x), rtol=0, atol=0)
    assert not CP.available() and dispatch.resolve("auto", x) == "autograd"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: eager from now on
        m(x).sum().backward()


def test_a_genuine_error_is_raised_not_taken_for_a_compiler_failure(monkeypatch):
    calls = []

    def compiled(fn, kind):
        def call(*args):
            calls.append(fn)
            return fn(*args)
        return call

    monkeypatch.setattr(CP, "_compiled", compiled)
    x = torch.randn(3, 4, 5)
    with pytest.raises(RuntimeError):
        CP.acon_c(x, torch.ones(1, 5, 1), torch.ones(1, 5, 1), torch.ones(1, 5, 1))  # 5 channels, x has 4
    assert calls and CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_genuine_error_leaves_the_entry_compiling_ahead_of_time(fresh_entries):
    x = torch.randn(3, 4, 5)
    with pytest.raises(RuntimeError):
        CP.acon_c(x, torch.ones(1, 5, 1), torch.ones(1, 5, 1), torch.ones(1, 5, 1))  # 5 channels, x has 4
    (entry,) = CP._entries.values()
    assert entry.jit is None and not entry.variants
    ones = torch.ones(1, 4, 1)
    expected = adaptact.functional.acon_c(x, ones, ones, ones)
    torch.testing.assert_close(CP.acon_c(x, ones, ones, ones), expected)
    assert entry.jit is None and len(entry.variants) == 1


def test_the_environment_switch(monkeypatch):
    monkeypatch.setenv("ADAPTACT_COMPILE", "0")
    monkeypatch.setattr(CP, "_compiled", lambda *a: pytest.fail("compiled with ADAPTACT_COMPILE=0"))
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert not CP.available() and dispatch.resolve("auto", x) == "autograd"
    y = CP.arelu(x, torch.full((1, 1, 1), 0.1), torch.full((1, 1, 1), 1.5))
    y.sum().backward()
    assert y.grad_fn.name() == "AReLUFunctionBackward"  # the eager Function itself


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_under_an_outer_torch_compile_the_eager_function_is_traced():
    m = adaptact.MetaAconC(6)
    x = torch.randn(4, 6, 3, 3)
    outer = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(outer(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", CASES + [("dy_relu_b", {}), ("dy_relu_a", {})],
                         ids=IDS + ["dy_relu_b", "dy_relu_a"])
def test_inference_under_no_grad_runs_compiled(case):
    """Under no_grad autograd records nothing: the compiled forward bodies run (dynamo does not
    trace an autograd Function applied there), with the reference's numbers."""
    name, kwargs = case
    m = adaptact.create(name, channels=6, **kwargs).eval()
    ref = adaptact.create(name, channels=6, backend="reference", **kwargs).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)
        xb = x.bfloat16()  # computed in float32 and rounded once: within bfloat16's rounding of the truth
        torch.testing.assert_close(m(xb).float(), ref(xb.float()), rtol=1e-2, atol=1e-2)
    assert CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_torch_func_transforms_leave_compiling_on():
    m = adaptact.MetaAconC(6).eval()
    ref = adaptact.MetaAconC(6, backend="reference").eval()
    ref.load_state_dict(m.state_dict())
    xs = torch.randn(3, 4, 6, 5, 5)
    torch.testing.assert_close(torch.vmap(m)(xs), torch.stack([ref(x) for x in xs]), rtol=1e-5, atol=1e-6)
    grad = torch.func.grad(lambda t: m(t).sum())(xs[0])
    assert grad.shape == xs[0].shape and CP.available()
