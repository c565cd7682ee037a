"""The APReLU paper's 1-D networks: residual units as its code builds them, depths, plain ConvNets,
any activation, replace_activations policies, and `compare --dataset bearing --snr`."""

import pytest
import torch
from torch import nn

import adaptact
from adaptact import cli
from adaptact.experiments import sweep
from adaptact.models.catalogue import MODELS, build
from adaptact.models.resnet1d import ConvNet1d, ResidualUnit1d, ResNet1d
from adaptact.experiments.store import ResultStore
from adaptact.experiments.train import result_row
from adaptact.errors import UserError


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("units", [6, 9, 12])
def test_depths_and_shapes(units):
    for name in (f"resnet1d-{units}", f"convnet1d-{units}"):
        assert name in MODELS
        model = build(name, "aprelu", (1, 512), 8)
        assert _count(model, ResidualUnit1d) == units
        assert _count(model, adaptact.APReLU) == 2 * units + 1  # two per unit and one at the head
        assert model(torch.randn(2, 1, 512)).shape == (2, 8)
    assert all(u.shortcut for u in build(f"resnet1d-{units}", "relu", (1, 64), 8).units)
    assert not any(u.shortcut for u in build(f"convnet1d-{units}", "relu", (1, 64), 8).units)


def test_a_unit_is_pre_activation_with_a_zero_padded_subsampled_identity():
    torch.manual_seed(0)
    unit = ResidualUnit1d(4, 8, 2, "relu").eval()
    x = torch.randn(3, 4, 10)
    residual = unit.conv2(torch.relu(unit.bn2(unit.conv1(torch.relu(unit.bn1(x))))))
    identity = torch.cat([torch.zeros(3, 2, 5), x[:, :, ::2], torch.zeros(3, 2, 5)], dim=1)  # pad both sides
    torch.testing.assert_close(unit(x), residual + identity)
    plain = ResidualUnit1d(4, 8, 2, "relu", shortcut=False).eval()
    plain.load_state_dict(unit.state_dict())
    torch.testing.assert_close(plain(x), residual)


def test_policies_reach_every_activation():
    model = ResNet1d(6, "relu", width=4)
    replaced = adaptact.replace_activations(model, "aprelu")
    assert len(replaced) == 13 and _count(model, adaptact.APReLU) == 13
    model(torch.randn(2, 1, 128)).sum().backward()
    only_heads = ConvNet1d(6, "relu", width=4)
    adaptact.replace_activations(only_heads, "prelu", policy=lambda path, m: path.endswith("act2"))
    assert _count(only_heads, adaptact.nn.PReLU) == 6 and _count(only_heads, nn.ReLU) == 7


def test_units_must_be_a_multiple_of_three():
    with pytest.raises(ValueError, match="multiple of 3"):
        ResNet1d(7)
    with pytest.raises(ValueError, match="unknown 1-D network"):
        build("resnet1d-x", "relu", (1, 64), 8)


def test_compare_runs_one_sweep_per_snr(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "run", lambda c: result_row(c, "ok", "", [1.0], [0.5], [0.5], 1.0, 0, -1))
    db = tmp_path / "runs.sqlite"
    assert cli.main(["compare", "--dataset", "bearing", "--snr", "5,1", "--model", "resnet1d-6",
                     "--activations", "relu,aprelu", "--optimizers", "adam", "--lrs", "0.01", "--seeds", "2",
                     "--epochs", "1",
                     "--db", str(db), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    with ResultStore(db, create=False) as store:
        rows = store.rows()
    assert {(r["dataset"], r["activation"], r["seed"]) for r in rows} == {
        (f"bearing-snr{s}@sim1", a, seed) for s in (5, 1) for a in ("relu", "aprelu") for seed in (0, 1)}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## bearing-snr5@sim1, resnet1d-6" in report and "## bearing-snr1@sim1, resnet1d-6" in report


@pytest.mark.parametrize("options, message", [
    (dict(data="digits", snr=[5.0]), "snr is for the simulated vibration signals"),
    (dict(data="bearing", snr=[]), "at least one SNR"),
    (dict(data="bearing", snr=[float("inf")]), "finite number of dB"),
    (dict(data="bearing", snr=[1e20]), "finite number of dB"),
])
def test_snr_errors(options, message, tmp_path):
    with pytest.raises(UserError, match=message):
        adaptact.compare(db=tmp_path / "db.sqlite", out=tmp_path / "out", **options)
