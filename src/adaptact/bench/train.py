"""One run of the comparison: train a network with one activation, optimizer, lr and seed."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..convert import replace_activations
from . import data as bench_data
from .checkpoints import save_checkpoint
from .models import build

__all__ = ["OPTIMIZERS", "RunConfig", "run"]

OPTIMIZERS = ("sgd", "adam")
PROTOCOL = 1  # bump when training changes in a way that changes numbers


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers (``data_dir`` says where to find data and
    ``checkpoint_dir`` where to save the trained model as ``<key>.pt``; neither is identity)."""

    dataset: str
    model: str
    activation: str
    optimizer: str
    lr: float
    seed: int
    epochs: int
    batch_size: int = 128
    policy: str = "all"  # which activations of the model get ``activation`` (see replace_activations)
    data_dir: str | None = field(default=None, compare=False)
    checkpoint_dir: str | None = field(default=None, compare=False)

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("data_dir")
        d.pop("checkpoint_dir")
        if d["policy"] == "all":  # the default keeps the keys of runs stored before the field existed
            d.pop("policy")
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


def run(config: RunConfig) -> dict:
    """Train and evaluate once; deterministic on CPU for a given config (one thread).

    Returns the config's identity plus per-epoch ``train_loss`` and ``test_acc`` (fractions),
    ``first_epoch_acc``, ``best_acc``, ``wall_time`` (s), ``versions`` and ``diverged``: a run
    whose training loss turns non-finite stops there and is ``diverged``; its accuracies are
    those of the epochs before, 0 if none (reports keep such runs apart, never as accuracies).
    """
    torch.set_num_threads(1)
    ds = bench_data.load(config.dataset, config.data_dir)
    torch.manual_seed(config.seed)
    shape = tuple(ds.train_x.shape[1:])
    if config.policy == "all":
        model = build(config.model, config.activation, shape, ds.num_classes)
    else:
        model = build(config.model, "relu", shape, ds.num_classes)
        replace_activations(model, config.activation, policy=config.policy)
    opt = _optimizer(config.optimizer, model.parameters(), config.lr)
    order = torch.Generator().manual_seed(config.seed)
    n = len(ds.train_y)
    losses, accs = [], []
    diverged = False
    start = time.perf_counter()
    for _ in range(config.epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=order).split(config.batch_size):
            loss = F.cross_entropy(model(ds.train_x[idx]), ds.train_y[idx])
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if diverged:
            break
        losses.append(total / n)
        accs.append(_accuracy(model, ds.test_x, ds.test_y))
    wall = time.perf_counter() - start
    if config.checkpoint_dir:
        save_checkpoint(Path(config.checkpoint_dir) / f"{config.key}.pt", model, config.identity(),
                        tuple(ds.train_x.shape[1:]), ds.num_classes)
    return {
        "key": config.key,
        **config.identity(),
        "policy": config.policy,
        "train_loss": losses,
        "test_acc": accs,
        "first_epoch_acc": accs[0] if accs else 0.0,
        "best_acc": max(accs, default=0.0),
        "wall_time": wall,
        "versions": versions(),
        "diverged": diverged,
    }
