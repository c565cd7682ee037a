"""The comparison on the user's own network and data: through the Python API and the CLI's
module:attribute specs, with one and two workers; keys follow the user's code; failures are
stored and reported while the sweep goes on."""

import importlib
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import adaptact
from adaptact.experiments.cells import aggregate
from adaptact.errors import UserError
from adaptact.experiments.sources import data_source, model_source
from adaptact.experiments.store import ResultStore
from adaptact.experiments.sweep import expand
from adaptact.cli import main
from tests.experiments import user_defs


def _cells(md: str, title: str) -> dict[tuple[str, str], str]:
    """(activation, column) -> "mean ± std" of the table under ``title``."""
    table = md.split(title)[1].split("###")[0]
    head = table.split("| activation |")[1].splitlines()[0]
    header = [h.strip() for h in head.split("|") if h.strip()]
    cells = {}
    for line in table.splitlines():
        m = re.match(r"\| (\w+) \| (.*) \|$", line)
        if m and m.group(1) != "activation":
            for col, cell in zip(header, m.group(2).split(" | ")):
                cells[(m.group(1), col)] = re.match(r"\**([\d.]+ ± [\d.]+)", cell).group(1)
    return cells


def _check_report_equals_db(rows, out):
    md = (out / "report.md").read_text()
    stats = aggregate(rows, "best_acc")
    cells = _cells(md, "### Test accuracy at the epoch with the best validation accuracy")
    assert len(cells) == len(stats)
    for (a, o, lr), (mean, std, _) in stats.items():
        assert cells[(a, f"{o.upper()} lr={lr:g}")] == f"{mean:.2f} ± {std:.2f}"


