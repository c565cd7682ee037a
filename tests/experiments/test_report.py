"""The report stays inside --out whatever a database holds, renders nothing non-finite as a result,
and a report writer killed mid-way leaves the previous report whole."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptact.experiments.report import write_report
from adaptact.experiments.store import COLUMNS, ResultStore

ROOT = Path(__file__).resolve().parents[2]


def _row(key: str, dataset: str = "digits", model: str = "linear", acc: float = 0.5, **extra) -> dict:
    row = {"key": key, "dataset": dataset, "model": model, "activation": "relu", "policy": "all",
           "optimizer": "sgd", "lr": 0.01, "seed": 0, "epochs": 2, "batch_size": 128, "device": "cpu",
           "amp": "", "compile": False, "protocol": 2, "scale": "standard", "loss": "cross_entropy",
           "validation": 0.1, "status": "ok", "error": "", "first_epoch_acc": acc,
           "best_epoch": 2, "best_acc": acc, "last_acc": acc, "wall_time": 1.0, "epoch_time": 0.5,
           "activation_params": 0, "peak_memory": -1, "train_loss": [1.0, 0.5], "val_acc": [acc, acc],
           "test_acc": [acc, acc], "versions": {}}
    return {**row, **extra}


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_names_from_a_crafted_database_never_leave_out(tmp_path):
    outside = tmp_path / "outside.png"
    rows = [_row("a", dataset="../../escape"), _row("b", dataset=str(outside.with_suffix(""))),
            _row("c", model="/etc/x"), _row("d", dataset="..")]
    out = tmp_path / "deep" / "out"
    before = _files(tmp_path)
    written = write_report(rows, out)
    new = _files(tmp_path) - before
    assert new and all(out in p.parents for p in new), new
    assert set(written) <= new
    assert not outside.exists()


def test_non_finite_numbers_are_never_rendered_as_results(tmp_path):
    rows = [_row("a", acc=0.9), _row("b", acc=math.nan, seed=1), _row("c", acc=math.inf, seed=2),
            _row("d", acc=0.7, seed=3, status="diverged"), _row("e", acc=0.0, seed=4, status="failed",
                                                                 error="RuntimeError: boom")]
    write_report(rows, tmp_path, plots=False)
    report = (tmp_path / "report.md").read_text()
    assert "nan" not in report.lower() and "inf" not in report.lower()
    assert "**90.00 ± 0.00 (1)**" in report  # the one usable run, alone in its cell
    assert "| relu | sgd | 0.01 | non-finite | 2 |" in report  # the others, listed apart
    assert "| relu | sgd | 0.01 | diverged | 1 |" in report
    assert "| relu | sgd | 0.01 | failed | 1 | RuntimeError: boom |" in report
    with open(tmp_path / "runs.csv", newline="") as f:
        statuses = [row["status"] for row in csv.DictReader(f)]
    assert statuses == ["ok", "non-finite", "non-finite", "diverged", "failed"]


def _database(path: Path, setups: int, acc: float) -> None:
    with ResultStore(path) as store:
        for k in range(setups):
            for seed in range(2):
                store.add(_row(f"{acc}-{k}-{seed}", dataset=f"set{k}", seed=seed, acc=acc))


def test_a_killed_report_writer_leaves_the_previous_report(tmp_path):
    """The writer renders every file under a temporary name before renaming any of them: killed
    while rendering (eight setups of figures take seconds), the previous report is untouched."""
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    _database(db, 8, 0.5)
    command = [sys.executable, "-m", "adaptact", "report", "--db", str(db), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    old = {p: p.read_bytes() for p in _files(out)}
    _database(db, 8, 0.25)  # new runs: the next report differs in every file
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not any(out.glob(".*.tmp")) and time.monotonic() < deadline:  # rendering has begun
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the report was written before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p: p.read_bytes() for p in _files(out) if not p.name.endswith(".tmp")} == old
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    new = {p: p.read_bytes() for p in _files(out)}  # the killed writer's temporaries are gone too
    assert new.keys() == old.keys()
    assert all(new[out / name] != old[out / name] for name in ("report.md", "runs.csv"))


def test_store_columns_round_trip(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.add(_row("x"))
        assert not store.add(_row("x"))
        (row,) = store.rows()
    assert set(row) == set(COLUMNS) and row["status"] == "ok"
    assert json.dumps(row["test_acc"]) == "[0.5, 0.5]"


def test_store_refuses_non_finite_runs_instead_of_dropping_them(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="non-finite lr"):
        store.add(_row("x", lr=math.nan))
    assert os.path.getsize(tmp_path / "r.sqlite") > 0


TAMPERED = [("lr", "abc"), ("seed", 1.5), ("test_acc", '["x"]'), ("versions", "[1]"),
            ("train_loss", "not json"), ("best_acc", "high")]


@pytest.mark.parametrize("column, value", TAMPERED)
def test_rows_of_a_tampered_database_are_refused(tmp_path, capsys, column, value):
    """SQLite keeps any type in any column: a value adaptact could not have written is one error line."""
    import sqlite3

    from adaptact.experiments.store import StoreError
    from adaptact.cli import main

    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        store.add(_row("a"))
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE runs SET {column} = ?", (value,))
    with ResultStore(db) as store, pytest.raises(StoreError, match="row 'a' is not one adaptact wrote"):
        store.rows()
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "out")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_runs_at_several_snrs_get_the_fault_diagnosis_table(tmp_path):
    from adaptact.experiments.report import snr_tables

    rows = [_row(f"{a}{snr}{seed}", dataset=f"bearing-snr{snr}@sim1", model="resnet1d-9",
                 acc=acc + seed / 100, activation=a, seed=seed)
            for a, acc in (("relu", 0.5), ("aprelu", 0.6)) for snr in (5, 1) for seed in (0, 1)]
    rows.append(_row("lone", dataset="bearing-snr3@sim1", model="resnet1d-9", activation="tanh"))
    lines = snr_tables(rows)
    assert lines[0] == "## Fault diagnosis by SNR: resnet1d-9, SGD lr=0.01, 2 epochs (simulated signals)"
    assert lines[2] == "| activation | SNR 5 dB | SNR 3 dB | SNR 1 dB | mean |"
    assert "| aprelu | 60.50 ± 0.71 (2) | — | 60.50 ± 0.71 (2) | — |" in lines
    assert "| tanh | — | 50.00 ± 0.00 (1) | — | — |" in lines
    assert snr_tables([r for r in rows if r["dataset"] == "bearing-snr5@sim1"]) == []  # one SNR: no table
    write_report(rows, tmp_path, plots=False)
    assert "Fault diagnosis by SNR" in (tmp_path / "report.md").read_text()


def _cost_line(report: str, activation: str) -> list[str]:
    table = report.split("### Costs")[1]
    line = next(x for x in table.splitlines() if x.startswith(f"| {activation} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_costs_read_the_step_time_not_the_wall_time_that_holds_compiling(tmp_path):
    """A compiled activation's first run pays its compile in its wall time per epoch (here 10x
    relu's); its training steps cost 1.5x relu's, and the costs say so."""
    rows = [_row(f"r{s}", seed=s, epoch_time=0.5, iter_time=0.002) for s in range(2)]
    rows += [_row(f"a{s}", seed=s, activation="acon_c", epoch_time=5.0, iter_time=0.003) for s in range(2)]
    write_report(rows, tmp_path, plots=False)
    report = (tmp_path / "report.md").read_text()
    assert "| activation | time per training step (ms) | time / relu's |" in report
    assert _cost_line(report, "acon_c")[1:3] == ["3", "1.50"]
    assert _cost_line(report, "relu")[1:3] == ["2", "1.00"]
    assert "median training step after its first two (eager, then compiling)" in report
    old = [{k: v for k, v in r.items() if k != "iter_time"} for r in rows]  # rows from before the step time
    write_report(old, tmp_path / "old", plots=False)
    report = (tmp_path / "old" / "report.md").read_text()
    assert "| activation | time per epoch (s) | time / relu's |" in report
    assert _cost_line(report, "acon_c")[1:3] == ["5", "10.00"]
    assert "loading the data, compiling and evaluating included" in report


def test_two_seeds_that_differ_by_the_same_amount_decide_nothing(tmp_path):
    """Each seed of acon_c 2 points above relu's: the Summary says indistinguishable with an
    unbounded interval (it once said "better" at [+2.00, +2.00]), and the forest draws it."""
    rows = [_row(f"r{s}", seed=s, acc=0.5 + 0.1 * s) for s in range(2)]
    rows += [_row(f"a{s}", seed=s, activation="acon_c", acc=0.52 + 0.1 * s) for s in range(2)]
    written = write_report(rows, tmp_path)
    summary = (tmp_path / "report.md").read_text().split("## Summary")[1]
    assert "| 1 | acon_c | SGD lr=0.01 | +2.00 [-∞, +∞] |" in summary
    assert "| indistinguishable | 2 | 6 ‡ |" in summary  # the sign-flip test's 2 / 2^6 <= 5%, not a power's
    assert "‡: every seed differed by the same amount, where the t-test cannot tell" in summary
    assert "- Better than relu: none." in summary
    assert tmp_path / "forest.png" in written
