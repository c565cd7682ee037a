"""The comparison end to end on digits: DB rows, report files, resume after kill -9, executors."""

import csv
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

import adaptact
from adaptact.experiments.cells import aggregate
from adaptact.experiments.store import ResultStore
from adaptact.experiments.sweep import expand, run_sweep
from adaptact.experiments.sources import Source
from adaptact.experiments.train import RunConfig, run
from adaptact.cli import main

pytest.importorskip("sklearn")

ACTS = "relu,swish,arelu,acon_c"


def _rows(db):
    with ResultStore(db) as store:
        return store.rows()


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    db, out = tmp_path / "r.sqlite", tmp_path / "report"
    argv = ["compare", "--dataset", "digits", "--activations", ACTS, "--optimizers", "sgd,adam",
            "--lrs", "1e-2,1e-3", "--seeds", "2", "--epochs", "2", "--db", str(db), "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    rows = _rows(db)
    assert len(rows) == 4 * 2 * 2 * 2 == len({r["key"] for r in rows})
    for r in rows:
        assert r["status"] == "ok" and r["protocol"] == 2
        assert len(r["test_acc"]) == len(r["val_acc"]) == len(r["train_loss"]) == 2
        # the epoch is picked on the validation split, never on the test set
        assert r["best_epoch"] == 1 + max(range(2), key=lambda e: (r["val_acc"][e], -e))
        assert r["best_acc"] == r["test_acc"][r["best_epoch"] - 1]
        assert r["first_epoch_acc"] == r["test_acc"][0] and r["last_acc"] == r["test_acc"][-1]
        assert r["versions"]["torch"] and r["wall_time"] > 0
    for name in ("report.md", "runs.csv", "heatmap.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name

    # every table cell equals the DB: parse "mean ± std (rank)" per (activation, column)
    md = (out / "report.md").read_text()
    sections = md.split("### ")
    tables = {"best_acc": next(s for s in sections if s.startswith("Test accuracy at the epoch")),
              "first_epoch_acc": next(s for s in sections if s.startswith("Test accuracy after the first")),
              "last_acc": next(s for s in sections if s.startswith("Test accuracy after the last"))}
    for metric, table in tables.items():
        head = table.split("| activation |")[1].splitlines()[0]
        header = [h.strip() for h in head.split("|") if h.strip()]
        stats = aggregate(rows, metric)
        cells = 0
        for line in table.splitlines():
            m = re.match(r"\| (\w+) \| (.*) \|$", line)
            if not m or m.group(1) == "activation":
                continue
            for col, cell in zip(header, m.group(2).split(" | ")):
                opt, lr = col.split(" lr=")
                mean, std, n = stats[(m.group(1), opt.lower(), float(lr))]
                got = re.match(r"\**([\d.]+) ± ([\d.]+) \((\d+)\)", cell)
                assert got.group(1, 2) == (f"{mean:.2f}", f"{std:.2f}") and n == 2
                column = [v for (_, o, lr_), v in stats.items() if (o, lr_) == (opt.lower(), float(lr))]
                assert int(got.group(3)) == 1 + sum(v[0] > mean for v in column)  # the rank
                assert cell.startswith("**") == (got.group(3) == "1")  # the best of each column is bold
                cells += 1
        assert cells == 4 * 4
    assert "## Summary" in md and "## Setup" in md and "relu" in md.split("## Summary")[1]
    with open(out / "runs.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert {"activation", "optimizer", "lr", "seed", "first_acc_percent", "best_acc_percent"} <= set(
        csv_rows[0])
    by_key = {r["key"]: r for r in rows}
    for c in csv_rows:  # in the report's unit
        assert float(c["best_acc_percent"]) == pytest.approx(100 * by_key[c["key"]]["best_acc"])

    # running again resumes: nothing to do, same rows; `report` rebuilds the same tables
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 runs done now, 32 already" in capsys.readouterr().out
    assert _rows(db) == rows
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "report.md").read_text()
    assert again.split("## Summary")[1] == md.split("## Summary")[1]  # all but the setup block


def test_same_config_and_seed_give_the_same_numbers():
    config = RunConfig(dataset="digits", model="linear", activation="meta_acon_c", optimizer="sgd",
                       lr=1e-2, seed=3, epochs=2)
    a, b = run(config), run(config)
    assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]
    other = run(RunConfig(dataset="digits", model="linear", activation="meta_acon_c", optimizer="sgd",
                          lr=1e-2, seed=4, epochs=2))
    assert other["train_loss"] != a["train_loss"]


