"""The activation comparison from Python, with the options of ``adaptact compare``.

Everything that can be wrong with the request is checked before any training: names, numbers,
the output folders (writable), the results database (SQLite and adaptact's), the data (found and
sane) and the model (it takes the data's samples). Then the sweep runs, resumable from the
database, and the report is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..registry import spec
from . import data as bench_data
from .checks import finite_positive, int_in_range
from .executors import EXECUTORS, check_ray_address
from .files import writable_dir
from .models import MODELS, build
from .report import write_report
from .store import ResultStore
from .sweep import DEFAULT_ACTIVATIONS, RESNET_SUITE, SweepSummary, expand, run_sweep
from .train import OPTIMIZERS

__all__ = ["DEFAULT_MODEL", "MAX_LR", "MAX_RUNS", "MAX_SEEDS", "CompareResult", "check_fits", "compare",
           "report"]

DEFAULT_MODEL = {"fashion-mnist": "conv", "mnist": "conv", "mnist1d": "conv1d", "digits": "linear"}
MAX_SEEDS = 10_000
MAX_RUNS = 100_000  # configurations one request may ask for
MAX_LR = 1e6  # past this no optimizer step means anything (and float32 parameters overflow)


@dataclass
class CompareResult:
    summary: SweepSummary
    report: list[Path]  # report.md first


def check_fits(dataset: str, model: str, data_dir: str | None = None) -> None:
    """UserError unless ``model`` takes two samples of ``dataset`` and returns one score per class."""
    ds = bench_data.load(dataset, data_dir)
    shape = tuple(ds.train_x.shape[1:])
    try:
        with torch.no_grad():
            out = build(model, "relu", shape, ds.num_classes).eval()(ds.train_x[:2])
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"model {model!r} does not fit data set {dataset!r} (samples of shape {shape}): "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if tuple(out.shape) != (min(2, len(ds.train_x)), ds.num_classes):
        raise UserError(f"model {model!r} gives outputs of shape {tuple(out.shape)} for data set "
                        f"{dataset!r}, expected (N, {ds.num_classes})")


def compare(dataset: str = "mnist1d", model: str | None = None,
            activations: Sequence[str] = DEFAULT_ACTIVATIONS, optimizers: Sequence[str] = ("sgd", "adam"),
            lrs: Sequence[float] = (1e-2, 1e-3), seeds: int = 5,
            epochs: int = 5, batch_size: int = 128, workers: int = 1, executor: str = "local",
            address: str | None = None, data_dir: str | None = None, db: str | Path = "results.sqlite",
            out: str | Path = "report", save_checkpoints: str | Path | None = None, suite: str | None = None,
            progress: bool = True) -> CompareResult:
    """Train ``model`` with each activation x optimizer x lr x seed (0..seeds-1) on ``dataset``,
    store each finished run in ``db`` and write the report to ``out``. ``suite="resnet"``: the
    ACON paper's ResNet comparison (its model and activations, Meta-ACON-C after the 3x3 convs).
    Runs already in ``db`` are not run again. Raises UserError for anything wrong with the request,
    before training."""
    policies: dict[str, str] = {}
    if suite is not None:
        if suite != "resnet":
            raise UserError(f"unknown suite {suite!r}; choose from resnet")
        model = model or RESNET_SUITE["model"]
        activations = list(RESNET_SUITE["activations"])
        policies = RESNET_SUITE["policies"]
    if dataset not in bench_data.DATASETS:
        raise UserError(f"unknown data set {dataset!r}; choose from {', '.join(bench_data.DATASETS)}")
    model = model or DEFAULT_MODEL[dataset]
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    try:
        activations = [spec(a).name for a in activations]
    except ValueError as err:
        raise UserError(str(err)) from None
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        raise UserError(f"unknown optimizer {bad[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise UserError("an address needs the ray executor (--executor ray)")
    if address:
        check_ray_address(address)
    if not activations or not optimizers or not lrs:
        raise UserError("name at least one activation, optimizer and learning rate")
    lrs = [finite_positive("a learning rate", lr) for lr in lrs]
    if max(lrs) > MAX_LR:
        raise UserError(f"learning rates must be at most {MAX_LR:g}, got {max(lrs):g}")
    for name, value, high in (("seeds", seeds, MAX_SEEDS), ("epochs", epochs, None),
                              ("batch size", batch_size, None), ("workers", workers, None)):
        int_in_range(name, value, 1, high)
    runs = len(activations) * len(optimizers) * len(lrs) * seeds
    if runs > MAX_RUNS:
        raise UserError(f"{runs} runs asked for; at most {MAX_RUNS} in one request")
    out = writable_dir(out, "report folder")
    if save_checkpoints is not None:
        writable_dir(save_checkpoints, "checkpoint folder")
    check_fits(dataset, model, data_dir)
    with ResultStore(db) as store:  # a database that is not ours fails here, before any training
        configs = expand(dataset, model, activations, optimizers, lrs, seeds, epochs, batch_size, data_dir,
                         None if save_checkpoints is None else str(save_checkpoints), policies)
        summary = run_sweep(configs, store, executor, workers, address, progress)
        keys = {c.key for c in configs}
        rows = [r for r in store.rows() if r["key"] in keys]
    return CompareResult(summary, write_report(rows, out))


def report(db: str | Path, out: str | Path = "report", dataset: str | None = None) -> list[Path]:
    """Rebuild the report of the runs in ``db`` (those on ``dataset`` only, if given) in ``out``."""
    with ResultStore(db, create=False) as store:
        rows = [r for r in store.rows() if dataset in (None, r["dataset"])]
    if not rows:
        raise UserError(f"no runs in {db}" + (f" for data set {dataset}" if dataset else ""))
    return write_report(rows, writable_dir(out, "report folder"))

