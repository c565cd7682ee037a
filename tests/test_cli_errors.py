"""Every bad input to the command line is one line, ``adaptact: error: ...``, with exit code 2 —
never a traceback — and is found before any expensive work; Ctrl-C exits 130."""

import argparse
import sqlite3
import sys

import numpy as np
import pytest
import torch

from adaptact.experiments import comparison as C
from adaptact.datasets import builtin as D
from adaptact.experiments.store import ResultStore
from adaptact.cli import main
from tests.datasets.test_data import write_idx

pytest.importorskip("sklearn")


def _error(capsys, argv, *messages):
    """main(argv) exits 2 (returned, or argparse's SystemExit) with one error line holding ``messages``."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert not any(line.startswith("usage:") for line in err.splitlines()), err  # one line, no usage block
    line = next(line for line in err.splitlines() if "error:" in line)
    for m in messages:
        assert m in line, (m, err)
    return line


def _compare(tmp_path, *extra):
    return ["compare", "--dataset", "digits", "--activations", "relu", "--optimizers", "sgd", "--lrs", "0.01",
            "--seeds", "1", "--epochs", "1", "--no-progress", "--db", str(tmp_path / "r.sqlite"),
            "--out", str(tmp_path / "out"), *extra]


@pytest.fixture
def a_file(tmp_path):
    """A plain file: a path below it can be neither created nor written, even by root."""
    path = tmp_path / "file.txt"
    path.write_text("not a folder")
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a sweep starts: checks must come before any training."""
    def refuse(*args, **kwargs):
        raise AssertionError("a sweep started before the input was checked")

    monkeypatch.setattr(C, "run_sweep", refuse)


@pytest.mark.parametrize("content", [b"this is not SQLite", b"", b"SQLite format 3\x00" + b"\x01" * 50],
                         ids=["garbage", "empty", "truncated"])
def test_a_database_that_is_not_sqlite(tmp_path, capsys, content, no_training):
    db = tmp_path / "r.sqlite"
    db.write_bytes(content)
    if content:
        _error(capsys, _compare(tmp_path), str(db), "results database")
        _error(capsys, ["report", "--db", str(db), "--out", str(tmp_path / "o")], str(db))
    else:  # an empty file is a new SQLite database: no runs in it
        _error(capsys, ["report", "--db", str(db), "--out", str(tmp_path / "o")], "no runs in")


def test_a_truncated_results_database(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    assert main(_compare(tmp_path)) == 0
    capsys.readouterr()
    raw = db.read_bytes()
    db.write_bytes(raw[: len(raw) // 2])
    for wal in tmp_path.glob("r.sqlite-*"):
        wal.unlink()
    _error(capsys, ["report", "--db", str(db), "--out", str(tmp_path / "o")], str(db))


def test_a_database_of_another_schema_is_refused_and_left_alone(tmp_path, capsys, no_training):
    db = tmp_path / "r.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE runs (name TEXT, value REAL)")
    _error(capsys, _compare(tmp_path), "its table 'runs' is not adaptact's")
    _error(capsys, ["report", "--db", str(db)], "not adaptact's")
    with sqlite3.connect(db) as con:
        assert [r[1] for r in con.execute("PRAGMA table_info(runs)")] == ["name", "value"]


@pytest.mark.parametrize("option", ["--out", "--save-checkpoints"])
def test_unwritable_output_folders_before_any_training(tmp_path, capsys, a_file, option, no_training):
    _error(capsys, _compare(tmp_path, option, str(a_file / "sub")), str(a_file / "sub"), "cannot write there")
    assert not (tmp_path / "r.sqlite").exists()


def test_unwritable_plot_output(capsys, a_file):
    _error(capsys, ["plot", "relu", "-o", str(a_file / "x.png")], "cannot write there")


def test_unwritable_bench_json_before_the_benchmark(capsys, a_file, monkeypatch):
    from adaptact import kernel_benchmark as kernels

    def benchmark(*args, **kwargs):
        raise AssertionError("the benchmark ran before the output was checked")

    monkeypatch.setattr(kernels, "_bench", benchmark)
    _error(capsys, ["bench-kernels", "--shape", "2,4,5,5", "--device", "cpu",
                    "--json", str(a_file / "k.json")], "cannot write there")


@pytest.mark.parametrize("content", [b"garbage", b"", "list", "object"],
                         ids=["garbage", "empty", "not-a-checkpoint", "pickled-object"])
@pytest.mark.parametrize("command", ["plot", "inspect"])
def test_files_that_are_not_checkpoints(tmp_path, capsys, content, command):
    path = tmp_path / "c.pt"
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "object":  # refused by torch's weights-only loader, with a paragraph of advice
        torch.save(argparse.Namespace(a=1), path)
    else:
        path.write_bytes(content)
    argv = (["plot", "--checkpoint", str(path), "-o", str(tmp_path / "p.png")] if command == "plot" else
            ["inspect", "--checkpoint", str(path), "--dataset", "digits", "--out", str(tmp_path / "i")])
    line = _error(capsys, argv, "cannot load checkpoint", str(path))
    assert len(line) < 200 + len(str(path)), line


def _idx_folder(tmp_path, change):
    folder = tmp_path / "idx"
    write_idx(folder)
    change(folder)
    return ["--dataset", "mnist", "--data-dir", str(folder), "--model", "conv"]


def _labels_out_of_range(folder):
    path = folder / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] = 12
    path.write_bytes(bytes(raw))


def _no_images(folder):
    for stem, n in (("train-images-idx3-ubyte", 0), ("train-labels-idx1-ubyte", 0)):
        ndim = 3 if "images" in stem else 1
        dims = (n, 28, 28)[:ndim]
        (folder / stem).write_bytes(bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims))