def test_config_key_ignores_data_location():
    a = RunConfig(dataset="mnist", model="conv", activation="relu", optimizer="sgd", lr=0.01, seed=0,
                  epochs=1)
    assert a.key == RunConfig(dataset="mnist", model="conv", activation="relu", optimizer="sgd", lr=0.01,
                              seed=0, epochs=1, data_dir="/x").key
    assert a.key != RunConfig(dataset="mnist", model="conv", activation="relu", optimizer="sgd", lr=0.001,
                              seed=0, epochs=1).key


def test_kill_dash_nine_then_resume(tmp_path):
    db = tmp_path / "r.sqlite"
    argv = [sys.executable, "-m", "adaptact", "compare", "--dataset", "digits", "--activations", ACTS,
            "--optimizers", "sgd", "--lrs", "1e-2,1e-3", "--seeds", "3", "--epochs", "15", "--db", str(db),
            "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2"]
    total = 4 * 2 * 3
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                count = sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= 3:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read().decode()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["key"]: r for r in _rows(db)}
    assert 3 <= len(before) < total
    subprocess.run(argv, check=True, capture_output=True)
    after = _rows(db)
    assert len(after) == total == len({r["key"] for r in after})
    for r in after:  # nothing finished before the kill was lost or rewritten
        if r["key"] in before:
            assert r == before[r["key"]]
    expected = {c.key for c in expand("digits", "linear", ACTS.split(","), ["sgd"], [1e-2, 1e-3], 3, 15)}
    assert {r["key"] for r in after} == expected


def _timeless(rows):
    timing = ("wall_time", "epoch_time", "iter_time", "finished_at", "timed_under")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_local_pool_workers_give_identical_rows(tmp_path):
    configs = expand("digits", "linear", ["relu", "aprelu"], ["adam"], [1e-3], 2, 2)
    with ResultStore(tmp_path / "a.sqlite") as a, ResultStore(tmp_path / "b.sqlite") as b:
        run_sweep(configs, a, workers=1, progress=False)
        run_sweep(configs, b, workers=2, progress=False)
        assert _timeless(a.rows()) == _timeless(b.rows())
        cores = os.cpu_count()  # what shared the machine while each was timed, for the costs table
        assert {r["timed_under"] for r in a.rows()} == {f"one run at a time on {cores} CPU cores"}
        assert {r["timed_under"] for r in b.rows()} == {f"up to 2 runs at a time on {cores} CPU cores"}


@pytest.mark.xdist_group("distributed")  # Ray binds many ports: not beside the process-group tests
def test_ray_executor_matches_local_pool(tmp_path):
    pytest.importorskip("ray")
    configs = expand("digits", "linear", ["relu", "acon_c"], ["sgd"], [1e-2], 2, 2)
    with ResultStore(tmp_path / "local.sqlite") as local, ResultStore(tmp_path / "ray.sqlite") as ray_store:
        run_sweep(configs, local, executor="local", workers=1, progress=False)
        summary = run_sweep(configs, ray_store, executor="ray", workers=2, progress=False)
        assert summary.ran == len(configs)
        assert _timeless(ray_store.rows()) == _timeless(local.rows())


def test_resnet_suite_reports_top1_error(tmp_path):
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    assert main(["compare", "--suite", "resnet", "--dataset", "digits", "--optimizers", "sgd", "--lrs",
                 "0.05",
                 "--seeds", "1", "--epochs", "1", "--db", str(db), "--out", str(out), "--no-progress"]) == 0
    rows = _rows(db)
    assert {(r["activation"], r["policy"], r["model"]) for r in rows} == {
        ("relu", "all", "resnet18_w16"), ("swish", "all", "resnet18_w16"), ("acon_c", "all", "resnet18_w16"),
        ("meta_acon_c", "resnet_after_3x3", "resnet18_w16"), ("aprelu", "all", "resnet18_w16"),
        ("arelu", "all", "resnet18_w16"), ("dy_relu_b", "all", "resnet18_w16"),
        ("frelu", "all", "resnet18_w16")}
    assert all(r["status"] == "ok" for r in rows)
    md = (out / "report.md").read_text()
    table = md.split("### Top-1 error (%)")[1]
    meta = next(r for r in rows if r["activation"] == "meta_acon_c")
    expected = f"| meta_acon_c (resnet_after_3x3) | {100 - 100 * meta['best_acc']:.2f} ± 0.00"
    assert expected in table.replace("**", "")


