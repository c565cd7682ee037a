"""One run of the comparison: train a network with one activation, optimizer, lr and seed."""

from __future__ import annotations

import hashlib
import json
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import save_checkpoint
from .sources import Source, build_model, load_data

__all__ = ["LOSSES", "OPTIMIZERS", "PROTOCOL", "VALIDATION", "RunConfig", "checkpoint_name", "held_out",
           "result_row", "run"]

OPTIMIZERS = ("sgd", "adam")
PROTOCOL = 2  # bump when training changes in a way that changes numbers (2: validation split)
VALIDATION = 0.1  # share of the training set held out to pick the epoch (the same split for every run)
LOSSES = ("cross_entropy", "nll")  # nll: log-softmax then NLL, as the AReLU code's LogSoftmax head


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that determines a run's numbers, given by keyword. ``dataset`` and ``model`` are
    built-in names or the fingerprints of user sources (``sources.Source``), which
    ``data_source``/``model_source`` carry for the worker; ``data_dir`` says where to find built-in
    data and ``checkpoint_dir`` where to save the trained model as ``<key>.pt``. None of those
    three is identity."""

    dataset: str
    model: str
    activation: str
    optimizer: str
    lr: float
    seed: int
    epochs: int
    batch_size: int = 128
    policy: str = "all"  # which activations of the model get ``activation`` (see replace_activations)
    device: str = "cpu"
    amp: str | None = None  # "bf16" or "fp16": the forward under torch.autocast
    compile: bool = False  # torch.compile the model
    scale: str = "standard"  # of built-in data (datasets.builtin.SCALES)
    loss: str = "cross_entropy"  # LOSSES
    validation: float = VALIDATION  # share held out to pick the epoch; 0: picked on the test set
    data_dir: str | None = field(default=None, compare=False)
    checkpoint_dir: str | None = field(default=None, compare=False)
    data_source: Source | None = field(default=None, compare=False)
    model_source: Source | None = field(default=None, compare=False)

    def identity(self) -> dict:
        """The fields that make the run what it is, by name (the stored row's columns): the key
        hashes this mapping with its names sorted, so the order of the fields never enters it."""
        d = {k: v for k, v in asdict(self).items()
             if k not in ("data_dir", "checkpoint_dir", "data_source", "model_source")}
        for name, default in (("policy", "all"), ("amp", None), ("compile", False), ("scale", "standard"),
                              ("loss", "cross_entropy"), ("validation", VALIDATION)):
            if d[name] == default:  # defaults keep the keys of runs stored before the field existed
                d.pop(name)
        d["protocol"] = PROTOCOL
        return d

    @property
    def key(self) -> str:
        """Hash of the identity: one row per key in the results database."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:24]


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(y)


def versions() -> dict[str, str]:
    from .. import __version__

    return {"adaptact": __version__, "torch": torch.__version__, "python": platform.python_version()}


def held_out(n: int, share: float = VALIDATION) -> int:
    """How many of ``n`` training samples a validation ``share`` holds out (>= 1 when share > 0)."""
    return max(1, int(share * n)) if n > 1 and share > 0 else 0


def _split(n: int, share: float = VALIDATION) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices: a fixed, seeded ``share`` of the training set held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    held = held_out(n, share)
    return order[held:], order[:held]


def _loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "nll":  # the AReLU code: LogSoftmax as the network's last layer, then F.nll_loss
        return F.nll_loss(F.log_softmax(logits, dim=-1), target)
    return F.cross_entropy(logits, target)


def _activation_parameters(model: torch.nn.Module) -> int:
    """Parameters inside the model's activation modules (what the activation adds to the network)."""
    from ..convert import ACTIVATION_TYPES

    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, ACTIVATION_TYPES):
            seen |= {id(p) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) in seen)


def _build(config: RunConfig, ds) -> torch.nn.Module:
    shape = tuple(ds.train_x.shape[1:])
    source = config.model_source or Source(config.model, config.model)
    return build_model(source, config.activation, shape, ds.num_classes, config.policy)