def _overflowing_dims(folder):
    header = bytes([0, 0, 8, 3]) + b"\xff\xff\xff\xff" * 3  # 2^96 elements, more than int64 holds
    (folder / "train-images-idx3-ubyte").write_bytes(header + b"\x00" * 9)


def _constant_images(folder):
    path = folder / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:16] + b"\x07" * (len(raw) - 16))


@pytest.mark.parametrize("change, message", [
    (_labels_out_of_range, "labels must be 0..9, found 12"),
    (_no_images, "no train images"),
    (_overflowing_dims, "truncated or corrupt IDX data"),
    (_constant_images, "all the same value"),
], ids=["labels", "no-images", "overflow", "constant"])
def test_insane_idx_data(tmp_path, capsys, no_system_data, change, message, no_training):
    _error(capsys, _compare(tmp_path, *_idx_folder(tmp_path, change)), message)
    D.load.cache_clear()


def test_a_model_that_does_not_fit_the_data(tmp_path, capsys, no_training):
    _error(capsys, _compare(tmp_path, "--model", "conv"), "model 'conv' does not fit data 'digits'")


def test_a_model_factory_that_fails_is_one_line(tmp_path, capsys, no_training):
    _error(capsys, _compare(tmp_path, "--model", "tests.experiments.user_defs:broken_net"),
           "model 'tests.experiments.user_defs:broken_net' does not fit data 'digits'",
           "KeyError: \"no layer named 'head'\"")
    assert not (tmp_path / "r.sqlite").exists()


def test_a_data_loader_that_fails_is_one_line(tmp_path, capsys, no_training):
    """A loader that raises (here: a model factory given as the data, which wants an argument)."""
    _error(capsys, _compare(tmp_path, "--dataset", "tests.experiments.user_defs:net", "--model",
                            "tests.experiments.user_defs:net"),
           "data tests.experiments.user_defs:net: the loader failed (TypeError: net() missing 1 required "
           "positional argument")
    assert not (tmp_path / "r.sqlite").exists()


def test_an_activation_that_does_not_fit_the_model_is_refused_before_training(tmp_path, capsys, no_training):
    """FReLU's spatial condition needs (N, C, H, W) maps: the digits MLP gives it (N, C)."""
    _error(capsys, _compare(tmp_path, "--activations", "relu,frelu"),
           "model 'linear' with activation 'frelu' does not fit data 'digits'", "expects (N, C, H, W) inputs")
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1e20"], "'1e20' is not a valid int"),
    (["--seeds", "100000000"], "must be at most 10000"),
    (["--lrs", "nan"], "must be a finite number > 0, got nan"),
    (["--lrs", "0.1,inf"], "must be a finite number > 0, got inf"),
    (["--lrs", "1e308"], "must be at most 1e+06"),
    (["--batch-size", "-3"], "must be a finite number > 0"),
    (["--lrs", "-0.01"], "must be a finite number > 0, got -0.01"),
], ids=["seeds-float", "seeds-huge", "lr-nan", "lr-inf", "lr-huge", "batch", "lr-negative"])
def test_numbers_out_of_range(tmp_path, capsys, args, message, no_training):
    _error(capsys, _compare(tmp_path, *args), message)


def test_too_many_runs_are_refused_at_once(tmp_path, capsys, no_training, monkeypatch):
    def sweep(*args, **kwargs):
        raise AssertionError("the sweep started before the number of runs was checked")

    monkeypatch.setattr(C, "run_sweep", sweep)
    monkeypatch.setattr(C, "expand", sweep)  # counted, not listed
    lrs = ",".join(f"{k}e-4" for k in range(1, 100))
    _error(capsys, _compare(tmp_path, "--seeds", "10000", "--lrs", lrs), "runs asked for; at most 100000")


def test_props_depth_one(capsys):
    _error(capsys, ["props", "relu", "--no-cost", "--depth", "1"], "--depth must be at least 2")


@pytest.mark.parametrize("device, message", [
    ("bogus", "unknown device 'bogus'"), ("meta", "runs on cpu or cuda"),
    ("cuda", "no CUDA GPU is available here"),
])
def test_bench_kernels_device(tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    _error(capsys, ["bench-kernels", "--shape", "2,4,5,5", "--device", device, "--json",
                    str(tmp_path / "k.json")], message)


def test_ctrl_c_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "run_sweep", interrupted)
    assert main(_compare(tmp_path)) == 130
    err = capsys.readouterr().err
    assert err == "adaptact: interrupted\n"


def test_unreachable_ray_address_fails_fast(tmp_path, capsys, no_training):
    pytest.importorskip("ray")  # the connection attempt is bounded by RAY_CONNECT_TIMEOUT_S (executors.py)
    _error(capsys, _compare(tmp_path, "--executor", "ray", "--address", "127.0.0.1:1"),
           "no Ray cluster answers at 127.0.0.1:1")


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    _error(capsys, ["plot", "relu", "-o", str(tmp_path / "p.png")], "pip install 'adaptact[bench]'")


def test_a_learning_rate_that_diverges_is_recorded_as_diverged(tmp_path, capsys):
    assert main(_compare(tmp_path, "--lrs", "1e6")) == 0
    with ResultStore(tmp_path / "r.sqlite") as store:
        (row,) = store.rows()
    assert row["status"] == "diverged" and np.isfinite(row["best_acc"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "diverged or failed" in report and "| relu | sgd | 1e+06 | diverged | 1 |" in report
    assert "### Test accuracy" not in report  # no accuracy table: its only run diverged
    assert "No activation converged with: SGD lr=1e+06." in report