def test_policy_is_part_of_the_key_only_when_not_all():
    base = RunConfig(dataset="mnist", model="resnet18", activation="acon_c", optimizer="sgd", lr=0.1,
                     seed=0, epochs=1)
    assert "policy" not in base.identity()
    other = RunConfig(dataset="mnist", model="resnet18", activation="acon_c", optimizer="sgd", lr=0.1,
                      seed=0, epochs=1, policy="resnet_after_3x3")
    assert other.identity()["policy"] == "resnet_after_3x3" and other.key != base.key


def test_a_fallback_is_recorded_and_said_once(tmp_path, monkeypatch, capsys):
    """Compiling that gives up in a run (here: forced) shows in the row (which backend ran, the
    warning the run raised) and once in the sweep's output and the report, never in silence."""
    from adaptact.ops import compiled as CP

    def broken(fn, kind):
        def call(*args):
            raise RuntimeError("InductorError: no C++ compiler found")
        return call

    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    monkeypatch.setattr(CP, "_failure", [])
    monkeypatch.setattr(CP, "_compiled", broken)
    db, out = tmp_path / "r.sqlite", tmp_path / "report"
    argv = ["compare", "--dataset", "digits", "--activations", "relu,acon_c", "--optimizers", "sgd",
            "--lrs", "1e-2", "--seeds", "2", "--epochs", "1", "--db", str(db), "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    by = {(r["activation"], r["seed"]): r for r in _rows(db)}
    first = by["acon_c", 0]
    assert first["backend"] == "autograd" and by["relu", 0]["backend"] == ""
    assert any("compiling the CPU activation kernels failed" in w for w in first["warnings"])
    assert err.count("warning from the runs: RuntimeWarning: adaptact: compiling the CPU") == 1
    assert "adaptive activations ran: autograd (2 runs)" in err
    assert re.search(r"\| acon_c \|.*\| autograd \|", (out / "report.md").read_text())


def test_the_backend_that_ran_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTACT_COMPILE", "1")
    from adaptact.ops import compiled as CP

    monkeypatch.setattr(CP, "_failure", [])
    row = run(RunConfig(dataset="digits", model="linear", activation="arelu", optimizer="sgd", lr=1e-2,
                        seed=0, epochs=1))
    assert row["status"] == "ok" and row["backend"] == "compiled" and not row["warnings"], row["warnings"]
    from adaptact.ops import dispatch

    monkeypatch.setattr(dispatch, "EAGER_NUMEL", 10**9)  # every evaluation (no grad) runs the reference
    again = run(RunConfig(dataset="digits", model="linear", activation="arelu", optimizer="sgd", lr=1e-2,
                          seed=0, epochs=1))
    assert again["backend"] == "compiled"  # the training steps' backend, not the last evaluation's


class _PausesOnce(torch.nn.Module):
    """A linear classifier on digits whose fifth training forward waits ``PAUSE`` seconds: what a
    step that compiles again (a new batch shape under ``--compile``) costs once."""

    PAUSE = 1.0

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                                       adaptact.create(activation), torch.nn.Linear(32, 10))
        self.calls = 0

    def forward(self, x):
        self.calls += self.training
        if self.training and self.calls == 5:
            time.sleep(self.PAUSE)
        return self.net(x)


def test_a_step_that_compiles_again_is_not_a_steps_cost():
    """The step time the report's costs read is the median step's after the first two: a step that
    waits once (a recompile) leaves it where the other steps are (a mean over the 20 timed steps
    would be above PAUSE / 20)."""
    source = Source("pauses_once", "pauses_once", _PausesOnce)
    row = run(RunConfig(dataset="digits", model="pauses_once", activation="relu", optimizer="sgd", lr=1e-2,
                        seed=0, epochs=2, model_source=source))
    assert row["status"] == "ok"
    assert row["wall_time"] > _PausesOnce.PAUSE and 0 < row["iter_time"] < _PausesOnce.PAUSE / 50
