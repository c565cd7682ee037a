"""PNGs made headless, non-empty, with labelled axes; hooks collect the right tensors."""

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

import adaptact
from adaptact import functional as AF
from adaptact.analysis import inspect as ins
from adaptact.analysis.plots import plot_acon_family, plot_curves
from adaptact.experiments.checkpoints import save_checkpoint
from adaptact.models.catalogue import ConvMNIST
from adaptact.cli import main

matplotlib.use("Agg")


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved during the test, checked to have labelled axes."""
    saved = []
    original = Figure.savefig

    def savefig(self, path, *args, **kwargs):
        saved.append(self)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    yield saved
    for fig in saved:
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()


def _png(path):
    assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_and_derivatives(tmp_path, figures):
    _png(plot_curves(["relu", "silu", "arelu", "acon_c"], tmp_path / "c.png", derivative=True))
    assert len(figures) == 1 and len(figures[0].axes) == 2
    assert [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()] == ["relu", "silu", "arelu",
                                                                                   "acon_c"]


def test_acon_family(tmp_path, figures):
    _png(plot_acon_family(tmp_path / "f.png"))
    assert len(figures[0].axes[1].lines) == 5 + 2 * 5  # curves + two bound lines each


def test_cli_plot(tmp_path, figures, capsys):
    assert main(["plot", "acon_c", "-o", str(tmp_path / "a.png")]) == 0
    assert main(["plot", "relu", "mish", "--derivative", "-o", str(tmp_path / "b.png")]) == 0
    _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    assert main(["plot", "relux", "-o", str(tmp_path / "c.png")]) == 2
    assert "did you mean 'relu" in capsys.readouterr().err


def test_collect_matches_the_modules():
    torch.manual_seed(0)
    model = ConvMNIST("meta_acon_c").eval()
    x = torch.randn(12, 1, 28, 28)
    got = ins.collect(model, x, batch_size=5)
    first = model.features[2]
    expected = first.generate_beta(model.features[:2](x))
    torch.testing.assert_close(got.meta_acon_beta["features.2"], expected)
    assert [v.shape for v in got.meta_acon_beta.values()] == [(12, 10), (12, 20), (12, 40)]

    model = ConvMNIST("aprelu").eval()
    alpha = ins.collect(model, x).aprelu_alpha["features.5"]
    torch.testing.assert_close(alpha, model.features[5].generate_alpha(model.features[:5](x)))

    model = ConvMNIST("arelu").eval()
    got = ins.collect(model, x, keep_maps=3)
    pre, post = got.arelu_maps["features.2"]
    assert pre.shape == (3, 10, 12, 12)
    m = model.features[2]
    torch.testing.assert_close(post, AF.arelu(pre, m.alpha, m.beta))


def test_collect_dy_relu_pieces_and_frelu_share():
    torch.manual_seed(0)
    x = torch.randn(12, 1, 28, 28)
    model = ConvMNIST("dy_relu_b").eval()
    a, b = ins.collect(model, x, batch_size=5).dy_relu_pieces["features.2"]
    expected = model.features[2].coefficients(model.features[:2](x))
    torch.testing.assert_close(a, expected[0])
    torch.testing.assert_close(b, expected[1])
    assert a.shape == (12, 10, 2)

    model = ConvMNIST("frelu").eval()
    share = ins.collect(model, x, batch_size=5).frelu_share["features.2"]
    inp = model.features[:2](x)
    wins = model.features[2].condition(inp) > inp
    torch.testing.assert_close(share, wins.float().mean((2, 3)))
    assert share.shape == (12, 10) and 0 < float(share.mean()) < 1


def test_inspect_plots(tmp_path, figures):
    _png(ins.plot_dy_relu_pieces(torch.randn(8, 16, 2), torch.randn(8, 16, 2), tmp_path / "d.png"))
    _png(ins.plot_frelu_share(torch.rand(30, 16), tmp_path / "f.png"))
    beta = torch.rand(30, 16)
    _png(ins.plot_meta_acon_beta(beta, tmp_path / "b.png", samples=4, acon_beta=torch.rand(16)))
    _png(ins.plot_aprelu_alpha(torch.rand(30, 16), tmp_path / "a.png"))
    pre, post = torch.randn(3, 10, 12, 12), torch.randn(3, 10, 12, 12)
    _png(ins.plot_arelu_maps(torch.randn(3, 1, 28, 28), pre, post,
                             tmp_path / "m.png"))


def test_cli_inspect_end_to_end(tmp_path, figures, monkeypatch, capsys):
    from adaptact.datasets import builtin as D
    from tests.datasets.test_data import write_idx

    write_idx(tmp_path / "mnist", n_test=20)
    D.load.cache_clear()
    paths = []
    for act in ("meta_acon_c", "acon_c", "aprelu", "arelu"):
        model = ConvMNIST(act)
        config = {"model": "conv", "activation": act}
        paths += ["--checkpoint", str(save_checkpoint(tmp_path / f"{act}.pt", model, config, (1, 28, 28),
                                                      10))]
    out = tmp_path / "png"
    assert main(["inspect", *paths, "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"),
                 "--out", str(out)]) == 0
    for name in ("m0-meta_acon_beta.png", "m2-aprelu_alpha.png", "m3-arelu_maps.png"):
        _png(out / name)
    assert main(["inspect", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "mnist",
                 "--data-dir", str(tmp_path / "mnist")]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
    D.load.cache_clear()


def test_learned_activations_of_a_checkpoint(tmp_path, figures):
    from adaptact.experiments.checkpoints import load_checkpoint

    model = ConvMNIST("acon_c")
    path = save_checkpoint(tmp_path / "c.pt", model, {"model": "conv", "activation": "acon_c"}, (1, 28, 28),
                           10)
    loaded, _ = load_checkpoint(path)
    acts = ins.learned_activations(loaded)
    assert [label for label, _ in acts] == [f"features.{i} (AconC)" for i in (2, 5, 8)]
    torch.testing.assert_close(acts[0][1].p1, model.features[2].p1)
    assert main(["plot", "--checkpoint", str(path), "-o", str(tmp_path / "l.png")]) == 0
    _png(tmp_path / "l.png")
    assert isinstance(acts[0][1], adaptact.AconC)
