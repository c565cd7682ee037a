"""Fine-tuning in the comparison: a run starts from a pretrained run's network (its weights kept,
its head fresh, its activations converted where asked), resumes, never runs twice, and refuses a
checkpoint of another network in one line."""

import sqlite3

import pytest
import torch
from torch import nn

from adaptact.experiments import compare
from adaptact.experiments.checkpoints import CheckpointError, save_checkpoint
from adaptact.experiments.comparison import fine_tuning
from adaptact.experiments.finetune import classifier_head, start_from, transplant
from adaptact.experiments.train import RunConfig, checkpoint_name, run
from adaptact.errors import UserError

pytest.importorskip("mnist1d")


def _pretrained(tmp_path, activation="relu", seed=0, epochs=1):
    return RunConfig(dataset="mnist1d", model="conv1d", activation=activation, optimizer="sgd", lr=1e-2,
                     seed=seed, epochs=epochs, checkpoint_dir=str(tmp_path / "ckpt"))


def _target(activation="relu", seed=0, lr=1e-3):
    return RunConfig(dataset="mnist1d-shifted", model="conv1d", activation=activation, optimizer="sgd", lr=lr,
                     seed=seed, epochs=1)


def test_the_head_is_the_last_linear_with_one_output_per_class():
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.Sequential(nn.Linear(10, 3)))
    assert classifier_head(model, 10) == "2" and classifier_head(model, 3) == "3.0"
    with pytest.raises(ValueError, match="no nn.Linear with 7 outputs"):
        classifier_head(model, 7)


def test_transplant_keeps_every_weight_but_the_head_and_the_layers_whose_shapes_changed():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    target = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    fresh = transplant(target, source.state_dict(), head="4")
    assert fresh == ("0.weight", "4.weight", "4.bias")  # the input layer (8 -> 5 features) and the head
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k] if k in fresh else source.state_dict()[k]), k
    other = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 10))
    with pytest.raises(CheckpointError, match="holds another network than Sequential"):
        transplant(other, source.state_dict(), head="1")


def test_a_fine_tuning_run_starts_from_the_pretrained_network_with_a_fresh_head(tmp_path):
    pre = _pretrained(tmp_path)
    assert run(pre)["status"] == "ok"
    saved = torch.load(tmp_path / "ckpt" / checkpoint_name(pre), weights_only=True)["state_dict"]
    (config,) = fine_tuning([_target()], [pre], None, ("paper",))
    assert config.start == pre.key and config.key != _target().key  # the start is identity
    from adaptact.datasets.builtin import load

    start = start_from(config, load("mnist1d-shifted"), tmp_path / "ckpt" / checkpoint_name(pre))
    head = classifier_head(start.model, 10)
    assert start.fresh == (f"{head}.weight", f"{head}.bias")
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, saved[k]) != k.startswith(f"{head}."), k
    assert start.source_score == start.converted_score == -1.0  # no conversion, nothing measured


def test_a_conversion_with_init_match_keeps_the_pretrained_function_and_the_paper_init_does_not(tmp_path):
    """The ReLU network converted to ACON-C: with init="match" the source's test accuracy stays
    within a point (ACON-C with p1 = 1, p2 = 0 and a large beta is ReLU to ~1e-3); with the paper's
    random p1, p2 it falls."""
    pre = _pretrained(tmp_path, seed=1, epochs=10)
    assert run(pre)["status"] == "ok"
    match, paper = fine_tuning([_target("acon_c", seed=1)], [pre], "relu", ("match", "paper"))
    rows = {c.init: run(c) for c in (match, paper)}
    for row in rows.values():
        assert row["status"] == "ok" and row["source"] == "mnist1d" and row["start_activation"] == "relu"
        assert row["source_acc"] > 0.3  # a trained network, better than chance (0.1)
    assert abs(rows["match"]["converted_acc"] - rows["match"]["source_acc"]) <= 0.01
    assert rows["paper"]["converted_acc"] < rows["paper"]["source_acc"] - 0.05


