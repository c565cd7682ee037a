"""``adaptact.define``: a defined activation gets what the built-ins get. The registry-wide tests
(every name of ``adaptact.available()``: forward and backward at every rank, dtype and mode, layouts,
state_dict, lazy channels, half inputs, gradcheck, torch.compile, torch.export) run over
``tests.defined`` as over the built-ins; here, the backend matrix the built-ins pass in
tests/ops, what it costs in memory, matching, sharding, the comparison, and the errors."""

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adaptact
from adaptact.cli import main
from adaptact.experiments.store import ResultStore
from adaptact.experiments.sweep import definition_fingerprint
from adaptact.kernel_benchmark import saved_bytes
from adaptact.ops import compiled as CP
from adaptact.parallel.sharding import channel_shards
from tests.conftest import random_input
from tests.defined import NAME, swish_tanh
from tests.ops.test_backends import SHAPES, TOL, TOKEN_SHAPES, check_equals_reference

CASE = (NAME, {})


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_lean_function_equals_the_formula(layout, shape, dtype, training):
    check_equals_reference(CASE, layout, shape, dtype, "autograd", training)


@pytest.mark.parametrize("shape_dtype", TOKEN_SHAPES, ids=[f"{s}-{d}" for s, d in TOKEN_SHAPES])
def test_channels_last_tokens_equal_the_formula(shape_dtype):
    shape, dtype = shape_dtype
    check_equals_reference(CASE, "tokens", SHAPES[shape], dtype, "autograd", training=True)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to eager would fail the test
@pytest.mark.parametrize("layout_shape", [("contiguous", "rank4"), ("channels_last", "rank4"),
                                          ("contiguous", "rank2"), ("tokens", "rank3")])
def test_compiled_equals_the_formula_and_keeps_only_the_input(layout_shape, monkeypatch):
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    monkeypatch.setattr(CP, "_failure", [])
    layout, shape = layout_shape
    check_equals_reference(CASE, layout, SHAPES[shape], torch.float32, "compiled", training=True)
    if layout == "contiguous" and shape == "rank4":
        check_equals_reference(CASE, layout, SHAPES[shape], torch.bfloat16, "compiled", training=True)
        x = torch.randn(8, 32, 12, 12, requires_grad=True)
        m = adaptact.create(NAME, channels=32, backend="compiled")
        assert saved_bytes(m, x) <= x.nbytes + 4096
        assert m.ran_backend == "compiled" and CP.available()


@pytest.mark.parametrize("channel_dim", [1, -1])
def test_the_lean_function_keeps_only_the_input(channel_dim):
    x = torch.randn(8, 32, 12, 12) if channel_dim == 1 else torch.randn(8, 144, 32)
    x.requires_grad_()
    m = adaptact.create(NAME, channels=32, backend="autograd", channel_dim=channel_dim)
    assert saved_bytes(m, x) <= x.nbytes + 4096  # x, and the (C,) parameters
    ref = adaptact.create(NAME, channels=32, backend="reference", channel_dim=channel_dim)
    assert saved_bytes(ref, x) >= 2 * x.nbytes  # autograd through the formula keeps its intermediates


