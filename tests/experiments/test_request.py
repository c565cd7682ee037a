"""One request object for the comparison: keyword-only, built alike by Python and the CLI, checked
whole before any work."""

import dataclasses

import pytest

import adaptact
from adaptact.cli import main
from adaptact.errors import UserError
from adaptact.experiments import comparison
from adaptact.experiments.request import CompareRequest, plan
from adaptact.experiments.sweep import SweepSummary
from adaptact.experiments.train import RunConfig


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        adaptact.compare("linear", "digits", ("relu",))
    with pytest.raises(TypeError):
        CompareRequest("linear", "digits")
    with pytest.raises(TypeError):
        RunConfig("digits", "linear", "relu", "sgd", 0.01, 0, 1)
    with pytest.raises(TypeError, match="activation"):
        adaptact.compare("linear", "digits", activation=("relu",))  # a misspelt option is not ignored


def test_the_cli_and_python_build_the_same_request(tmp_path, monkeypatch):
    seen = []

    def run(request):
        seen.append(request)
        return comparison.Rows([], SweepSummary(total=0, already_done=0, ran=0), [tmp_path / "report.md"])

    monkeypatch.setattr(comparison, "run", run)
    argv = ["compare", "--dataset", "digits", "--model", "linear", "--activations", "relu,acon_c",
            "--optimizers", "sgd", "--lrs", "0.01", "--seeds", "2", "--epochs", "1", "--db",
            str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    adaptact.compare("linear", "digits", activations=["relu", "acon_c"], optimizers=["sgd"], lrs=[0.01],
                     seeds=2, epochs=1, db=str(tmp_path / "r.sqlite"), out=str(tmp_path / "out"),
                     progress=False)
    cli, python = seen
    assert dataclasses.replace(cli, command=None) == python


@pytest.mark.parametrize(("options", "message"), [
    ({"activations": ["relu", "nope"]}, "nope"),
    ({"optimizers": ["rmsprop"]}, "unknown optimizer 'rmsprop'"),
    ({"lrs": [0.0]}, "learning rate"),
    ({"seeds": 0}, "seeds"),
    ({"executor": "slurm"}, "unknown executor 'slurm'"),
    ({"amp": "fp8"}, "amp must be bf16 or fp16"),
    ({"snr": [5]}, "snr is for the simulated vibration signals"),
])
def test_plan_refuses_a_bad_request_in_one_line_before_any_work(options, message, tmp_path):
    request = CompareRequest(model="linear", data="digits", out=tmp_path / "out", **options)
    with pytest.raises(UserError, match=message) as err:
        plan(request)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_plan_resolves_the_protocol_and_canonical_names(tmp_path):
    p = plan(CompareRequest(data="digits", activations=["ReLU", "acon_c"], out=tmp_path / "out"))
    assert p.model == "linear" and p.activations == ["relu", "acon_c"] and p.settings["protocol"] == "default"
    assert p.datasets == ["digits"] and p.device == "cpu"
