"""The command line: `adaptact list`, and clear errors with exit code 2 for bad input."""

import os
import subprocess
import sys

import pytest

import adaptact
from adaptact.cli import main
from tests.datasets.test_data import write_idx


def test_list_table_has_every_activation(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "| name" in lines[0] and "adapts per sample" in lines[0] and "paper" in lines[0]
    assert len(lines) == 2 + len(adaptact.available()) + 3
    assert lines[-2].startswith("Gated (GLU) forms")
    assert "swiglu_oss" in lines[-2] and "acon_c_glu" in lines[-2]
    assert lines[-1].startswith("Other names:") and "gelu_new (gelu_tanh)" in lines[-1]
    row = next(line for line in lines if line.startswith("| acon_c "))
    assert "| adaptive " in row and "| 3 " in row and "Ma et al., CVPR 2021" in row
    row = next(line for line in lines if line.startswith("| meta_acon_c "))
    assert "| yes               |" in row


def test_list_csv_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "adaptact", "list", "--format", "csv", "--family",
                          "adaptive"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith("name,family,learnable")
    assert sorted(line.split(",")[0] for line in out.splitlines()[1:]) == adaptact.available("adaptive")


def test_the_adaptact_script_imports_module_specs_from_the_working_directory(tmp_path):
    """The installed ``adaptact`` script runs with its bin folder first on sys.path, not the working
    directory (``python -P`` does the same); a researcher's ``acts.py`` beside them is found all
    the same, as under ``python -m adaptact``."""
    (tmp_path / "my_acts.py").write_text(
        "import torch, adaptact\n"
        "adaptact.define('twice_tanh', lambda x, a: a * torch.tanh(x), scalars={'a': 2.0})\n")
    script = "import sys; from adaptact.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-P", "-c", script, "props", "--no-cost", "--format", "csv",
                          "my_acts:twice_tanh"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith("twice_tanh,")


def _compare(tmp_path, *extra):
    return ["compare", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out"), "--no-progress",
            "--seeds", "1", "--epochs", "1", *extra]


def test_missing_data_exit_2(tmp_path, capsys, no_system_data):
    assert main(_compare(tmp_path, "--dataset", "fashion-mnist")) == 2
    err = capsys.readouterr().err
    assert "adaptact: error: fashion-mnist: no folder with its four IDX files" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "r.sqlite").exists()


def test_corrupt_idx_exit_2(tmp_path, capsys, no_system_data):
    write_idx(tmp_path / "d")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    assert main(_compare(tmp_path, "--dataset", "mnist", "--data-dir", str(tmp_path / "d"))) == 2
    assert f"{bad}: truncated or corrupt IDX data" in capsys.readouterr().err


def test_unknown_activation_exit_2(tmp_path, capsys):
    assert main(_compare(tmp_path, "--dataset", "digits", "--activations", "relu,acon_x")) == 2
    expected = "unknown activation 'acon_x'; did you mean 'acon_c', 'acon_b', 'acon_a'?"
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--lrs", "0.01,-1"], "argument --lrs: must be a finite number > 0, got -1"),
    (["--lrs", "fast"], "argument --lrs: 'fast' is not a valid float"),
    (["--seeds", "0"], "must be a finite number > 0, got 0"),
    (["--epochs", "two"], "'two' is not a valid int"),
    (["--executor", "slurm"], "invalid choice: 'slurm'"),
])
def test_bad_option_values_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(_compare(tmp_path, *args))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_dataset_exit_2(tmp_path, capsys):
    assert main(_compare(tmp_path, "--dataset", "cifar")) == 2
    assert "unknown data set 'cifar'; choose from" in capsys.readouterr().err


def test_unknown_optimizer_exit_2(tmp_path, capsys):
    assert main(_compare(tmp_path, "--dataset", "digits", "--optimizers", "sgd,rmsprop")) == 2
    assert "unknown optimizer 'rmsprop'; choose from sgd, adam" in capsys.readouterr().err


def test_report_without_db_exit_2(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no results database at" in capsys.readouterr().err
