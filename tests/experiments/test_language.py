"""Language modelling in the comparison: windows, the fixed evaluation, a run by iterations with
nanoGPT's schedule, the loss carried through the store, the report and the command line."""

import math
import sqlite3

import pytest
import torch

from adaptact.cli import main
from adaptact.datasets import builtin
from adaptact.errors import UserError
from adaptact.experiments import language
from adaptact.experiments.comparison import CompareRequest
from adaptact.experiments.cells import LOSS, usable
from adaptact.experiments.report import markdown_table, write_report
from adaptact.experiments.request import plan
from adaptact.experiments.store import ResultStore
from adaptact.experiments.train import RunConfig, lr_at, result_row, run


def test_windows_are_inputs_and_next_characters():
    tokens = torch.arange(100)
    x, y = language.windows(tokens, torch.tensor([3, 50]), 8)
    assert x.tolist()[0] == list(range(3, 11)) and y.tolist()[1] == list(range(51, 59))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first, second = language.sample_batch(tokens, 4, 8, g1), language.sample_batch(tokens, 4, 8, g2)
    torch.testing.assert_close(first, second)
    starts = language.eval_starts(100, 8)
    assert len(starts) == language.EVAL_WINDOWS and int(starts.max()) <= 100 - 9
    torch.testing.assert_close(starts, language.eval_starts(100, 8))  # the same windows for every run
    with pytest.raises(ValueError, match="holds no window of 9"):
        language.sample_batch(torch.arange(9), 2, 8, g1)


def test_mean_loss_of_a_uniform_model_is_log_vocab():
    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 7)

    tokens = torch.randint(0, 7, (500,))
    loss = language.mean_loss(Uniform(), tokens, language.eval_starts(500, 16, 10), 16)
    assert loss == pytest.approx(math.log(7), rel=1e-6)


def test_nanogpt_schedule():
    lrs = [lr_at(s, 2000, 1e-3) for s in range(2000)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)  # 100 warm-up steps
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-4) and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[99:], lrs[100:]))  # the cosine only falls


@pytest.fixture
def few_windows(monkeypatch):
    """Runs measured on 16 windows per split instead of 256: the same code, a sixteenth of the time."""
    monkeypatch.setattr(language, "EVAL_WINDOWS", 16)


def _config(**kw):
    base = dict(dataset="shakespeare-char", model="gpt-char", activation="gelu", optimizer="adamw", lr=1e-3,
                seed=0, epochs=0, batch_size=4, iters=6, eval_every=3)
    return RunConfig(**{**base, **kw})


def test_a_language_model_run_is_measured_by_loss_and_repeats_exactly(few_windows):
    row = run(_config())
    assert row["status"] == "ok", row["error"]
    assert row["metric"] == "loss" and row["evals"] == [3, 6] and row["epochs"] == 0 and row["iters"] == 6
    assert len(row["val_loss"]) == len(row["test_loss"]) == len(row["train_loss"]) == 2
    assert row["test_acc"] == row["val_acc"] == [] and row["best_acc"] == 0.0
    best = min(range(2), key=lambda e: (row["val_loss"][e], e))
    assert row["best_epoch"] == best + 1 and row["best_loss"] == row["test_loss"][best]
    vocab = builtin.load("shakespeare-char").num_classes
    assert 3.0 < row["first_loss"] < math.log(vocab)  # below chance (unigram statistics) after 3 steps
    assert row["iter_time"] > 0 and row["saved_memory"] > 0
    assert usable(row)
    again = run(_config())
    assert again["test_loss"] == row["test_loss"] and again["train_loss"] == row["train_loss"]
    assert run(_config(seed=1))["test_loss"] != row["test_loss"]


def test_classification_by_iterations_evaluates_every_n():
    pytest.importorskip("sklearn")
    row = run(RunConfig(dataset="digits", model="linear", activation="relu", optimizer="adamw", lr=1e-3,
                        seed=0, epochs=0, batch_size=64, iters=25, eval_every=10))
    assert row["status"] == "ok" and row["metric"] == "accuracy"
    assert row["evals"] == [10, 20, 25] and len(row["test_acc"]) == len(row["val_acc"]) == 3
    assert row["last_acc"] > 0.5  # 25 AdamW steps on digits
    assert RunConfig(dataset="digits", model="linear", activation="relu", optimizer="sgd", lr=1e-2, seed=0,
                     epochs=2).identity().keys().isdisjoint({"iters", "eval_every"})  # old keys kept


def _rows(activation_losses):
    rows = []
    for activation, losses in activation_losses.items():
        for seed, loss in enumerate(losses):
            c = _config(activation=activation, seed=seed)
            rows.append(result_row(c, "ok", "", [2.0, 1.9], [loss + 0.01, loss + 0.02], [loss + 0.1, loss],
                                   evals=[3, 6], iter_time=0.2, saved=2**20))
    return rows