def test_every_activation_of_a_seed_starts_with_the_same_fresh_head(tmp_path):
    """Paired by seed: converting (and measuring the conversion) leaves the head's initialisation
    and the copied weights as a run that keeps the pretrained activation has them."""
    pre = _pretrained(tmp_path, seed=3)
    run(pre)
    from adaptact.datasets.builtin import load

    path, ds = tmp_path / "ckpt" / checkpoint_name(pre), load("mnist1d-shifted")
    starts = {}
    for activation, init in (("relu", "paper"), ("acon_c", "paper"), ("acon_c", "match")):
        torch.manual_seed(3)
        (config,) = fine_tuning([_target(activation, seed=3)], [pre], "relu", (init,))
        starts[activation, init] = start_from(config, ds, path).model.state_dict()
    kept = starts["relu", "paper"]
    for state in starts.values():
        for k in ("classifier.weight", "classifier.bias", "features.0.weight"):
            assert torch.equal(state[k], kept[k]), k


def test_a_missing_checkpoint_is_trained_again_to_the_same_weights(tmp_path):
    pre = _pretrained(tmp_path, seed=2)
    run(pre)
    path = tmp_path / "ckpt" / checkpoint_name(pre)
    first = torch.load(path, weights_only=True)["state_dict"]
    path.unlink()
    (config,) = fine_tuning([_target(seed=2)], [pre], None, ("paper",))
    row = run(config)
    assert row["status"] == "ok" and any("was missing: it was trained again" in w for w in row["warnings"])
    again = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], again[k]) for k in first)


def _compare(tmp_path, **options):
    kwargs = dict(protocol="convert", activations=["relu", "arelu"], seeds=1, epochs=1, pretrain_epochs=1,
                  inits=["match"], db=tmp_path / "ft.sqlite", out=tmp_path / "report", progress=False)
    return compare(**{**kwargs, **options})


