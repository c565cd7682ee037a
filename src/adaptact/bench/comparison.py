"""The activation comparison from Python, with the options of ``adaptact compare``.

Everything that can be wrong with the request is checked before any training: names, numbers,
the output folders (writable), the results database (SQLite and adaptact's), the data (found and
sane) and the model (it takes the data's samples). Then the sweep runs, resumable from the
database, and the report is written.
"""

from __future__ import annotations

import math
import os
import pickle
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..nn import ActivationModule
from ..registry import spec
from . import data as bench_data
from . import checks
from .checks import finite_positive, int_in_range
from .executors import EXECUTORS, check_ray_address
from .files import writable_dir
from .report import write_report
from .sources import Source, build_model, data_source, model_source
from .store import ResultStore
from .protocols import resolve
from .sweep import RESNET_SUITE, SweepSummary, expand, run_sweep
from .train import LOSSES, OPTIMIZERS, held_out, versions

__all__ = ["DEFAULT_MODEL", "MAX_LR", "MAX_RUNS", "MAX_SEEDS", "Rows", "check_fits",
           "compare", "report"]

DEFAULT_MODEL = {"fashion-mnist": "conv", "mnist": "conv", "mnist1d": "conv1d", "digits": "linear",
                 "bearing": "resnet1d-9"}
MAX_SEEDS = 10_000
MAX_RUNS = 100_000  # configurations one request may ask for
MAX_LR = 1e6  # past this no optimizer step means anything (and float32 parameters overflow)


class Rows(list):
    """The stored rows of a comparison's runs (dicts, as ``ResultStore.rows``), with ``summary``
    (runs total, already stored, run now) and ``report`` (the files written, report.md first)."""

    def __init__(self, rows: list[dict], summary: SweepSummary, report: list[Path]) -> None:
        super().__init__(rows)
        self.summary = summary
        self.report = report


def check_fits(data: Source, model: Source, ds: bench_data.Dataset, activations: Sequence[str] = ("relu",),
               policies: Mapping[str, str] | None = None) -> None:
    """UserError unless ``model`` with each of ``activations`` (placed by its policy in
    ``policies``, default "all") takes two samples of ``ds`` and returns one score per class:
    an activation that cannot take the model's tensors (FReLU after a Linear layer) is refused
    here, before any training, not stored as a failed run."""
    shape = tuple(ds.train_x.shape[1:])
    for activation in dict.fromkeys(("relu", *activations)):
        what = f"model {model.label!r}" + ("" if activation == "relu" else f" with activation {activation!r}")
        try:
            policy = (policies or {}).get(activation, "all")
            net = build_model(model, activation, shape, ds.num_classes, policy)
            for m in net.modules():  # the probe needs no compiled kernels: same checks, no compile time
                if isinstance(m, ActivationModule):
                    m.backend = "autograd"
            with torch.no_grad():
                out = net.eval()(ds.train_x[:2])
        except (RuntimeError, ValueError, TypeError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{what} does not fit data {data.label!r} (samples of shape {shape}): "
                            f"{message}") from None
        if tuple(out.shape) != (min(2, len(ds.train_x)), ds.num_classes):
            raise UserError(f"{what} gives outputs of shape {tuple(out.shape)} for data {data.label!r}, "
                            f"expected (N, {ds.num_classes})")


def _max_workers(executor: str) -> int | None:
    """Local workers each hold a copy of torch and the data: more than a few per core only
    exhausts memory. A Ray cluster sets its own limits."""
    return 4 * (os.cpu_count() or 1) if executor == "local" else None


def _shippable(source: Source, what: str, workers: int, executor: str) -> None:
    """A factory or loader given from Python must reach worker processes by reference."""
    if callable(source.ref) and (workers > 1 or executor != "local"):
        try:
            pickle.dumps(source.ref)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise UserError(f"{what} {source.label} cannot be sent to worker processes ({err}): define it at "
                            f"module level, give a module:attribute spec, or use workers=1") from None


