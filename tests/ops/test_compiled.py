"""The compiled CPU path (``backend="auto"`` on the CPU): it equals the reference on every rank,
layout and dtype, keeps only the input for backward, really runs compiled, falls back to the eager
Functions with one warning when compiling fails, and ADAPTACT_COMPILE=0 switches it off."""

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import adaptact
from adaptact.kernel_benchmark import saved_bytes
from adaptact.nn.base import COMPILE_AFTER_CALLS
from adaptact.ops import compiled as CP
from adaptact.nn.model_call import CALL, ModelCall
from adaptact.nn.running import Prefix
from adaptact.ops import dispatch

from .test_backends import CASES, IDS, POSITION_CASES, POSITION_IDS, SHAPES, TOL, check_equals_reference

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


TOKEN_CASES = [c for c, i in zip(CASES, IDS)
               if i not in ("acon_a", "acon_b", "meta_acon_c-none", "dy_relu_a")]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", TOKEN_CASES, ids=[IDS[CASES.index(c)] for c in TOKEN_CASES])
def test_compiled_equals_reference_on_transformer_tokens(case):
    """(B, T, C) with channel_dim=-1: the channels-first view has unit channel stride (rank 4
    channels last has the strides of the channels_last layout above)."""
    check_equals_reference(case, "tokens", SHAPES["rank3"], torch.float32, "compiled", training=True)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", POSITION_CASES, ids=POSITION_IDS)
def test_compiled_equals_reference_with_per_position_coefficients(case):
    check_equals_reference(case, "tokens", SHAPES["rank3"], torch.float32, "compiled", training=True)
    if case == POSITION_CASES[0]:  # low precision: the same graphs with casts (seconds of compiling each)
        check_equals_reference(case, "tokens", SHAPES["rank3"], torch.bfloat16, "compiled", training=False)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name, function", [("meta_acon_c", "acon_c"), ("aprelu", "aprelu"),
                                            ("dy_relu_b", "dy_relu")])
def test_auto_compiles_per_position_coefficients_of_tokens_only(monkeypatch, name, function):
    """Causal tokens (B, T, C): generator and activation compile as one graph; while decoding with a
    cache (the generator carries its prefix between calls) the generator runs eagerly and the
    activation's compiled Function takes (B*T, C) rows. Channels-first (B, C, T) has no such view
    and runs (and reports) the eager autograd Function."""
    keys, real = [], CP._compiled
    monkeypatch.setattr(CP, "_compiled", lambda *key: keys.append(key) or real(*key))
    tokens = adaptact.create(name, channels=6, channel_dim=-1, context="causal")
    x = torch.randn(2, 5, 6, requires_grad=True)
    tokens(x).sum().backward()  # the first call of a kind of input: eager, nothing compiled
    assert not keys and tokens.ran_backend == "autograd"
    tokens(x).sum().backward()
    (fn, kind), = keys
    assert fn is CP._channels_last and dispatch._generated_then.__code__ in kind
    assert tokens.ran_backend == "compiled"
    keys.clear()
    tokens.__dict__[CALL] = (ModelCall(0, Prefix(), None), "act")  # track_decoding's, for a cached call
    tokens(x).sum().backward()
    (fn, kind), = keys
    assert fn is getattr(adaptact.ops.autograd, function) and kind[1] == 2  # rank 2: (B*T, C) rows
    keys.clear()
    first = adaptact.create(name, channels=6, context="causal")
    for _ in range(2):
        first(torch.randn(2, 6, 5, requires_grad=True)).sum().backward()
    assert not keys and first.ran_backend == "autograd"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_auto_runs_compiled_code_and_keeps_the_layout(monkeypatch):
    m = adaptact.AconC(6)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    keys, real = [], CP._compiled
    monkeypatch.setattr(CP, "_compiled", lambda *key: keys.append(key) or real(*key))
    first = m(x)  # a module's first call of a kind of input runs the eager lean Function
    assert not keys and m.ran_backend == "autograd"
    first.sum().backward()  # (with gradients the compiled entry takes over once backward reached it)
    y = m(x)
    assert m.ran_backend == "compiled" and torch.allclose(y, first, rtol=1e-6, atol=1e-6)
    fn, kind = keys[0]
    assert fn is dispatch.acon_c.traced  # its parameters viewed against x in the graph
    assert kind[:3] == (True, 4, (torch.float32, (0, 1), True))  # grad mode, rank, x as (N*H*W, C) rows
    entry = real(*keys[0])
    assert entry is real(*keys[0])  # compiled once per process and kind of input
    assert entry.ready  # compiled by its first call
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert dispatch.resolve("auto", x) == "compiled"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_gradient_checkpointing_recomputes_a_first_call_as_it_ran(monkeypatch):
    """A kind of input's first call runs the lean Function, which saves other tensors than the
    compiled entry; torch's checkpoint recomputes the call in backward and checks that it saves the
    same: so the compiled entry takes over only once backward has reached the first call (before,
    the first step raised a CheckpointError), or, with gradients and no backward, at the
    ``COMPILE_AFTER_CALLS``-th call."""
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    monkeypatch.setattr(CP, "_failure", [])
    torch.manual_seed(0)
    act = adaptact.create("acon_c", channels=16, channel_dim=-1)
    block = torch.nn.Sequential(torch.nn.Linear(8, 16), act, torch.nn.Linear(16, 4))
    plain = copy.deepcopy(block)
    plain[1].backend = "autograd"
    x = torch.randn(5, 8)
    for step, ran in enumerate(["autograd", "compiled"]):  # (the recomputation is the last call)
        torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).square().sum().backward()
        plain(x).square().sum().backward()
        assert block[1].ran_backend == ran, step
        for p, q in zip(plain.parameters(), block.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)
    m = adaptact.create("acon_c", channels=16, channel_dim=-1)
    ran = [(m(torch.randn(5, 16)), m.ran_backend)[1] for _ in range(COMPILE_AFTER_CALLS)]
    assert ran == ["autograd"] * (COMPILE_AFTER_CALLS - 1) + ["compiled"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", MAIN + [("dy_relu_b", {})],
                         ids=[IDS[CASES.index(c)] for c in MAIN] + ["dy_relu_b"])