def test_first_order_only_and_triton_refused_clearly():
    m = adaptact.create(NAME, channels=3, backend="autograd").double()
    x = random_input((2, 3, 4), torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(m(x).sum(), x, create_graph=True)
    m.backend = "reference"
    assert torch.autograd.gradgradcheck(m, (x,), eps=1e-6, atol=1e-4)
    with pytest.raises(ValueError, match="no Triton kernel"):
        adaptact.create(NAME, channels=3, backend="triton")(x)


def test_values_parameters_and_initial_values_follow_the_definition():
    m = adaptact.create(NAME, channels=4, p=0.5, gain=2.0)
    assert {n: tuple(p.shape) for n, p in m.named_parameters()} == {"beta": (4,), "p": (4,), "gain": ()}
    x = torch.randn(3, 4, 5)
    beta, p = torch.ones(4, 1), torch.full((4, 1), 0.5)
    torch.testing.assert_close(m(x), swish_tanh(x, beta, p, torch.tensor(2.0)))
    with torch.no_grad():
        m.p.zero_()
    m.reset_parameters()
    assert float(m.p[0]) == 0.5 and "p=0.5, gain=2" in repr(m)
    lazy = adaptact.create(NAME, channel_dim=-1)
    assert not lazy.initialized and lazy(torch.randn(2, 7, 6)).shape == (2, 7, 6) and lazy.channels == 6
    with pytest.raises(TypeError, match="unexpected keyword argument.*alpha.*beta, p, gain"):
        adaptact.create(NAME, channels=4, alpha=1.0)


def test_init_match_fits_the_parameters_to_the_replaced_activation():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    report = adaptact.replace_activations(model, NAME, init="match")
    act = model[1]
    assert type(act).__name__ == "DefinedSwishTanh" and list(report.fits) == ["1"]
    assert report.fits["1"] < 0.05  # x sigmoid(1.7 x) is close to GELU
    x = torch.linspace(-3, 3, 61).reshape(-1, 1).expand(-1, 8)
    torch.testing.assert_close(act(x), torch.nn.functional.gelu(x), atol=0.05, rtol=0)


def test_tensor_parallelism_shards_the_per_channel_parameters():
    assert channel_shards(adaptact.create(NAME, channels=16), 16) == {"beta": 0, "p": 0}


def test_defining_again_replaces_and_built_in_names_are_refused():
    spec = adaptact.define("defined_scaled_tanh", lambda x, a: a * torch.tanh(x), scalars={"a": 2.0})
    assert spec.family == "learnable" and not spec.per_channel
    assert "defined_scaled_tanh" in adaptact.available()
    m = adaptact.create("defined_scaled_tanh")
    assert m(torch.zeros(())).shape == () and m(torch.ones(3)).allclose(2 * torch.tanh(torch.ones(3)))
    adaptact.define("defined_scaled_tanh", lambda x, a: a * torch.tanh(x), scalars={"a": 3.0})
    assert float(adaptact.create("defined_scaled_tanh").a) == 3.0
    with pytest.raises(ValueError, match="built-in activation's name"):
        adaptact.define("acon_c", lambda x: x)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_definition_made_where_gradients_are_off_is_checked_as_anywhere(mode):
    """A module that defines its activation may be imported inside an evaluation block."""
    with mode():
        adaptact.define("defined_without_grad", lambda x, a: a * torch.tanh(x), scalars={"a": 2.0})
        with pytest.raises(ValueError, match="does not depend differentiably"):
            adaptact.define("defined_without_grad_bad", lambda x: torch.zeros_like(x))
    m = adaptact.create("defined_without_grad")
    x = torch.randn(3, requires_grad=True)
    m(x).sum().backward()
    torch.testing.assert_close(x.grad, 2 * (1 - torch.tanh(x.detach()) ** 2))


@pytest.mark.parametrize("args, kwargs, message", [
    (("", lambda x: x), {}, "non-empty str"),
    (("two words", lambda x: x), {}, "letters, digits and underscores"),
    (("bad_params", lambda x, a: x), {"scalars": {"a": float("nan")}}, "finite number"),
    (("bad_params", lambda x, a: x), {"scalars": {"x": 1.0}}, "identifiers other than 'x'"),
    (("bad_params", lambda x, a: x), {"scalars": {"a": 1.0}, "per_channel": {"a": 1.0}}, "both"),
    (("bad_params", lambda x, _a: x), {"scalars": {"_a": 1.0}}, "not starting with '_'"),
    # a name the module holds already: registered, it would shadow nn.Module's state or adaptact's
    # (before: 'channels' silently replaced the module's channel count; 'training' a bare KeyError)
    *[(("bad_params", lambda x, **p: x), {where: {name: 1.0}}, f"{name!r} is a name the activation's module")
      for name, where in [("training", "scalars"), ("channels", "per_channel"), ("channel_dim", "scalars"),
                          ("forward", "per_channel"), ("backend", "scalars"), ("cuda", "scalars")]],
    (("bad_formula", lambda x, b: x * b), {"scalars": {"a": 1.0}}, "failed on a"),
    (("bad_formula", lambda x: x.mean(1)), {}, "tensor of x's shape"),
    (("bad_formula", lambda x: torch.zeros_like(x)), {}, "does not depend differentiably"),
    (("bad_family", lambda x: x * 2), {"family": "odd"}, "family must be"),
])
def test_bad_definitions_are_one_line_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        adaptact.define(*args, **kwargs)
    assert "\n" not in str(info.value) and args[0] not in adaptact.available()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "2", None])