def test_the_report_speaks_of_loss_lower_is_better(tmp_path):
    rows = _rows({"gelu": [1.90, 1.92, 1.91], "acon_c": [1.85, 1.86, 1.86], "relu2": [1.95, 1.99, 1.97]})
    table = markdown_table(rows, "best_loss", baseline="gelu", measure=LOSS)
    # the validation loss picks the first evaluation, where the test loss is the stored loss + 0.1
    # lowest ranks first; Holm over the table's 2 comparisons tests acon_c's (the smaller p) at 97.5%
    assert "| acon_c | **1.957 ± 0.006 (1)<br>Δ -0.053 [-0.074, -0.033]*" in table
    assert "| relu2 | 2.070 ± 0.020 (3)<br>Δ +0.060 [+0.035, +0.085]*" in table  # then relu2's at 95%
    assert "| gelu | 2.010 ± 0.010 (2) |" in table and "| relu2 | 2.070 ± 0.020 (3)" in table
    write_report(rows, tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "Test loss (nats per character), mean ± standard deviation over seeds" in md
    assert "shakespeare-char, gpt-char, batch 4, 6 iterations" in md
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "- Better than gelu: acon_c." in summary and "- Worse than gelu: relu2." in summary
    # every run beats (or loses to) every run of gelu's: P 1 (0), Newcombe's interval for 3 against 3
    assert ("| 1 | acon_c | ADAMW lr=0.001 | -0.053 [-0.074, -0.033] | 1.00 [0.50, 1.00] | better | 3 |"
            in summary)
    assert ("| 2 | relu2 | ADAMW lr=0.001 | +0.060 [+0.035, +0.085] | 0.00 [0.00, 0.50] | worse | 3 |"
            in summary)
    assert "Δ nats per character [corrected interval]" in summary and "negative is lower" in summary
    assert "### Test bits per character at that evaluation" in md and "time per iteration (ms)" in md
    assert "| gelu | 2.900 ± 0.014 (2) |" in md  # 2.010 nats = 2.900 bits
    assert "accuracy" not in md.split("## Summary")[1]


def test_the_store_keeps_the_language_model_fields(tmp_path):
    row = _rows({"gelu": [1.9]})[0]
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add(row)
        back = store.rows()[0]
    for field in ("metric", "val_loss", "test_loss", "best_loss", "evals", "iters", "eval_every", "iter_time",
                  "saved_memory"):
        assert back[field] == row[field], field


def test_a_database_from_before_reads_as_accuracy_rows(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as con:  # the first schema, as a database written before the new columns
        con.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, dataset TEXT NOT NULL, model TEXT NOT NULL, "
                    "activation TEXT NOT NULL, optimizer TEXT NOT NULL, lr REAL NOT NULL, "
                    "seed INTEGER NOT NULL, "
                    "epochs INTEGER NOT NULL, batch_size INTEGER NOT NULL, protocol INTEGER NOT NULL, "
                    "first_epoch_acc REAL NOT NULL, best_acc REAL NOT NULL, wall_time REAL NOT NULL, "
                    "train_loss TEXT NOT NULL, test_acc TEXT NOT NULL, versions TEXT NOT NULL, "
                    "finished_at REAL NOT NULL)")
        con.execute("INSERT INTO runs VALUES ('k', 'digits', 'linear', 'relu', 'sgd', 0.01, 0, 2, 128, 1, "
                    "0.5, 0.6, 1.0, '[1.0, 0.5]', '[0.5, 0.6]', '{}', 0)")
    with ResultStore(db) as store:
        (row,) = store.rows()
    assert row["metric"] == "accuracy" and row["iters"] == 0 and row["val_loss"] == [] and usable(row)


@pytest.mark.parametrize("options, message", [
    ({"iters": None, "protocol": "default", "model": "gpt-char"},
     "a language model trains by iterations: give iters"),
    ({"epochs": 3}, "give iters or epochs, not both"),
    ({"epochs": 3, "iters": None},
     "protocol nanogpt trains by iterations \\(2000\\): give iters, not epochs"),
    ({"model": "conv"}, "shakespeare-char is text: its model must be a language model"),
    ({"eval_every": 50}, r"eval_every \(50\) must be at most iters \(10\)"),
])
def test_language_requests_are_checked(tmp_path, options, message):
    request = {"data": "shakespeare-char", "iters": 10, "out": tmp_path, **options}
    with pytest.raises(UserError, match=message):
        plan(CompareRequest(**request))


def test_a_language_model_wants_text(tmp_path):
    with pytest.raises(UserError, match="gpt-char is a language model: give it text"):
        plan(CompareRequest(data="mnist1d", model="gpt-char", iters=10, out=tmp_path))
    with pytest.raises(UserError, match="eval_every counts iterations: give iters too"):
        plan(CompareRequest(data="mnist1d", eval_every=3, out=tmp_path))


def test_the_nanogpt_protocol_is_the_default_for_text(tmp_path):
    p = plan(CompareRequest(data="shakespeare-char", out=tmp_path))
    assert p.settings["protocol"] == "nanogpt" and p.model == "gpt-char" and p.iters == 2000
    assert p.eval_every == 250 and p.optimizers == ["adamw"] and p.batch_size == 12 and p.baseline == "gelu"
    assert {"swiglu", "relu2", "xielu", "polynorm", "golu", "acon_c_glu", "swiglu_oss"} <= set(p.activations)


def test_compare_on_shakespeare_from_the_command_line(tmp_path, capsys, few_windows):
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    argv = ["compare", "--dataset", "shakespeare-char", "--iters", "4", "--eval-every", "2", "--batch-size",
            "2",
            "--activations", "gelu,relu2,acon_c_glu", "--seeds", "1", "--db", str(db), "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    md = (out / "report.md").read_text()
    assert "### Test loss at the evaluation with the lowest validation loss" in md and "| acon_c_glu |" in md
    assert "protocol: nanogpt" in md and "a vocabulary of" in md
    assert main(argv) == 0 and "0 runs done now, 3 already in" in capsys.readouterr().out
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "report.md").read_text()
    assert "against gelu at its best" in again and "Measure: the test loss at the evaluation" in again
    assert "| untested | 1 | 2 seeds or more to test it |" in again  # one seed: nothing to decide