@pytest.mark.parametrize("dtype, channel_dim", [(torch.bfloat16, 1), (torch.float32, 1), (torch.float32, -1)],
                         ids=["channels_first-bf16", "channels_first-fp32", "tokens-fp32"])
def test_compiled_saves_only_the_input(case, dtype, channel_dim):
    """What Inductor's partitioner keeps is its choice: it kept a bool mask of DY-ReLU's winning
    piece beside x (a quarter of x in float32) until the forward stopped computing one, and an
    x-sized intermediate of Meta-ACON-C on tokens until the channels-last composites."""
    name, kwargs = case
    shape = (8, 32, 24, 24) if channel_dim == 1 else (8, 96, 32)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    m = adaptact.create(name, channels=32, channel_dim=channel_dim, **kwargs).train()
    m(x).sum().backward()  # a first call of a kind of input runs eagerly: compiled after its backward
    assert saved_bytes(m, x) <= x.nbytes + 64 * 1024
    assert m.ran_backend == "compiled"


def _graphs() -> int:
    """Graphs dynamo has compiled in this process (its counters: tests may read torch's internals)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_shapes_change_without_compiling_again(fresh_entries):
    m = adaptact.AReLU()
    for _ in range(2):
        x = torch.randn(3, 5, 7, 2, requires_grad=True)
        m(x).sum().backward()
    graphs, entries = _graphs(), len(CP._entries)
    # other sizes of one kind (no size of 1, no two sizes of x as (N, C, S) equal)
    for shape in [(4, 9, 3, 2), (2, 3, 11, 5), (6, 4, 2, 5)]:
        x = torch.randn(shape, requires_grad=True)
        m(x).sum().backward()
    assert (_graphs(), len(CP._entries)) == (graphs, entries)
    # another rank is another kind (dynamo guards the base of the (N, C, S) view): one entry and
    # one graph each, which then take every size of that rank
    for shapes in ([(2, 3, 11), (5, 2, 7), (3, 8, 5)], [(6, 4, 2, 3, 2), (2, 3, 5, 2, 7)]):
        for shape in shapes:
            x = torch.randn(shape, requires_grad=True)
            m(x).sum().backward()
        graphs, entries = graphs + 1, entries + 1
        assert (_graphs(), len(CP._entries)) == (graphs, entries)
    assert CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_what_guards_refuse_is_compiled_again():
    """A BatchNorm eps of another value (a constant in the graph, not part of our key) must not
    reuse the graph: dynamo's guards run on every call."""
    ms = [adaptact.MetaAconC(8).train() for _ in range(2)]
    ms[1].bn1.eps = 0.25
    for m in ms:
        x = torch.randn(4, 8, 3, 3, requires_grad=True)
        ref = adaptact.MetaAconC(8, backend="reference").train()
        ref.load_state_dict(m.state_dict())
        ref.bn1.eps = m.bn1.eps
        xr = x.detach().clone().requires_grad_()
        torch.testing.assert_close(m(x), ref(xr), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name, kwargs", [("meta_acon_c", {"reduction": 4}), ("aprelu", {}),
                                          ("aprelu", {"granularity": "layer"}), ("dy_relu_b", {}),
                                          ("acon_c", {})],
                         ids=["meta_acon_c", "aprelu", "aprelu_sample", "dy_relu_b", "acon_c"])