def run(config: RunConfig) -> dict:
    """Train and evaluate once; deterministic on CPU for a given config (one thread).

    A seeded ``config.validation`` share of the training set is held out; after each epoch the
    accuracies on it (``val_acc``) and on the test set (``test_acc``) are recorded. ``best_epoch``
    is the epoch of the best validation accuracy (the first on ties; with no validation split, of
    the best test accuracy) and ``best_acc`` the test accuracy there; ``first_epoch_acc`` (the
    AReLU paper's measure) and ``last_acc`` are the test accuracies after the first and the last
    epoch. Also: ``train_loss`` per epoch,
    ``wall_time`` and ``epoch_time`` (s), ``activation_params``, ``peak_memory`` (bytes, CUDA;
    -1 on CPU), ``backend`` (what the adaptive activations ran: ``ActivationModule.ran_backend``; a
    fallback shows here), ``warnings`` (the distinct warnings the run raised, which a worker process
    cannot show) and ``versions``. ``status`` is "ok"; "diverged" when the training loss turns
    non-finite (training stops there); "failed" when the run raised (``error`` says what). Runs
    that are not "ok" keep the accuracies of the epochs before, 0 where there are none.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # each warning once per place, as a script shows them
        row = _run(config)
    row["warnings"] = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))[:WARNINGS]
    return row


WARNINGS = 20  # distinct warnings kept with a run


def _ran_backends(model: torch.nn.Module | None) -> str:
    """Which backends the model's adaptive activations ran in their last eager calls, joined with
    commas ("" when it has none, or they ran only inside torch.compile)."""
    from ..nn.base import ActivationModule

    if model is None:
        return ""
    ran = {m.ran_backend for m in model.modules() if isinstance(m, ActivationModule)}
    return ",".join(sorted(b for b in ran if b))


def _run(config: RunConfig) -> dict:
    torch.set_num_threads(1)
    model: torch.nn.Module | None = None
    losses: list[float] = []
    val_accs: list[float] = []
    accs: list[float] = []
    status, error, params, peak = "ok", "", 0, -1
    start = time.perf_counter()
    try:
        device = torch.device(config.device)
        source = config.data_source or Source(config.dataset, config.dataset)
        ds = load_data(source, config.data_dir, config.scale)
        torch.manual_seed(config.seed)
        model = _build(config, ds).to(device)
        params = _activation_parameters(model)
        opt = _optimizer(config.optimizer, model.parameters(), config.lr)
        forward = torch.compile(model) if config.compile else model
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp or "")
        scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
        order = torch.Generator().manual_seed(config.seed)
        train, val = _split(len(ds.train_y), config.validation)
        train_x, train_y = ds.train_x[train].to(device), ds.train_y[train].to(device)
        val_x, val_y = ds.train_x[val].to(device), ds.train_y[val].to(device)
        test_x, test_y = ds.test_x.to(device), ds.test_y.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(config.epochs):
            model.train()
            total = 0.0
            for idx in torch.randperm(len(train_y), generator=order).split(config.batch_size):
                idx = idx.to(device)
                with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                    loss = _loss(config.loss, forward(train_x[idx]), train_y[idx])
                if not torch.isfinite(loss):
                    status = "diverged"
                    break
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += loss.item() * len(idx)
            if status != "ok":
                break
            losses.append(total / len(train_y))
            if len(val_y):
                val_accs.append(_accuracy(model, val_x, val_y))
            accs.append(_accuracy(model, test_x, test_y))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        if config.checkpoint_dir and status == "ok":
            save_checkpoint(Path(config.checkpoint_dir) / checkpoint_name(config), model, config.identity(),
                            tuple(ds.train_x.shape[1:]), ds.num_classes)
    except Exception as err:  # noqa: BLE001  (a failing run is recorded and the sweep goes on)
        status, error = "failed", f"{type(err).__name__}: {err}".strip()
    wall = time.perf_counter() - start
    return result_row(config, status, error, losses, val_accs, accs, wall, params, peak, _ran_backends(model))


def result_row(config: RunConfig, status: str, error: str = "", losses: Sequence[float] = (),
               val_accs: Sequence[float] = (), accs: Sequence[float] = (), wall: float = 0.0,
               params: int = -1, peak: int = -1, backend: str = "") -> dict:
    """The stored row of a run (see ``run``) from what it measured. Without a validation split
    the best epoch is the one with the best test accuracy (the papers' measure)."""
    picks = val_accs if config.validation > 0 and val_accs else accs  # a 1-sample train set holds none out
    best = max(range(len(picks)), key=lambda e: (picks[e], -e)) if picks else -1
    return {
        "key": config.key,
        **config.identity(),
        "policy": config.policy,
        "amp": config.amp or "",
        "compile": config.compile,
        "scale": config.scale,
        "loss": config.loss,
        "validation": config.validation,
        "train_loss": list(losses),
        "val_acc": list(val_accs),
        "test_acc": list(accs),
        "first_epoch_acc": accs[0] if accs else 0.0,
        "best_epoch": best + 1,
        "best_acc": accs[best] if accs else 0.0,
        "last_acc": accs[-1] if accs else 0.0,
        "wall_time": wall,
        "epoch_time": wall / max(1, len(accs)),
        "activation_params": params,
        "peak_memory": peak,
        "backend": backend,
        "warnings": [],
        "versions": versions(),
        "status": status,
        "error": error[:2000],
    }


def checkpoint_name(config: RunConfig) -> str:
    """A readable checkpoint file name: activation, optimizer, lr, seed and the run's key."""
    return f"{config.activation}-{config.optimizer}-lr{config.lr:g}-seed{config.seed}-{config.key}.pt"