def test_initial_values_given_to_the_module_are_finite_numbers(value):
    """``create(name, beta=...)`` checks the value as ``define`` does (before: NaN and True taken)."""
    with pytest.raises(ValueError, match="the initial value of 'beta' must be a finite number") as info:
        adaptact.create(NAME, channels=3, beta=value)
    assert "\n" not in str(info.value)


def test_the_comparison_runs_a_defined_activation_by_module_name_in_spawned_workers(tmp_path, capsys):
    """From the CLI, ``module:name`` imports the module that defines it; two spawned workers import it
    too, and the run's key carries the definition's fingerprint."""
    argv = ["compare", "--model", "tests.experiments.user_defs:net",
            "--dataset", "tests.experiments.user_defs:blobs",
            "--activations", f"relu,tests.defined:{NAME}", "--optimizers", "adam", "--lrs", "0.01",
            "--seeds", "1", "--epochs", "2", "--workers", "2", "--db", str(tmp_path / "r.sqlite"),
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = store.rows()
    assert {r["activation"]: r["status"] for r in rows} == {"relu": "ok", f"tests.defined:{NAME}": "ok"}
    assert f"tests.defined:{NAME}" in (tmp_path / "out" / "report.md").read_text()
    assert definition_fingerprint(f"tests.defined:{NAME}") == adaptact.spec(NAME).definition.fingerprint()
    capsys.readouterr()
    at = argv.index("--activations") + 1
    assert main(argv[:at] + ["tests.nowhere:thing"] + argv[at + 1:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be imported" in err


def test_a_definition_in_main_needs_one_worker(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(
        "import torch, adaptact\n"
        "adaptact.define('mine', lambda x, a: x * torch.sigmoid(a * x), scalars={'a': 1.0})\n"
        "from tests.experiments import user_defs\n"
        "args = dict(activations=('mine',), lrs=(0.05,), seeds=1, epochs=1,\n"
        f"            db={str(tmp_path / 'r.sqlite')!r}, out={str(tmp_path / 'out')!r}, progress=False)\n"
        "try:\n"
        "    adaptact.compare(user_defs.net, user_defs.blobs(), workers=2, **args)\n"
        "except Exception as err:\n"
        "    print('refused:', err)\n"
        "rows = adaptact.compare(user_defs.net, user_defs.blobs(), workers=1, **args)\n"
        "print([(r['activation'], r['status']) for r in rows])\n")
    root = str(Path(__file__).parents[1])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=root,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    assert "refused: activation 'mine' is defined in the script being run" in out.stdout
    assert "[('mine', 'ok')]" in out.stdout


def test_a_defined_activation_pickles_and_deep_copies_as_the_definition_it_was_made_from():
    adaptact.define("defined_pickled", lambda x, a: a * torch.tanh(x), per_channel={"a": 2.0})
    old = adaptact.create("defined_pickled", channels=3)
    adaptact.define("defined_pickled", lambda x, a: a * torch.sigmoid(x), per_channel={"a": 2.0})
    new = adaptact.create("defined_pickled", channels=3)
    x = torch.randn(2, 3)
    for module, formula in ((old, torch.tanh), (new, torch.sigmoid)):
        with torch.no_grad():
            module.a.uniform_(0.5, 1.5)
        for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert type(copied) is type(module)
            torch.testing.assert_close(copied(x), module.a * formula(x), rtol=0, atol=0)


def test_unpickling_a_definition_whose_module_fails_to_import_is_one_line(monkeypatch):
    from adaptact.nn import defined

    def fn(x, a):
        return a * x

    fn.__module__ = "tests.no_such_module"  # where it says it was defined
    adaptact.define("defined_elsewhere", fn, scalars={"a": 1.0})
    saved = pickle.dumps(adaptact.create("defined_elsewhere"))
    monkeypatch.setattr(defined, "_CLASSES", {})  # a process that has not defined it
    expected = (r"'defined_elsewhere' activation \(adaptact.define in module 'tests.no_such_module'\) "
                r"cannot be imported here \(ModuleNotFoundError: No module named")
    with pytest.raises(pickle.UnpicklingError, match=expected):
        pickle.loads(saved)


def test_a_whole_model_saved_with_torch_save_loads_in_a_fresh_process(tmp_path):
    """torch.save(model) pickles its classes by name, which a class made by ``define`` has not: the
    process that loads it finds the definition by name and fingerprint, importing the module that
    made it; a definition it cannot find (a script's) is a one-line error, never another formula."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), adaptact.create(NAME, channel_dim=-1))
    x = torch.randn(3, 4)
    model(x)  # lazy channels
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save({"model": model, "x": x, "y": model(x).detach()}, tmp_path / "model.pt")
    (tmp_path / "script.py").write_text(
        "import torch, adaptact\n"
        "adaptact.define('defined_in_a_script', lambda x, a: a * x, scalars={'a': 1.0})\n"
        f"torch.save(adaptact.create('defined_in_a_script'), {str(tmp_path / 'script.pt')!r})\n")
    load = ("import torch\n"
            f"saved = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)\n"
            "print('equal', torch.equal(saved['model'](saved['x']), saved['y']))\n"
            "try:\n"
            f"    torch.load({str(tmp_path / 'script.pt')!r}, weights_only=False)\n"
            "except Exception as err:\n"
            "    print(type(err).__name__, err)\n")
    root = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    for argv in ([str(tmp_path / "script.py")], ["-c", load]):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "equal True"
    assert lines[1:] == ["UnpicklingError a pickled 'defined_in_a_script' activation (adaptact.define in "
                         "the script that saved it) is not defined in this process: run its definition "
                         "before loading"]


def test_a_hugging_face_model_converted_to_a_defined_activation_saves_and_reloads(tmp_path):
    """Defined after transformers is imported, the name still reaches ACT2FN: from_pretrained builds
    the converted model with its trained parameters, never the original activation."""
    pytest.importorskip("transformers")
    import transformers.activations  # loaded before the definition

    from tests.test_huggingface import llama

    adaptact.define("defined_late_gate", lambda x, a: x * torch.sigmoid(a * x), per_channel={"a": 1.5})
    torch.manual_seed(0)
    model = llama()
    adaptact.replace_activations(model, "defined_late_gate")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    acts = [type(m).__name__ for m in loaded.modules() if isinstance(m, adaptact.nn.ActivationModule)]
    assert acts == ["DefinedLateGate"] * 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = torch.randint(3, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)


def test_a_fresh_process_loads_a_model_converted_to_a_defined_activation(tmp_path):
    """from_pretrained in a process that has not defined the activation: the conversion record names
    the module that defined it, which is imported (defining it), so the model loads as saved; a
    definition made in a script (no module to import) is a one-line error saying what to run."""
    pytest.importorskip("transformers")
    import json

    from tests.test_huggingface import llama

    torch.manual_seed(0)
    model = llama().eval()
    adaptact.replace_activations(model, NAME)
    assert model.config.adaptact["defined_in"] == "tests.defined"
    model.save_pretrained(tmp_path / "module")
    ids = torch.randint(3, 64, (2, 7))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    model.save_pretrained(tmp_path / "script")
    config = json.loads((tmp_path / "script" / "config.json").read_text())
    config["adaptact"]["defined_in"] = None  # as a conversion in a script records it
    (tmp_path / "script" / "config.json").write_text(json.dumps(config))
    load = ("import sys, torch, transformers, adaptact\n"
            "try:\n"  # first: nothing has defined it in this process yet
            f"    transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'script')!r})\n"
            "except RuntimeError as err:\n"
            "    print('refused:', err)\n"
            f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
            f"model = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'module')!r})\n"
            "model.eval()\n"
            "with torch.no_grad():\n"
            "    print('equal', torch.equal(model(expected['ids']).logits, expected['logits']))\n")
    root = str(Path(__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, (out.stdout, out.stderr)
    assert lines[0] == (f"refused: this model's activation {NAME!r} was defined with adaptact.define in "
                        "the script that converted the model, which has not defined it in this process: "
                        "make its definition run before loading")
    assert lines[1] == "equal True"