def test_generators_of_every_width_share_one_compiled_graph(name, kwargs):
    """Pooling, generator and activation compile as one graph whose sizes are all symbolic,
    parameters' included: a network's many widths (more than dynamo's recompile limit of 8)
    compile once per training mode, not once per width (each width a graph, the ninth would fall
    back to eager). The same for ACON-C's (C,) parameters."""
    def step(channels: int, training: bool) -> None:
        m = adaptact.create(name, channels=channels, **kwargs).train(training)
        x = torch.randn(5, channels, 19, requires_grad=True)
        m(x).sum().backward()

    for training in (True, False):
        step(36, training)
    graphs, entries = _graphs(), len(CP._entries)
    # widths whose generators have no size of 1 and none equal to another size of the call (those
    # are other kinds of input), reductions of at most 4096 elements (Inductor's C++ code sums
    # longer ones another way: one graph more)
    for channels in (9, 10, 11, 14, 17, 24, 33, 40, 64):
        for training in (True, False):
            step(channels, training)
    assert (_graphs(), len(CP._entries)) == (graphs, entries)
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
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x).sum().backward()  # a module's first call of a kind of input runs eagerly: nothing compiled yet
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
        CP.lean("acon_c")(x, *(torch.ones(1, 5, 1),) * 3)  # 5 channels, x has 4
    assert calls and CP.available()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_genuine_error_leaves_compiling_on(fresh_entries):
    x = torch.randn(3, 4, 5)
    with pytest.raises(RuntimeError):
        CP.lean("acon_c")(x, *(torch.ones(1, 5, 1),) * 3)  # 5 channels, x has 4
    (entry,) = CP._entries.values()
    assert not entry.ready
    ones = torch.ones(1, 4, 1)
    expected = adaptact.functional.acon_c(x, ones, ones, ones)
    torch.testing.assert_close(CP.lean("acon_c")(x, ones, ones, ones), expected)
    assert [e.ready for e in CP._entries.values()] == [False, True] and CP.available()


def test_the_environment_switch(monkeypatch):
    monkeypatch.setenv("ADAPTACT_COMPILE", "0")
    monkeypatch.setattr(CP, "_compiled", lambda *a: pytest.fail("compiled with ADAPTACT_COMPILE=0"))
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert not CP.available() and dispatch.resolve("auto", x) == "autograd"
    y = CP.lean("arelu")(x, torch.full((1, 1, 1), 0.1), torch.full((1, 1, 1), 1.5))
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


CHILD = Path(__file__).with_name("compiled_child.py")
# What each process runs (activation:input, COMBOS in compiled_child.py: 0 (N, C, H, W) with
# gradients, 1 the same without, 2 (N, C) with gradients): each starts with AReLU's training
# graph in its own dtype (the same function and arity, another graph: what collided), and every
# compiled function (ACON-A/B/C share ACON-C's, DY-ReLU-A/B theirs) runs in some process. Two
# dtypes are enough for a collision (float16 takes bfloat16's code path: tested in-process above).
PROCESSES = [("float32", "arelu:0,acon_c:2,meta_acon_c:0,meta_acon_c_pixel:0"),
             ("bfloat16", "arelu:0,aprelu:2,dy_relu_b:0,meta_acon_c:1,acon_c:1")]


def _children(cache, processes):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "ADAPTACT_COMPILE": "1"}
    for dtype, run in processes:
        done = subprocess.run([sys.executable, str(CHILD), dtype, run], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and f"ok torch.{dtype}" in done.stdout, (dtype, run, done.stderr[-3000:])


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_fresh_seeded_processes_sharing_a_cache_get_the_reference_numbers(tmp_path):
    """The default path in fresh processes that each seed Python's ``random`` (the same stream in
    every process) and share one Inductor cache, cold then warm: float32 and bfloat16 in turn,
    with and without gradients, (N, C) and (N, C, H, W), activations of other arities:
    every output and gradient in the input's dtype and within tolerance of the reference, no
    fallback. (torch's ahead-of-time mode keyed graphs it cannot hash by a ``random.random()``
    nonce, equal in such processes: the second process ran the first one's float32 code.)"""
    cache = tmp_path / "inductor"
    _children(cache, PROCESSES)  # cold
    _children(cache, PROCESSES[:1])  # warm: what the first process wrote


def test_a_long_compile_says_once_what_it_does(monkeypatch, caplog):
    """A compile still running after COMPILE_NOTICE_S logs one line naming what it compiles and
    how to skip it; later compiles in the process say nothing more."""
    monkeypatch.setattr(CP, "COMPILE_NOTICE_S", 0.0)
    monkeypatch.setattr(CP, "_said", [])

    def shifted_sine(x):
        return torch.sin(x) + 1.0

    def scaled_cosine(x):
        return torch.cos(x) * 2.0

    with caplog.at_level("WARNING", logger="adaptact"):
        for fn in (shifted_sine, scaled_cosine):
            entry = CP._Entry(fn)
            x = torch.randn(5)
            assert torch.allclose(entry(x), fn(x)) and entry.ready
    said = [r.getMessage() for r in caplog.records if r.name == "adaptact"]
    assert len(said) == 1 and "compiling" in said[0] and "shifted_sine" in said[0]
    assert "ADAPTACT_COMPILE=0" in said[0]