def test_fine_tuning_resumes_and_never_runs_twice(tmp_path):
    rows = _compare(tmp_path, activations=["relu"])
    assert rows.summary.ran == 2  # the relu network pretrained, then fine-tuned
    rows = _compare(tmp_path)
    assert rows.summary.ran == 1 and rows.summary.already_done == 2  # only arelu's conversion is new
    rows = _compare(tmp_path)
    assert rows.summary.ran == 0
    with sqlite3.connect(tmp_path / "ft.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 3
    report = (tmp_path / "report" / "report.md").read_text()
    for line in ("- protocol: convert", "- source: mnist1d", "- target: mnist1d-shifted",
                 "fine-tuned from mnist1d", "arelu (from relu, init match)",
                 "### The conversion before the first step: test accuracy (%) on mnist1d"):
        assert line in report


def test_a_checkpoint_of_another_network_is_a_one_line_error(tmp_path):
    _compare(tmp_path, activations=["relu"])
    (path,) = (tmp_path / "ft-checkpoints").iterdir()
    save_checkpoint(path, nn.Linear(40, 10), {"model": "linear", "dataset": "digits", "activation": "relu"},
                    (1, 40), 10)
    wrong = r"is another run's network \(model 'linear', dataset 'digits'"
    with pytest.raises(UserError, match=wrong) as err:
        _compare(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    (dict(protocol=None, data="mnist1d", base="relu"), "base is for fine-tuning: give the data set"),
    (dict(inits=["fitted"]), "inits are paper, match; got 'fitted'"),
    (dict(protocol="transfer", inits=["match"]), "give the base one"),
    (dict(source="mnist1d-shifted"), "the source and the target are both mnist1d-shifted"),
    (dict(source="shakespeare-char"), "fine-tuning a language model takes text for both"),
    (dict(protocol="convert-gpt", pretrain_epochs=5), r"by iterations \(2000\): give pretrain iters"),
    (dict(protocol="convert-gpt", pretrain_iters=0, pretrain_epochs=None), "a language model pretrains by"),
    (dict(pretrain_epochs=5, pretrain_iters=100), "give pretrain iters or pretrain epochs, not both"),
    (dict(pretrain_optimizer="lbfgs"), "unknown pretrain optimizer 'lbfgs'"),
    (dict(pretrain_lr=-1.0), "the pretraining learning rate"),
])
def test_fine_tuning_requests_are_checked_before_any_training(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        _compare(tmp_path, **options)
    assert not (tmp_path / "ft.sqlite").exists()


def test_a_language_model_starts_with_every_pretrained_weight_its_head_included(tmp_path, monkeypatch):
    from adaptact.datasets.builtin import load
    from adaptact.experiments import language

    monkeypatch.setattr(language, "EVAL_WINDOWS", 8)
    lm = dict(model="gpt-char", optimizer="adamw", epochs=0, batch_size=4, iters=3)
    pre = RunConfig(dataset="shakespeare-no-comedies", activation="gelu", lr=1e-3, seed=0,
                    checkpoint_dir=str(tmp_path / "ckpt"), **lm)
    assert run(pre)["status"] == "ok"
    path = tmp_path / "ckpt" / checkpoint_name(pre)
    saved = torch.load(path, weights_only=True)["state_dict"]
    target = RunConfig(dataset="shakespeare-comedies", activation="gelu", lr=3e-4, seed=0, **lm)
    (config,) = fine_tuning([target], [pre], None, ("paper",))
    start = start_from(config, load("shakespeare-comedies"), path)
    assert start.fresh == ()
    assert all(torch.equal(v, saved[k]) for k, v in start.model.state_dict().items())
    assert start.model.head.weight is start.model.tokens.weight  # still tied


def test_a_gelu_gpt_converted_keeps_its_head_and_with_init_match_its_loss(tmp_path, monkeypatch):
    """convert-gpt in small: a GELU GPT pretrained on the plays that are not comedies, converted to
    ACON-C and fine-tuned on the comedies. The language model keeps every weight, its head included
    (the same characters): the source loss measured before the conversion is the pretraining run's
    own last test loss; init="match" keeps it (ACON-C is x sigmoid(1.702 x), GELU to ~0.02), the
    paper's init raises it."""
    from adaptact.experiments import language

    monkeypatch.setattr(language, "EVAL_WINDOWS", 32)  # runs in this process (one worker)
    rows = compare(protocol="convert-gpt", activations=["gelu", "acon_c"], seeds=1, iters=2, eval_every=2,
                   pretrain_iters=40, db=tmp_path / "lm.sqlite", out=tmp_path / "report", progress=False)
    (pre,) = [r for r in rows if r["dataset"] == "shakespeare-no-comedies"]
    tuned = {(r["activation"], r["init"]): r for r in rows if r["dataset"] == "shakespeare-comedies"}
    assert set(tuned) == {("gelu", ""), ("acon_c", "match"), ("acon_c", "paper")}
    assert pre["iters"] == 40 and pre["eval_every"] == 4 and pre["epochs"] == 0  # a tenth, stored as keyed
    assert all(r["status"] == "ok" for r in rows)
    for r in tuned.values():
        assert r["source"] == "shakespeare-no-comedies" and r["start_activation"] == "gelu"
        assert r["source_acc"] == r["converted_acc"] == -1.0  # a loss, not an accuracy
    match, paper = tuned["acon_c", "match"], tuned["acon_c", "paper"]
    assert match["source_loss"] == pytest.approx(pre["test_loss"][-1], abs=1e-5)
    assert abs(match["converted_loss"] - match["source_loss"]) <= 0.01
    assert paper["converted_loss"] > paper["source_loss"] + 0.05
    report = (tmp_path / "report" / "report.md").read_text()
    for line in ("- protocol: convert-gpt", "the head kept (the same characters)",
                 "### Test loss at the first evaluation", "acon_c (from gelu, init match)",
                 "### The conversion before the first step: test loss (nats per character) on "
                 "shakespeare-no-comedies"):
        assert line in report
