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


def test_the_fault_diagnosis_sweep_asked_again_runs_nothing(tmp_path, monkeypatch, capsys):
    """The command RESULTS.md gives for benchmarks/fault-diagnosis, on a copy of its database."""
    db = tmp_path / "bearing.sqlite"
    shutil.copy(ROOT / "benchmarks" / "fault-diagnosis" / "bearing.sqlite", db)

    monkeypatch.setattr(sweep, "execute", _refuse)
    argv = ["compare", "--dataset", "bearing", "--snr", "5,3,1", "--model", "resnet1d-9",
            "--activations", "sigmoid,tanh,relu,leaky_relu,prelu,aprelu", "--optimizers", "adam",
            "--lrs", "0.01", "--seeds", "3", "--epochs", "40", "--db", str(db),
            "--out", str(tmp_path / "report"),
            "--no-progress"]
    assert main(argv) == 0
    assert "0 runs done now, 54 already in" in capsys.readouterr().out


def test_the_convert_sweep_asked_again_runs_nothing(tmp_path, monkeypatch, capsys):
    """RESULTS.md's fine-tuning command, on a copy of its database and without the pretrained
    checkpoints (not committed): every pretraining and fine-tuning run is found done."""
    pytest.importorskip("mnist1d")
    db = tmp_path / "convert.sqlite"
    shutil.copy(ROOT / "benchmarks" / "transfer" / "convert.sqlite", db)

    monkeypatch.setattr(sweep, "execute", _refuse)
    argv = ["compare", "--protocol", "convert", "--db", str(db), "--out", str(tmp_path / "report"),
            "--no-progress"]
    assert main(argv) == 0
    assert "0 runs done now, 48 already in" in capsys.readouterr().out


def test_the_convert_gpt_sweep_asked_again_runs_nothing(tmp_path, monkeypatch, capsys):
    """RESULTS.md's language-model fine-tuning command, on a copy of its database and without the
    pretrained checkpoints: the pretraining runs (by iterations) and the conversions are found done."""
    db = tmp_path / "convert-gpt.sqlite"
    shutil.copy(ROOT / "benchmarks" / "transfer" / "convert-gpt.sqlite", db)

    monkeypatch.setattr(sweep, "execute", _refuse)
    argv = ["compare", "--protocol", "convert-gpt", "--db", str(db), "--out", str(tmp_path / "report"),
            "--no-progress"]
    assert main(argv) == 0
    assert "0 runs done now, 36 already in" in capsys.readouterr().out