@pytest.mark.parametrize("workers", [1, 2])
def test_python_api_with_own_model_and_tensors(tmp_path, workers):
    rows = adaptact.compare(user_defs.net, user_defs.blobs(), activations=("relu", "acon_c"),
                                  lrs=(0.05,), seeds=2, epochs=3, db=tmp_path / "r.sqlite",
                                  out=tmp_path / "out", workers=workers, progress=False)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert rows.summary.ran == 4 and rows.report[0] == tmp_path / "out" / "report.md"
    assert {r["model"] for r in rows} == {model_source(user_defs.net).fingerprint}
    assert all(r["best_acc"] > 0.5 for r in rows)  # three separable blobs are learnt
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert sorted(r["key"] for r in store.rows()) == sorted(r["key"] for r in rows)
    _check_report_equals_db(rows, tmp_path / "out")
    assert "Up to 2 seeds" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_specs_for_own_model_and_loader(tmp_path, capsys, workers):
    argv = ["compare", "--model", "tests.experiments.user_defs:net",
            "--dataset", "tests.experiments.user_defs:blobs",
            "--activations", "relu,swish", "--optimizers", "adam", "--lrs", "0.01", "--seeds", "2",
            "--epochs", "2", "--workers", workers, "--db", str(tmp_path / "r.sqlite"),
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = store.rows()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert {r["dataset"].split("@")[0] for r in rows} == {"tests.experiments.user_defs:blobs"}
    _check_report_equals_db(rows, tmp_path / "out")
    # the setup block
    assert "tests.experiments.user_defs:net" in (tmp_path / "out" / "report.md").read_text()


def test_unimportable_specs_are_one_line_errors(tmp_path, capsys):
    for option, spec in (("--model", "nowhere.module:net"),
                         ("--model", "tests.experiments.user_defs:nothing"),
                         ("--dataset", "tests.experiments.user_defs")):
        argv = ["compare", option, spec, "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "o"),
                "--no-progress"]
        if option == "--model":
            argv += ["--dataset", "tests.experiments.user_defs:blobs"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("adaptact: error: ") and err.count("\n") == 1 and spec in err


def test_the_key_follows_the_users_code(tmp_path, monkeypatch):
    module = tmp_path / "my_project_net.py"
    code = """
        from torch import nn
        import adaptact
        def net(activation):
            return nn.Sequential(nn.Linear(6, {width}), adaptact.create(activation, channels={width}),
                                 nn.Linear({width}, 3))
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    keys = []
    for width in (8, 12):
        module.write_text(textwrap.dedent(code.format(width=width)))
        importlib.invalidate_caches()
        sys.modules.pop("my_project_net", None)
        source = model_source("my_project_net:net")
        keys.append(expand("digits", source, ["relu"], ["sgd"], [0.1], 1, 1)[0].key)
    assert keys[0] != keys[1]
    versioned = user_defs.net
    monkeypatch.setattr(versioned, "version", "2.1", raising=False)
    assert model_source(versioned).fingerprint.endswith("@v2.1")  # a user-given version string wins


def test_data_fingerprint_follows_the_tensors(tmp_path):
    a, _ = data_source(user_defs.blobs(), cache_dir=tmp_path)
    changed = list(user_defs.blobs())
    changed[0] = changed[0].clone()
    changed[0][0, 0] += 1.0
    b, _ = data_source(tuple(changed), cache_dir=tmp_path)
    same, _ = data_source(user_defs.blobs(), cache_dir=tmp_path)
    assert a.fingerprint != b.fingerprint and a.fingerprint == same.fingerprint


def test_a_factory_that_cannot_build_an_activation_is_refused_before_training(tmp_path):
    def factory(activation):
        if activation == "swish":
            raise ValueError("no swish here")
        return user_defs.net(activation)

    with pytest.raises(UserError, match="with activation 'swish' does not fit .*: no swish here"):
        adaptact.compare(factory, user_defs.blobs, activations=("relu", "swish"), seeds=1, epochs=1,
                               db=tmp_path / "r.sqlite", out=tmp_path / "out", progress=False)
    assert not (tmp_path / "r.sqlite").exists()


def test_failing_and_diverging_runs_are_stored_and_reported(tmp_path):
    rows = adaptact.compare("tests.experiments.user_defs:picky_net", user_defs.blobs,
                                  activations=("relu", "swish"), lrs=(0.05, 1e6), seeds=1, epochs=2,
                                  db=tmp_path / "r.sqlite", out=tmp_path / "out", progress=False)
    status = {(r["activation"], r["lr"]): r["status"] for r in rows}
    assert status == {("relu", 0.05): "ok", ("relu", 1e6): "diverged", ("swish", 0.05): "failed",
                      ("swish", 1e6): "failed"}
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "RuntimeError: picky_net does not train swish"
    md = (tmp_path / "out" / "report.md").read_text()
    listed = md.split("### Runs that diverged or failed")[1]
    assert "| swish | sgd | 0.05 | failed | 1 | RuntimeError: picky_net does not train swish |" in listed
    assert "| relu | sgd | 1e+06 | diverged | 1 |" in listed


def test_validation_split_is_seeded_and_disjoint():
    from adaptact.experiments.train import VALIDATION, _split

    train, val = _split(1000)
    assert len(val) == int(VALIDATION * 1000) and len(train) == 1000 - len(val)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert set(train.tolist()) | set(val.tolist()) == set(range(1000))
    again = _split(1000)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


def test_mixed_precision_and_compile_are_part_of_the_run(tmp_path):
    base = dict(activations=("acon_c",), lrs=(0.05,), seeds=1, epochs=2, db=tmp_path / "r.sqlite",
                out=tmp_path / "out", progress=False, device="cpu")
    plain = adaptact.compare(user_defs.net, user_defs.blobs, **base)
    bf16 = adaptact.compare(user_defs.net, user_defs.blobs, amp="bf16", **base)
    compiled = adaptact.compare(user_defs.net, user_defs.blobs, compile=True, **base)
    keys = {plain[0]["key"], bf16[0]["key"], compiled[0]["key"]}
    assert len(keys) == 3 and {r[0]["status"] for r in (plain, bf16, compiled)} == {"ok"}
    assert bf16[0]["amp"] == "bf16" and compiled[0]["compile"] is True
    assert bf16[0]["train_loss"] != plain[0]["train_loss"]  # bfloat16 forward: other numbers
    assert compiled[0]["train_loss"] == pytest.approx(plain[0]["train_loss"], rel=1e-4)
    with pytest.raises(adaptact.errors.UserError, match="amp fp16 needs a CUDA device"):
        adaptact.compare(user_defs.net, user_defs.blobs, amp="fp16", **base)


def test_a_dead_worker_is_replaced_and_its_run_retried_once_then_not_stored(tmp_path, monkeypatch):
    """A worker's death is no result of the run: after one retry the run is reported and left out of
    the store, so the next invocation runs it again."""
    attempts = tmp_path / "attempts.txt"
    monkeypatch.setenv("DOOMED_ATTEMPTS", str(attempts))  # spawned workers inherit the environment
    options = dict(activations=("swish",), lrs=(0.05,), seeds=1, epochs=1, db=tmp_path / "r.sqlite",
                   out=tmp_path / "out", workers=2, progress=False)
    rows = adaptact.compare("tests.experiments.user_defs:doomed_net", user_defs.blobs, **options)
    assert rows == []
    assert attempts.read_text().count("attempt") == 2  # the first try and one retry
    (line,) = [n for n in rows.summary.notes() if n.startswith("not stored")]
    assert "swish sgd lr=0.05 seed=0: the worker running it died" in line
    again = adaptact.compare("tests.experiments.user_defs:doomed_net", user_defs.blobs, **options)
    assert again.summary.already_done == 0 and attempts.read_text().count("attempt") == 4  # tried again


def test_a_generated_data_set_is_made_once_per_sweep_and_shipped_to_workers(tmp_path, monkeypatch):
    """The sweep's process makes the set (the bearing simulator here, MNIST-1D alike) and saves it
    for its workers, which load it instead of generating it again; the runs' keys stay those of
    the built-in name."""
    from adaptact.datasets import builtin
    from adaptact.experiments.sources import data_source, load_data
    from adaptact.experiments.sweep import expand

    made = []
    real = builtin._load

    def counted(*args):
        made.append(args[0])
        return real(*args)

    monkeypatch.setattr(builtin, "_load", counted)
    builtin.load.cache_clear()
    source, ds = data_source("bearing-snr5", cache_dir=tmp_path)
    assert isinstance(source.ref, Path) and source.ref.parent == tmp_path
    builtin.load.cache_clear()  # as in a fresh worker process
    shipped = load_data(source)
    assert made == ["bearing-snr5"]
    assert shipped.name == ds.name and shipped.num_classes == ds.num_classes
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(shipped, k), getattr(ds, k))
    assert data_source("bearing-snr5", cache_dir=tmp_path)[0].ref == source.ref  # the same file next time
    plain = expand("bearing-snr5@sim1", "resnet1d-9", ["relu"], ["adam"], [0.01], 2, 1)
    shipped_runs = expand(source, "resnet1d-9", ["relu"], ["adam"], [0.01], 2, 1)
    assert [c.key for c in shipped_runs] == [c.key for c in plain]
    builtin.load.cache_clear()


def test_a_tampered_data_file_is_never_trained_on(tmp_path):
    """The shipped data file is checked against the fingerprint in its name: tensors put in its place
    (labels all 0) or a file that will not load stop the run without storing it, and the next sweep
    writes the file again."""
    import pickle

    from adaptact.errors import InfrastructureError
    from adaptact.experiments.sources import _load_ref, data_source, load_data
    from adaptact.experiments.sweep import expand
    from adaptact.experiments.train import run

    source, ds = data_source(user_defs.blobs(), cache_dir=tmp_path)
    path = source.ref
    forged = {"name": ds.name, "train_x": ds.train_x, "train_y": torch.zeros_like(ds.train_y),
              "test_x": ds.test_x, "test_y": torch.zeros_like(ds.test_y), "num_classes": ds.num_classes}
    config = expand(source, "tests.experiments.user_defs:net", ["relu"], ["sgd"], [0.05], 1, 1)[0]
    for write in (lambda: torch.save(forged, path), lambda: path.write_bytes(pickle.dumps(print))):
        write()
        _load_ref.cache_clear()  # as in a fresh worker
        with pytest.raises(InfrastructureError, match="the run was not stored: run the command again"):
            load_data(source)
        with pytest.raises(InfrastructureError):
            run(config)
        assert data_source(user_defs.blobs(), cache_dir=tmp_path)[0].ref == path  # the next sweep...
        _load_ref.cache_clear()
        assert torch.equal(load_data(source).train_y, ds.train_y)  # ...writes it again
    _load_ref.cache_clear()
