"""`compare --protocol arelu` runs the AReLU paper's experiment as its official code does
(densechen/AReLU: main_mnist.py, utils.py, models/conv.py, activations/), read back from the
stored configs; its comparators equal that code's formulas; one real run equals the official loop."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import adaptact
from adaptact import cli
from adaptact.datasets import builtin as D
from adaptact.experiments import sweep
from adaptact.models.catalogue import ConvMNIST
from adaptact.experiments.cells import grouped
from adaptact.experiments.store import ResultStore
from adaptact.experiments.train import RunConfig, result_row, run
from adaptact.errors import UserError

from tests.datasets.test_data import write_idx

# The paper's Table 1, written out here rather than imported: what the protocol must give.
PAPER_NON_LEARNABLE = {"celu", "elu", "gelu_arelu", "leaky_relu", "maxout_pool", "rrelu", "relu", "relu6",
                       "selu", "sigmoid", "softplus", "swish_fixed", "tanh"}
PAPER_LEARNABLE = {"apl", "mixture", "pau", "prelu_shared", "slaf"}
PAPER_RATES = {1e-2, 1e-3, 1e-4, 1e-5}


@pytest.fixture(autouse=True)
def isolated(no_system_data):
    yield


def _fake_run(config: RunConfig) -> dict:
    """Stores the config as a run would, without training."""
    return result_row(config, "ok", "", [1.0] * config.epochs, [], [0.5] * config.epochs, 1.0, 0, -1)


def _compare(monkeypatch, tmp_path, *options: str) -> list[dict]:
    monkeypatch.setattr(sweep, "run", _fake_run)
    write_idx(tmp_path / "mnist", n_train=20, n_test=10)
    db = tmp_path / "runs.sqlite"
    assert cli.main(["compare", "--protocol", "arelu", "--data-dir", str(tmp_path / "mnist"), "--db", str(db),
                     "--out", str(tmp_path / "report"), "--no-progress", *options]) == 0
    with ResultStore(db, create=False) as store:
        return store.rows()


def test_arelu_protocol_stores_exactly_the_official_settings(monkeypatch, tmp_path):
    rows = _compare(monkeypatch, tmp_path)
    combos = {(r["activation"], r["optimizer"], r["lr"], r["seed"]) for r in rows}
    expected = set(itertools.product(PAPER_NON_LEARNABLE | PAPER_LEARNABLE | {"arelu"}, ("sgd", "adam"),
                                     PAPER_RATES, range(5)))
    assert combos == expected and len(rows) == len(expected) == 19 * 2 * 4 * 5
    settings = {(r["dataset"], r["model"], r["epochs"], r["batch_size"], r["scale"], r["loss"],
                 r["validation"], r["policy"]) for r in rows}
    assert settings == {("mnist", "conv", 20, 128, "unit", "nll", 0.0, "all")}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "- protocol: arelu" in report and "inputs in [0, 1] (ToTensor)" in report
    assert "log-softmax + NLL" in report and "Best test accuracy over 20 epochs" in report


def test_options_override_the_protocol(monkeypatch, tmp_path):
    rows = _compare(monkeypatch, tmp_path, "--optimizers", "sgd", "--lrs", "0.1", "--seeds", "2",
                    "--activations", "relu,acon_c", "--epochs", "3")
    assert {(r["activation"], r["optimizer"], r["lr"], r["seed"]) for r in rows} == \
        set(itertools.product(("relu", "acon_c"), ("sgd",), (0.1,), (0, 1)))
    assert {(r["epochs"], r["scale"], r["loss"], r["validation"]) for r in rows} == {(3, "unit", "nll", 0.0)}


def test_the_report_groups_the_paper_families():
    names = PAPER_NON_LEARNABLE | PAPER_LEARNABLE | {"arelu"}
    groups = dict(grouped([{"activation": a} for a in names]))
    assert set(groups["Non-learnable"]) == PAPER_NON_LEARNABLE
    assert set(groups["Learnable"]) == PAPER_LEARNABLE
    assert groups["Adaptive"] == ["arelu"]


def test_an_unknown_protocol_is_a_user_error():
    with pytest.raises(UserError, match="unknown protocol 'arelu2'; choose from default, arelu"):
        adaptact.compare(protocol="arelu2")


def test_unit_scale_is_totensor(tmp_path):
    arrays = write_idx(tmp_path / "d")
    ds = D.load("mnist", str(tmp_path / "d"), "unit")
    expected = torch.from_numpy(arrays["train_x"]).float().div(255).unsqueeze(1)  # ToTensor: bytes / 255
    assert torch.equal(ds.train_x, expected)
    assert float(ds.test_x.min()) >= 0 and float(ds.test_x.max()) <= 1
    with pytest.raises(D.DataError, match="scale 'unit' is for images"):
        D.load("mnist1d", None, "unit")


def test_a_protocol_run_equals_the_official_training_loop(tmp_path):
    """Our run under the protocol against main_mnist.py's loop written out: ToTensor inputs, the
    network's LogSoftmax then F.nll_loss, SGD(momentum=0.9), all training samples, test after
    each epoch, best = max over epochs."""
    arrays = write_idx(tmp_path / "d", n_train=300, n_test=64, rng=np.random.default_rng(3))
    config = RunConfig(dataset="mnist", model="conv", activation="relu", optimizer="sgd", lr=1e-2, seed=1,
                       epochs=3, batch_size=32, scale="unit", loss="nll", validation=0.0,
        data_dir=str(tmp_path / "d"))
    row = run(config)
    assert row["status"] == "ok" and row["val_acc"] == []

    x = torch.from_numpy(arrays["train_x"]).float().unsqueeze(1) / 255
    y = torch.from_numpy(arrays["train_y"]).long()
    tx = torch.from_numpy(arrays["test_x"]).float().unsqueeze(1) / 255
    ty = torch.from_numpy(arrays["test_y"]).long()
    torch.manual_seed(1)
    net = ConvMNIST("relu")
    official = torch.nn.Sequential(net, torch.nn.LogSoftmax(dim=-1))
    opt = torch.optim.SGD(official.parameters(), lr=1e-2, momentum=0.9)
    order = torch.Generator().manual_seed(1)
    train = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # all of them, none held out
    accs, losses = [], []
    for _ in range(3):
        official.train()
        total = 0.0
        for idx in torch.randperm(len(train), generator=order).split(32):
            loss = F.nll_loss(official(x[train][idx]), y[train][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
        official.eval()
        with torch.no_grad():
            accs.append(float((official(tx).argmax(1) == ty).float().mean()))
    assert row["test_acc"] == pytest.approx(accs, abs=1e-12)
    assert row["train_loss"] == pytest.approx(losses, rel=1e-6)
    assert row["best_acc"] == max(accs) and row["best_epoch"] == accs.index(max(accs)) + 1


# The AReLU code's comparators, written from its activations/ files.
def _official_swish(x):
    return x * x.sigmoid()


def _official_swish_grad(x, g):  # its Swish_fun.backward
    result = x * x.sigmoid()
    return g * (result + x.sigmoid() * (1 - result))


def _official_gelu(x):
    return 0.5 * x * (1 + torch.tanh(0.7979946 * (x + 0.044715 * torch.pow(x, 3))))


def _official_maxout(x, pool_size):
    return x.view(*x.shape[:1], x.shape[1] // pool_size, pool_size, *x.shape[2:]).max(2)[0]


@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 5), (2, 6, 3, 3)])
def test_paper_comparators_equal_the_arelu_code(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(shape, dtype=torch.float64)
    swish = adaptact.create("swish_fixed").double()
    y = swish(x)
    torch.testing.assert_close(y, _official_swish(x), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(grad, _official_swish_grad(x, g), rtol=1e-12, atol=1e-14)
    assert not list(swish.parameters())

    torch.testing.assert_close(adaptact.create("gelu_arelu")(x), _official_gelu(x), rtol=0, atol=1e-15)
    assert not torch.allclose(adaptact.create("gelu_tanh")(x), _official_gelu(x), rtol=0, atol=1e-7)

    assert torch.equal(adaptact.create("maxout_pool")(x), x)  # the code's default pool_size=1
    torch.testing.assert_close(adaptact.create("maxout_pool", pool_size=2)(x), _official_maxout(x, 2))
    torch.testing.assert_close(adaptact.create("maxout_pool", pool_size=3)(x), _official_maxout(x, 3))

    prelu = adaptact.create("prelu_shared", channels=shape[1]).double()
    official = torch.nn.PReLU().double()  # the code's activation(): one slope, 0.25
    prelu.load_state_dict(official.state_dict())
    assert prelu.weight.shape == (1,) and prelu.weight.item() == 0.25
    torch.testing.assert_close(prelu(x), official(x), rtol=0, atol=0)


def test_maxout_pool_refuses_channels_it_cannot_group():
    with pytest.raises(ValueError, match="divisible by 4"):
        adaptact.create("maxout_pool", pool_size=4)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="pool_size"):
        adaptact.create("maxout_pool", pool_size=0)


def test_gelu_arelu_differs_from_the_paper_constant_by_the_codes_rounding():
    k = adaptact.nn.TanhGELU.ARELU_CODE
    assert abs(k - math.sqrt(2 / math.pi)) == pytest.approx(1.1e-4, abs=1e-5)
