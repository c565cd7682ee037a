"""What a comparison is asked for: ``CompareRequest``, built by keyword by ``adaptact.compare`` and
by ``adaptact compare`` alike, and ``plan``, which checks it whole (names, numbers, combinations)
and resolves the protocol's settings before anything is loaded or trained."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import checks
from ..checks import finite_positive, int_in_range
from ..datasets import builtin
from ..errors import UserError
from ..files import writable_dir
from ..registry import spec
from .executors import EXECUTORS
from ..models.catalogue import LANGUAGE_MODELS
from .protocols import INITS, for_data, resolve
from .sweep import RESNET_SUITE
from .train import LOSSES, OPTIMIZERS

__all__ = ["DEFAULT_MODEL", "MAX_LR", "MAX_RUNS", "MAX_SEEDS", "CompareRequest", "Plan", "plan"]

DEFAULT_MODEL = {"fashion-mnist": "conv", "mnist": "conv", "mnist1d": "conv1d", "digits": "linear",
                 "bearing": "resnet1d-9", "mnist1d-shifted": "conv1d", "digits-28": "conv",
                 **{name: "gpt-char" for name in builtin.TEXT_DATASETS}}
MAX_ITERS = 10_000_000
MAX_SEEDS = 10_000
MAX_RUNS = 100_000  # configurations one request may ask for
MAX_LR = 1e6  # past this no optimizer step means anything (and float32 parameters overflow)


@dataclass(frozen=True, kw_only=True)
class CompareRequest:
    """A comparison: train ``model`` with each activation x optimizer x lr x seed on ``data``.

    Settings left None take the ``protocol``'s (``experiments.protocols.PROTOCOLS``, "default"
    when None). ``model``: a built-in name (default: the data's), ``module:attribute`` or a
    callable ``activation_name -> nn.Module``. ``data``: a built-in name, ``module:attribute``, a
    tuple ``(train_x, train_y, test_x, test_y)`` of tensors or a callable returning one. ``iters``:
    train by iterations instead of epochs (nanoGPT's warm-up, cosine schedule and clipping),
    evaluating every ``eval_every`` (default a tenth of ``iters``); language models (the text data
    sets) train this way only. ``db``: the SQLite results database (runs in it are not run again);
    ``out``: the report folder; ``baseline``: the activation the report compares the others with
    (None: the protocol's; gelu for language models, else relu where it ran, else gelu);
    ``workers``/``executor``/``address``: where runs execute ("local" processes or a Ray cluster);
    ``device``: "auto", "cpu", "cuda[:i]"; ``amp``: "bf16" or "fp16" (CUDA) mixed precision; ``compile``:
    torch.compile each model; ``suite="resnet"``: the ACON paper's ResNet comparison; ``snr``:
    with ``data="bearing"``, one sweep per SNR in dB; ``save_checkpoints``: a folder for each
    trained model; ``command``: how the request was made, for the report's setup block;
    ``extra_runs``: runs beyond the grid that may go to seeds for the comparisons the verdict leaves
    unresolved (``comparison.compare``).

    Fine-tuning (the ``transfer`` and ``convert`` protocols, ``experiments/finetune.py``):
    ``source``, the data set each network is pretrained on before it is fine-tuned on ``data``
    (with ``pretrain_optimizer``, ``pretrain_lr``, ``pretrain_epochs`` or ``pretrain_iters``, the
    way of text, where a language model keeps its head; the checkpoints go to
    ``save_checkpoints``, else to ``<db>-checkpoints`` beside the database); ``base`` None
    pretrains every activation with itself, a name pretrains that activation and converts its
    network to each activation with each of ``inits`` ("paper", "match": ``replace_activations``)."""

    model: str | Callable | None = None
    data: Any = None
    activations: Sequence[str] | None = None
    optimizers: Sequence[str] | None = None
    lrs: Sequence[float] | None = None
    seeds: int | None = None
    epochs: int | None = None
    iters: int | None = None
    eval_every: int | None = None
    batch_size: int | None = None
    protocol: str | None = None
    scale: str | None = None
    loss: str | None = None
    validation: float | None = None
    suite: str | None = None
    snr: Sequence[float] | None = None
    baseline: str | None = None
    source: str | None = None
    base: str | None = None
    inits: Sequence[str] | None = None
    pretrain_optimizer: str | None = None
    pretrain_lr: float | None = None
    pretrain_epochs: int | None = None
    pretrain_iters: int | None = None
    db: str | Path = "results.sqlite"
    out: str | Path = "report"
    data_dir: str | None = None
    save_checkpoints: str | Path | None = None
    workers: int = 1
    executor: str = "local"
    address: str | None = None
    device: str = "auto"
    amp: str | None = None
    compile: bool = False
    progress: bool = True
    command: str | None = None
    extra_runs: int = 0


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A checked ``CompareRequest`` with its settings resolved: ``datasets`` (one per SNR for the
    bearing signals), canonical activation names, ``policies`` (activation -> where it goes in
    the model), ``settings`` (the protocol's, by name) and the device type."""

    request: CompareRequest
    datasets: list
    model: str | Callable
    activations: list[str]
    optimizers: list[str]
    lrs: list[float]
    seeds: int
    epochs: int
    batch_size: int
    baseline: str | None
    iters: int = 0
    eval_every: int = 0
    policies: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    out: Path = Path("report")
    checkpoints: Path | None = None  # where runs save their networks (pretraining runs always do)


def _max_workers(executor: str) -> int | None:
    """Local workers each hold a copy of torch and the data: more than a few per core only
    exhausts memory. A Ray cluster sets its own limits."""
    return 4 * (os.cpu_count() or 1) if executor == "local" else None


def _datasets(data: Any, snr: Sequence[float] | None) -> list:
    if isinstance(data, str) and not builtin.builtin(data) and ":" not in data:
        raise UserError(f"unknown data set {data!r}; choose from {', '.join(builtin.DATASETS)}, or give "
                        "module:attribute of your own loader")
    if snr is None:
        return [data]
    if data != "bearing":
        raise UserError("snr is for the simulated vibration signals (--dataset bearing)")
    if not snr:
        raise UserError("name at least one SNR")
    from ..datasets.bearing import MAX_SNR_DB

    bad = [v for v in snr if not (isinstance(v, int | float) and math.isfinite(v) and abs(v) <= MAX_SNR_DB)]
    if bad:
        raise UserError(f"an SNR must be a finite number of dB in [-{MAX_SNR_DB}, {MAX_SNR_DB}], "
                        f"got {bad[0]!r}")
    return list(dict.fromkeys(builtin.bearing_name(float(v)) for v in snr))


def _iterations(settings: Mapping[str, Any], datasets: list, model: object) -> tuple[int, int]:
    """(iters, eval_every) checked: 0, 0 to train by epochs. Text trains a language model, by
    iterations; the built-in language models take text only."""
    iters, every = settings["iters"] or 0, settings["eval_every"] or 0
    int_in_range("iters", iters, 0, MAX_ITERS)
    int_in_range("eval_every", every, 0, MAX_ITERS)
    text = [builtin.is_language_data(d) for d in datasets]
    if any(text) and not all(text):
        raise UserError("text and other data cannot share a comparison")
    language_model = isinstance(model, str) and model in LANGUAGE_MODELS
    if any(text):
        if isinstance(model, str) and not language_model and ":" not in model:
            raise UserError(f"{datasets[0]} is text: its model must be a language model "
                            f"({', '.join(LANGUAGE_MODELS)}, or your own), not {model!r}")
        if not iters:
            raise UserError("a language model trains by iterations: give iters (--iters N)")
    elif language_model:
        raise UserError(f"{model} is a language model: give it text ({', '.join(builtin.TEXT_DATASETS)})")
    if every and not iters:
        raise UserError("eval_every counts iterations: give iters too")
    if every > iters:
        raise UserError(f"eval_every ({every}) must be at most iters ({iters})")
    return iters, (every or max(1, iters // 10)) if iters else 0


def _fine_tuning(r: CompareRequest, settings: dict, datasets: list) -> None:
    """Check the fine-tuning settings in place (canonical names); UserError for the first wrong."""
    source = settings["source"]
    given = [n for n in ("base", "inits", "pretrain_optimizer", "pretrain_lr", "pretrain_epochs",
                         "pretrain_iters") if getattr(r, n) is not None]
    if source is None:
        if given:
            raise UserError(f"{given[0]} is for fine-tuning: give the data set to pretrain on (--source)")
        return
    if r.suite is not None or r.snr is not None:
        raise UserError("fine-tuning takes one target data set: no suite, no snr")
    _datasets(source, None)
    text = [builtin.is_language_data(d) for d in (source, *datasets)]
    if any(text) and not all(text):
        raise UserError("fine-tuning a language model takes text for both the source and the target "
                        f"({', '.join(builtin.TEXT_DATASETS)})")
    if source == datasets[0]:
        raise UserError(f"the source and the target are both {source}: fine-tune on another data set")
    try:
        settings["base"] = None if settings["base"] is None else spec(settings["base"]).name
    except ValueError as err:
        raise UserError(str(err)) from None
    inits = tuple(settings["inits"])
    bad = [i for i in inits if i not in INITS]
    if bad or not inits:
        raise UserError(f"inits are {', '.join(INITS)}; got {bad[0] if bad else 'none'!r}")
    if settings["base"] is None and inits != ("paper",):
        raise UserError("inits convert a network pretrained with another activation: give the base one "
                        "(--base)")
    settings["inits"] = tuple(dict.fromkeys(inits))
    if settings["pretrain_optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown pretrain optimizer {settings['pretrain_optimizer']!r}; choose from "
                        f"{', '.join(OPTIMIZERS)}")
    settings["pretrain_lr"] = finite_positive("the pretraining learning rate", settings["pretrain_lr"])
    if settings["pretrain_lr"] > MAX_LR:
        raise UserError(f"learning rates must be at most {MAX_LR:g}, got {settings['pretrain_lr']:g}")
    int_in_range("pretrain epochs", settings["pretrain_epochs"], 1, None)
    int_in_range("pretrain iters", settings["pretrain_iters"], 0, MAX_ITERS)
    if r.pretrain_epochs is not None and r.pretrain_iters is not None:
        raise UserError("give pretrain iters or pretrain epochs, not both")
    if r.pretrain_epochs is not None and settings["pretrain_iters"]:
        raise UserError(f"protocol {settings['protocol']} pretrains by iterations "
                        f"({settings['pretrain_iters']}): give pretrain iters, not pretrain epochs")
    if all(text) and not settings["pretrain_iters"]:
        raise UserError("a language model pretrains by iterations: give pretrain iters (--pretrain-iters N)")


def _canonical(activation: str, workers: int, executor: str) -> str:
    """The registry name of ``activation``; for one made by ``adaptact.define``, ``module:name``, which
    a worker process imports. A definition made in ``__main__`` runs in this process only (one local
    worker): a spawned worker cannot import it."""
    entry = spec(activation)
    if entry.definition is None:
        return entry.name
    if entry.definition.origin is not None:
        return f"{entry.definition.origin}:{entry.name}"
    if workers > 1 or executor != "local":
        raise ValueError(f"activation {entry.name!r} is defined in the script being run (__main__), which "
                         "worker processes cannot import: define it in an importable module, or use one "
                         "local worker")
    return entry.name


def plan(request: CompareRequest) -> Plan:
    """``request`` checked whole and resolved; UserError (one line) for the first thing wrong.
    Nothing is loaded, trained or written (the output folder is checked writable)."""
    r = request
    settings = resolve(r.protocol, dataset=r.data, model=r.model, activations=r.activations,
                       optimizers=r.optimizers, lrs=r.lrs, seeds=r.seeds, epochs=r.epochs,
                       batch_size=r.batch_size, scale=r.scale, loss=r.loss, validation=r.validation,
                       iters=r.iters, baseline=r.baseline, source=r.source, base=r.base, inits=r.inits,
                       pretrain_optimizer=r.pretrain_optimizer, pretrain_lr=r.pretrain_lr,
                       pretrain_epochs=r.pretrain_epochs, pretrain_iters=r.pretrain_iters,
                       # the protocol's period goes with its iterations: iters of one's own, a tenth of them
                       eval_every=r.eval_every if r.eval_every is not None or r.iters is None else 0)
    settings["protocol"] = r.protocol or for_data(settings["dataset"])
    data, model, activations = settings["dataset"], settings["model"], settings["activations"]
    policies: dict[str, str] = {}
    if r.suite is not None:
        if r.suite != "resnet":
            raise UserError(f"unknown suite {r.suite!r}; choose from resnet")
        model = model or RESNET_SUITE["model"]
        activations = list(RESNET_SUITE["activations"])
        policies = RESNET_SUITE["policies"]
    datasets = _datasets(data, r.snr)
    _fine_tuning(r, settings, datasets)
    if model is None:
        family = data.split("-snr")[0] if isinstance(data, str) else None
        if family not in DEFAULT_MODEL:
            raise UserError("give a model for your own data (a built-in name, module:attribute or a factory)")
        model = DEFAULT_MODEL[family]
    try:
        activations = [_canonical(a, r.workers, r.executor) for a in activations]
        baseline = None if settings["baseline"] is None else _canonical(settings["baseline"], r.workers,
                                                                          r.executor)
    except ValueError as err:
        raise UserError(str(err)) from None
    optimizers, lrs = list(settings["optimizers"]), list(settings["lrs"])
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        raise UserError(f"unknown optimizer {bad[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    if settings["scale"] not in builtin.SCALES:
        raise UserError(f"unknown scale {settings['scale']!r}; choose from {', '.join(builtin.SCALES)}")
    if settings["loss"] not in LOSSES:
        raise UserError(f"unknown loss {settings['loss']!r}; choose from {', '.join(LOSSES)}")
    checks.share("validation", settings["validation"])
    if r.executor not in EXECUTORS:
        raise UserError(f"unknown executor {r.executor!r}; choose from {', '.join(EXECUTORS)}")
    if r.address and r.executor != "ray":
        raise UserError("an address needs the ray executor (--executor ray)")
    if not activations or not optimizers or not lrs:
        raise UserError("name at least one activation, optimizer and learning rate")
    lrs = [finite_positive("a learning rate", lr) for lr in lrs]
    if max(lrs) > MAX_LR:
        raise UserError(f"learning rates must be at most {MAX_LR:g}, got {max(lrs):g}")
    seeds, epochs, batch_size = settings["seeds"], settings["epochs"], settings["batch_size"]
    iters, eval_every = settings["iters"], settings["eval_every"] = _iterations(settings, datasets, model)
    limits = (("seeds", seeds, MAX_SEEDS), ("epochs", epochs, None), ("batch size", batch_size, None),
              ("workers", r.workers, _max_workers(r.executor)))
    for name, value, high in limits:
        int_in_range(name, value, 1, high)
    if iters:
        if r.epochs is not None and r.iters is not None:
            raise UserError("give iters or epochs, not both")
        if r.epochs is not None:
            raise UserError(f"protocol {settings['protocol']} trains by iterations ({iters}): give iters, "
                            "not epochs")
        epochs = 0  # trained by iterations
    int_in_range("extra runs", r.extra_runs, 0, MAX_RUNS)
    if r.extra_runs and settings["source"] is not None:
        raise UserError("extra runs add seeds to networks trained from scratch; a fine-tuning comparison "
                        "takes its seeds from seeds (--seeds)")
    runs = len(datasets) * len(activations) * len(optimizers) * len(lrs) * seeds * len(settings["inits"])
    if runs > MAX_RUNS:
        raise UserError(f"{runs} runs asked for; at most {MAX_RUNS} in one request")
    device = checks.device(r.device).type
    if r.amp not in (None, "bf16", "fp16"):
        raise UserError(f"amp must be bf16 or fp16, got {r.amp!r}")
    if r.amp == "fp16" and device != "cuda":
        raise UserError("amp fp16 needs a CUDA device (use bf16 on the CPU)")
    out = writable_dir(r.out, "report folder")
    checkpoints = None if r.save_checkpoints is None else Path(r.save_checkpoints)
    if checkpoints is None and settings["source"] is not None:
        checkpoints = Path(r.db).with_name(f"{Path(r.db).stem}-checkpoints")
    if checkpoints is not None:
        writable_dir(checkpoints, "checkpoint folder")
    return Plan(request=r, datasets=datasets, model=model, activations=activations, optimizers=optimizers,
                lrs=lrs, seeds=seeds, epochs=epochs, batch_size=batch_size, baseline=baseline,
                iters=iters, eval_every=eval_every, policies=policies, settings=settings, device=device,
                out=out, checkpoints=checkpoints)
