"""The result databases committed under benchmarks/ resume: the code computes the keys they hold,
so a sweep asked for again finds its runs done and runs nothing."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from adaptact.cli import main
from adaptact.experiments import sweep
from adaptact.experiments.train import RunConfig

ROOT = Path(__file__).resolve().parents[2]
DATABASES = sorted((ROOT / "benchmarks").glob("*/*.sqlite"))
IDENTITY = ("dataset", "model", "activation", "optimizer", "lr", "seed", "epochs", "batch_size", "policy",
            "device", "amp", "compile", "scale", "loss", "validation")


def _stored(db: Path) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        con.row_factory = sqlite3.Row
        return [dict(row) for row in con.execute("SELECT * FROM runs")]


def test_there_are_committed_databases():
    assert len(DATABASES) >= 3, DATABASES


@pytest.mark.parametrize("db", DATABASES, ids=[d.parent.name for d in DATABASES])
def test_each_stored_key_is_the_key_of_its_stored_configuration(db):
    rows = _stored(db)
    assert rows
    for row in rows:
        fields = {name: row[name] for name in IDENTITY}
        fields.update(amp=fields["amp"] or None, compile=bool(fields["compile"]))
        fields.update(iters=row.get("iters", 0), eval_every=row.get("eval_every", 0))  # columns added later
        fields.update(start=row.get("start", ""), init=row.get("init") or "paper")  # fine-tuning
        assert RunConfig(**fields).key == row["key"], row


def _refuse(executor, fn, runs, **kwargs):
    assert not list(runs), "a run was started: its key is not in the committed database"
    return iter(())


def _asked_again(tmp_path, monkeypatch, capsys, db: str, options: list[str], runs: int) -> None:
    """The command RESULTS.md gives for ``db`` (under benchmarks/), on a copy of it and without
    any checkpoint (not committed), starts no run and finds ``runs`` done."""
    copy = tmp_path / Path(db).name
    shutil.copy(ROOT / "benchmarks" / db, copy)
    monkeypatch.setattr(sweep, "execute", _refuse)
    argv = ["compare", *options, "--db", str(copy), "--out", str(tmp_path / "report"), "--no-progress"]
    assert main(argv) == 0
    assert f"0 runs done now, {runs} already in" in capsys.readouterr().out


def test_the_fault_diagnosis_sweep_asked_again_runs_nothing(tmp_path, monkeypatch, capsys):
    _asked_again(tmp_path, monkeypatch, capsys, "fault-diagnosis/bearing.sqlite",
                 ["--dataset", "bearing", "--snr", "5,3,1", "--model", "resnet1d-9",
                  "--activations", "sigmoid,tanh,relu,leaky_relu,prelu,aprelu", "--optimizers", "adam",
                  "--lrs", "0.01", "--seeds", "3", "--epochs", "40"], 54)


def test_the_convert_sweep_asked_again_runs_nothing(tmp_path, monkeypatch, capsys):
    """Every pretraining and fine-tuning run is found done, without the pretrained checkpoints."""
    pytest.importorskip("mnist1d")
    _asked_again(tmp_path, monkeypatch, capsys, "transfer/convert.sqlite", ["--protocol", "convert"], 48)


def test_the_convert_gpt_sweep_asked_again_runs_nothing(tmp_path, monkeypatch, capsys):
    """The language model's: pretraining runs by iterations, then the conversions."""
    _asked_again(tmp_path, monkeypatch, capsys, "transfer/convert-gpt.sqlite", ["--protocol", "convert-gpt"],
                 36)