def _setup(data: Source, model: Source, ds: bench_data.Dataset, device: str, command: str | None,
           settings: dict) -> dict:
    n_train = len(ds.train_y)
    held = held_out(n_train, settings["validation"])
    scale = {"standard": "standardised with the training set's mean and std",
             "unit": "in [0, 1] (ToTensor)"}[settings["scale"]] if data.ref is None else "as given"
    return {"protocol": settings["protocol"],
            "data": f"{data.label}: {n_train - held} train, {held} validation, {len(ds.test_y)} test samples "
                    f"of shape {tuple(ds.train_x.shape[1:])}, {ds.num_classes} classes; inputs {scale}",
            "model": model.label,
            "loss": {"cross_entropy": "cross-entropy", "nll": "log-softmax + NLL"}[settings["loss"]],
            "device": device, "command": command or "adaptact.bench.compare(...)",
            "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}


def compare(model: str | Callable | None = None, data=None,
            activations: Sequence[str] | None = None, optimizers: Sequence[str] | None = None,
            lrs: Sequence[float] | None = None, seeds: int | None = None, epochs: int | None = None,
            batch_size: int | None = None, db: str | Path = "results.sqlite", out: str | Path = "report",
            baseline: str | None = "relu", workers: int = 1, executor: str = "local", device: str = "auto",
            progress: bool = True, address: str | None = None, data_dir: str | None = None,
            save_checkpoints: str | Path | None = None, suite: str | None = None, amp: str | None = None,
            compile: bool = False, command: str | None = None, protocol: str | None = None,
            scale: str | None = None, loss: str | None = None, validation: float | None = None,
            snr: Sequence[float] | None = None) -> Rows:
    """Train ``model`` with each activation x optimizer x lr x seed (0..seeds-1) on ``data``,
    store each finished run in ``db`` and write the report to ``out``; returns the stored rows.

    ``protocol``: the named settings (``bench.protocols.PROTOCOLS``) every setting left None takes:
    "default" (MNIST-1D, the default activation set, SGD at lr 1e-2, 3 seeds, 5 epochs, batch 128,
    standardised inputs, cross-entropy, 10% validation split) or "arelu" (the AReLU paper's
    experiment as its code runs it: MNIST in [0, 1], ConvMNIST, log-softmax + NLL, SGD and Adam at
    lr 1e-2..1e-5, 5 seeds, 20 epochs, its activation set, best test accuracy over the epochs).
    ``scale``, ``loss``, ``validation``: as ``bench.protocols.Protocol``. ``snr`` (with
    ``data="bearing"``, the simulated vibration signals of ``bench.bearing``): one sweep per SNR
    in dB, white noise added at that SNR (the APReLU paper: 5, 3, 1); each is its own data set,
    ``bearing-snr<dB>``, in the database and the report.

    ``model``: a built-in name (default: the one for the data), a ``module:attribute`` spec or a
    callable ``activation_name -> nn.Module``. ``data``: a built-in name, a ``module:attribute``
    spec, a tuple ``(train_x, train_y, test_x, test_y)`` of tensors or a callable returning one.
    ``baseline``: the activation the report compares the others with. ``amp``: "bf16" or "fp16"
    (CUDA) mixed precision; ``compile``: torch.compile each model. ``suite="resnet"``: the
    ACON paper's ResNet comparison (its model and activations, Meta-ACON-C after the 3x3 convs).
    Runs already in ``db`` are not run again; a run that fails or diverges is stored with its
    status and the sweep goes on. Raises UserError for anything wrong with the request, before
    training. ``command``: how the request was made, for the report's setup block."""
    settings = resolve(protocol, dataset=data, model=model, activations=activations, optimizers=optimizers,
                       lrs=lrs, seeds=seeds, epochs=epochs, batch_size=batch_size, scale=scale, loss=loss,
                       validation=validation)
    settings["protocol"] = protocol or "default"
    data, model, activations, optimizers, lrs, seeds, epochs, batch_size = (
        settings[k] for k in ("dataset", "model", "activations", "optimizers", "lrs", "seeds", "epochs",
                              "batch_size"))
    policies: dict[str, str] = {}
    if suite is not None:
        if suite != "resnet":
            raise UserError(f"unknown suite {suite!r}; choose from resnet")
        model = model or RESNET_SUITE["model"]
        activations = list(RESNET_SUITE["activations"])
        policies = RESNET_SUITE["policies"]
    if isinstance(data, str) and not bench_data.builtin(data) and ":" not in data:
        raise UserError(f"unknown data set {data!r}; choose from {', '.join(bench_data.DATASETS)}, or give "
                        "module:attribute of your own loader")
    datasets = [data]
    if snr is not None:
        if data != "bearing":
            raise UserError("snr is for the simulated vibration signals (--dataset bearing)")
        if not snr:
            raise UserError("name at least one SNR")
        from .bearing import MAX_SNR_DB

        bad_snr = [v for v in snr
                   if not (isinstance(v, int | float) and math.isfinite(v) and abs(v) <= MAX_SNR_DB)]
        if bad_snr:
            raise UserError(f"an SNR must be a finite number of dB in [-{MAX_SNR_DB}, {MAX_SNR_DB}], got "
                            f"{bad_snr[0]!r}")
        datasets = list(dict.fromkeys(bench_data.bearing_name(float(v)) for v in snr))
    if model is None:
        family = data.split("-snr")[0] if isinstance(data, str) else None
        if family not in DEFAULT_MODEL:
            raise UserError("give a model for your own data (a built-in name, module:attribute or a factory)")
        model = DEFAULT_MODEL[family]
    try:
        activations = [spec(a).name for a in activations]
        if baseline is not None:
            baseline = spec(baseline).name
    except ValueError as err:
        raise UserError(str(err)) from None
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        raise UserError(f"unknown optimizer {bad[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    if settings["scale"] not in bench_data.SCALES:
        raise UserError(f"unknown scale {settings['scale']!r}; choose from {', '.join(bench_data.SCALES)}")
    if settings["loss"] not in LOSSES:
        raise UserError(f"unknown loss {settings['loss']!r}; choose from {', '.join(LOSSES)}")
    checks.share("validation", settings["validation"])
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise UserError("an address needs the ray executor (--executor ray)")
    if not activations or not optimizers or not lrs:
        raise UserError("name at least one activation, optimizer and learning rate")
    lrs = [finite_positive("a learning rate", lr) for lr in lrs]
    if max(lrs) > MAX_LR:
        raise UserError(f"learning rates must be at most {MAX_LR:g}, got {max(lrs):g}")
    for name, value, high in (("seeds", seeds, MAX_SEEDS), ("epochs", epochs, None),
                              ("batch size", batch_size, None), ("workers", workers, _max_workers(executor))):
        int_in_range(name, value, 1, high)
    runs = len(datasets) * len(activations) * len(optimizers) * len(lrs) * seeds
    if runs > MAX_RUNS:
        raise UserError(f"{runs} runs asked for; at most {MAX_RUNS} in one request")
    device = checks.device(device).type
    if amp not in (None, "bf16", "fp16"):
        raise UserError(f"amp must be bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device != "cuda":
        raise UserError("amp fp16 needs a CUDA device (use bf16 on the CPU)")
    out = writable_dir(out, "report folder")
    if save_checkpoints is not None:
        writable_dir(save_checkpoints, "checkpoint folder")
    if address:
        check_ray_address(address)
    net = model_source(model)
    in_process = workers == 1 and executor == "local"  # else tensors travel to workers as a file
    loaded = []
    for name in datasets:
        source, ds = data_source(name, data_dir, None if in_process else Path(db).parent / ".adaptact-cache",
                                 settings["scale"])
        check_fits(source, net, ds, activations, policies)
        _shippable(source, "data", workers, executor)
        loaded.append((source, ds))
    _shippable(net, "model", workers, executor)
    with ResultStore(db) as store:  # a database that is not ours fails here, before any training
        checkpoints = None if save_checkpoints is None else str(save_checkpoints)
        configs = [c for source, _ in loaded
                   for c in expand(source, net, activations, optimizers, lrs, seeds, epochs, batch_size,
                                   data_dir, checkpoints, policies, device, amp, compile, settings["scale"],
                                   settings["loss"], float(settings["validation"]))]
        summary = run_sweep(configs, store, executor, workers, address, progress)
        keys = {c.key for c in configs}
        rows = [r for r in store.rows() if r["key"] in keys]
    setups = [_setup(source, net, ds, device, command, settings) for source, ds in loaded]
    setup = {**setups[0], "data": "; ".join(s["data"] for s in setups)}
    files = write_report(rows, out, baseline=baseline, setup=setup)
    return Rows(rows, summary, files)


def report(db: str | Path, out: str | Path = "report", dataset: str | None = None,
           baseline: str | None = "relu") -> list[Path]:
    """Rebuild the report of the runs in ``db`` (those on ``dataset`` only, if given) in ``out``."""
    with ResultStore(db, create=False) as store:
        rows = [r for r in store.rows() if dataset in (None, r["dataset"])]
    if not rows:
        raise UserError(f"no runs in {db}" + (f" for data set {dataset}" if dataset else ""))
    return write_report(rows, writable_dir(out, "report folder"), baseline=baseline)
