"""One run of the comparison: train a network with one activation, optimizer, lr and seed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..datasets.builtin import is_language_data
from ..errors import InfrastructureError
from ..datasets.shakespeare import TextData
from ..optim import param_groups
from ..registry import spec
from .checkpoints import save_checkpoint
from .evaluate import accuracy
from .finetune import Start, start_from
from .language import CONTEXT, eval_starts, mean_loss, sample_batch, sample_shape
from .sources import Source, build_model, load_data

__all__ = ["CONTEXT", "GRAD_CLIP", "LOSSES", "OPTIMIZERS", "PROTOCOL", "VALIDATION", "RunConfig",
           "checkpoint_name", "held_out", "lr_at", "result_row", "run"]

OPTIMIZERS = ("sgd", "adam", "adamw")
ADAMW_BETAS = (0.9, 0.99)  # nanoGPT's Shakespeare configuration
WEIGHT_DECAY = 0.1  # adamw's, on weights only (``adaptact.param_groups``)
GRAD_CLIP = 1.0  # gradient norm clipped at, when training by iterations (nanoGPT)
PROTOCOL = 2  # bump when training changes in a way that changes numbers (2: validation split)
WARM_STEPS = 2  # steps not timed: an adaptive module's first call runs eagerly, its second compiles
VALIDATION = 0.1  # share of the training set held out to pick the epoch (the same split for every run)
LOSSES = ("cross_entropy", "nll")  # nll: log-softmax then NLL, as the AReLU code's LogSoftmax head


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that determines a run's numbers, given by keyword. ``dataset`` and ``model`` are
    built-in names or the fingerprints of user sources (``sources.Source``), which
    ``data_source``/``model_source`` carry for the worker; ``data_dir`` says where to find built-in
    data and ``checkpoint_dir`` where to save the trained model as ``<key>.pt``. None of those
    three is identity. A fine-tuning run carries its ``pretrained`` run (which saves a
    checkpoint) and names it by its key in ``start`` (identity): it starts from that run's network
    (``finetune.start_from``) with a fresh head, converted to ``activation`` with ``init`` where
    the two activations differ."""

    def __post_init__(self) -> None:
        if self.pretrained is not None and self.pretrained.key != self.start:
            raise ValueError("a fine-tuning run's start is the key of its pretrained run")
        if self.pretrained is not None and not self.pretrained.checkpoint_dir:
            raise ValueError("a pretrained run must save its network: give it a checkpoint_dir")
        if self.init not in ("paper", "match"):
            raise ValueError(f"init must be 'paper' or 'match', got {self.init!r}")

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
    iters: int = 0  # train by iterations (nanoGPT's schedule and clipping) instead of ``epochs``; 0: epochs
    eval_every: int = 0  # iterations between evaluations (0: a tenth of ``iters``)
    start: str = ""  # fine-tuning: the key of ``pretrained``, the run whose trained network it starts from
    init: str = "paper"  # fine-tuning into another activation: replace_activations' init, "paper" or "match"
    definition: str = ""  # an activation made by adaptact.define: its fingerprint (enters the key)
    pretrained: RunConfig | None = field(default=None, compare=False)
    data_dir: str | None = field(default=None, compare=False)
    checkpoint_dir: str | None = field(default=None, compare=False)
    data_source: Source | None = field(default=None, compare=False)
    model_source: Source | None = field(default=None, compare=False)

    def identity(self) -> dict:
        """The fields that make the run what it is, by name (the stored row's columns): the key
        hashes this mapping with its names sorted, so the order of the fields never enters it."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__
             if k not in ("pretrained", "data_dir", "checkpoint_dir", "data_source", "model_source")}
        for name, default in (("policy", "all"), ("amp", None), ("compile", False), ("scale", "standard"),
                              ("loss", "cross_entropy"), ("validation", VALIDATION), ("iters", 0),
                              ("eval_every", 0), ("start", ""), ("init", "paper"), ("definition", "")):
            if d[name] == default:  # defaults keep the keys of runs stored before the field existed
                d.pop(name)
        d["protocol"] = PROTOCOL
        return d

    @property
    def key(self) -> str:
        """Hash of the identity: one row per key in the results database."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:24]


def _optimizer(name: str, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "adamw":  # no decay on activations, norms and biases
        return torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=lr, betas=ADAMW_BETAS)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


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
    from ..sites import ACTIVATION_TYPES

    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, ACTIVATION_TYPES):
            seen |= {id(p) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) in seen)


def _build(config: RunConfig, ds) -> torch.nn.Module:
    definition = spec(config.activation).definition  # imports the module of a defined one (module:name)
    if config.definition and (definition is None or definition.fingerprint() != config.definition):
        raise ValueError(f"the definition of {config.activation} (adaptact.define) is not the one this "
                         "comparison was planned with: its module changed since")
    shape = sample_shape(ds)
    source = config.model_source or Source(config.model, config.model)
    return build_model(source, config.activation, shape, ds.num_classes, config.policy)


def run(config: RunConfig) -> dict:
    """Train and evaluate once; deterministic on one machine's CPU for a given config (one thread).
    Another CPU's kernels round differently (AVX2 against AVX-512): the same config trained there
    can end a point or two of accuracy away, as a seed would.

    A seeded ``config.validation`` share of the training set is held out; after each epoch the
    accuracies on it (``val_acc``) and on the test set (``test_acc``) are recorded. ``best_epoch`` is
    the epoch of the best validation accuracy (the first on ties; with no validation split, of the best
    test accuracy) and ``best_acc`` the test accuracy there; ``first_epoch_acc`` (the AReLU paper's
    measure) and ``last_acc`` are the test accuracies after the first and the last epoch. Also:
    ``train_loss`` per epoch, ``wall_time``, ``epoch_time`` and ``iter_time`` (s; ``result_row``),
    ``activation_params``, ``peak_memory`` (bytes, CUDA; -1 on CPU), ``backend`` (what the adaptive
    activations ran in the last training step: ``ActivationModule.ran_backend``; evaluations of small
    batches run the reference; a fallback shows here), ``warnings`` (the distinct warnings the run
    raised, which a worker process cannot show) and ``versions``. ``status`` is "ok"; "diverged" when
    the training loss turns non-finite (training stops there); "failed" when the run raised (``error``
    says what). Runs that are not "ok" keep the accuracies of the epochs before, 0 where there are none.
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


class _Measured:
    """What a run measures as it goes (``result_row`` turns it into the stored row)."""

    def __init__(self) -> None:
        self.status, self.error = "ok", ""
        self.train_loss: list[float] = []
        self.val: list[float] = []  # validation accuracy, or loss for a language model
        self.test: list[float] = []
        self.evals: list[int] = []  # the iteration of each evaluation (training by iterations)
        self.params, self.peak, self.saved = 0, -1, -1
        self.iter_time = 0.0
        self.backends = ""
        self.source_score = self.converted_score = -1.0  # a conversion before fine-tuning (finetune.Start)


def _start(config: RunConfig, ds) -> Start:
    """A fine-tuning run's network from its pretrained run's checkpoint; the pretrained run is run
    again where its checkpoint is gone (the same network on the machine that trained it; another
    CPU's rounding can make it differ, as the warning says), and fails the run if it fails."""
    pre = config.pretrained
    assert pre is not None and pre.checkpoint_dir
    path = Path(pre.checkpoint_dir) / checkpoint_name(pre)
    if not path.exists():
        warnings.warn(f"the checkpoint of pretrained run {pre.key} was missing: it was trained again "
                      "(on another machine than the stored run's, floating point can make it differ)",
                      stacklevel=2)
        row = run(pre)
        if row["status"] != "ok":
            raise RuntimeError(f"its pretrained run ({pre.activation} on {pre.dataset}) {row['status']}: "
                               f"{row['error'] or 'the training loss turned non-finite'}")
    return start_from(config, ds, path)


def _run(config: RunConfig) -> dict:
    torch.set_num_threads(1)
    model: torch.nn.Module | None = None
    m = _Measured()
    start = time.perf_counter()
    try:
        device = torch.device(config.device)
        source = config.data_source or Source(config.dataset, config.dataset)
        ds = load_data(source, config.data_dir, config.scale)
        torch.manual_seed(config.seed)
        if config.start and config.pretrained is None:
            raise ValueError("a fine-tuning run needs its pretrained run (RunConfig.pretrained)")
        if config.pretrained is not None:
            begun = _start(config, ds)
            model = begun.model.to(device)
            m.source_score, m.converted_score = begun.source_score, begun.converted_score
        else:
            model = _build(config, ds).to(device)
        m.params = _activation_parameters(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = _Trainer(config, model, device)
        if isinstance(ds, TextData):
            _train_language_model(trainer, ds, m)
        elif config.iters:
            _train_iterations(trainer, ds, m)
        else:
            _train_epochs(trainer, ds, m)
        m.saved, m.backends = trainer.saved, trainer.backends
        m.iter_time = statistics.median(trainer.step_times) if trainer.step_times else 0.0
        if device.type == "cuda":
            m.peak = torch.cuda.max_memory_allocated(device)
        if config.checkpoint_dir and m.status == "ok":
            save_checkpoint(Path(config.checkpoint_dir) / checkpoint_name(config), model, config.identity(),
                            sample_shape(ds), ds.num_classes)
    except InfrastructureError:
        raise  # not the run's result: nothing is stored, the next invocation runs it again
    except Exception as err:  # noqa: BLE001  (a failing run is recorded and the sweep goes on)
        m.status, m.error = "failed", f"{type(err).__name__}: {err}".strip()
    wall = time.perf_counter() - start
    return result_row(config, m.status, m.error, m.train_loss, m.val, m.test, wall, m.params, m.peak,
                      m.backends or _ran_backends(model), evals=m.evals, saved=m.saved, iter_time=m.iter_time,
                      source_score=m.source_score, converted_score=m.converted_score)


class _Trainer:
    """One optimisation step at a time: the optimizer, mixed precision, and when training by
    iterations nanoGPT's schedule (``lr_at``) and gradient clipping at ``GRAD_CLIP``. The first
    step measures the bytes its forward saves for the backward (``saved``)."""

    def __init__(self, config: RunConfig, model: torch.nn.Module, device: torch.device) -> None:
        self.config, self.model, self.device = config, model, device
        self.opt = _optimizer(config.optimizer, model, config.lr)
        self.forward = torch.compile(model) if config.compile else model
        self.precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp or "")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == torch.float16)
        self.steps, self.saved = 0, -1
        self.backends = ""  # what the adaptive activations ran in the last training step
        self.step_times: list[float] = []  # seconds of each step after the first two (``WARM_STEPS``)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """One step on (x, y); the loss, or None (nothing updated) when it is not finite."""
        c = self.config
        start = time.perf_counter()
        if c.iters:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.steps, c.iters, c.lr)
        self.model.train()
        with contextlib.ExitStack() as stack:
            if self.steps == 0 and not c.compile:
                stack.enter_context(_SavedBytes(self))
            with torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision is not None):
                logits = self.forward(x)
                loss = _loss(c.loss, logits.flatten(0, -2), y.flatten())
        if not torch.isfinite(loss):
            return None
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if c.iters:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.scaler.step(self.opt)
        self.scaler.update()
        value = loss.item()
        self.backends = _ran_backends(self.model)  # the training step's: evaluations may run others
        if self.steps >= WARM_STEPS:
            self.step_times.append(time.perf_counter() - start)
        self.steps += 1
        return value


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of the distinct storages a forward saves for its backward (parameters
    included): an activation's memory cost in training, on any device."""

    def __init__(self, trainer: _Trainer) -> None:
        self.trainer = trainer
        self.storages: dict[tuple, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            try:
                storage = t.untyped_storage()
                self.storages[(t.device.type, storage.data_ptr())] = storage.nbytes()
            except (RuntimeError, NotImplementedError):  # tensors without storage (subclasses)
                pass
            return t

        super().__init__(pack, lambda t: t)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.trainer.saved = sum(self.storages.values())


def lr_at(step: int, iters: int, lr: float) -> float:
    """nanoGPT's schedule for ``iters`` steps: linear warm-up over the first 5% (its 100 of 2000),
    then a cosine from ``lr`` down to lr / 10 at the last step."""
    warmup = max(1, iters // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, iters - warmup))
    return lr / 10 + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - lr / 10)


def _split_data(config: RunConfig, ds, device: torch.device) -> tuple:
    train, val = _split(len(ds.train_y), config.validation)
    return (ds.train_x[train].to(device), ds.train_y[train].to(device), ds.train_x[val].to(device),
            ds.train_y[val].to(device), ds.test_x.to(device), ds.test_y.to(device))


def _evaluate_classifier(t: _Trainer, m: _Measured, val_x, val_y, test_x, test_y) -> None:
    if len(val_y):
        m.val.append(accuracy(t.model, val_x, val_y))
    m.test.append(accuracy(t.model, test_x, test_y))


def _train_epochs(t: _Trainer, ds, m: _Measured) -> None:
    c = t.config
    train_x, train_y, val_x, val_y, test_x, test_y = _split_data(c, ds, t.device)
    order = torch.Generator().manual_seed(c.seed)
    for _ in range(c.epochs):
        total = 0.0
        for idx in torch.randperm(len(train_y), generator=order).split(c.batch_size):
            idx = idx.to(t.device)
            loss = t.step(train_x[idx], train_y[idx])
            if loss is None:
                m.status = "diverged"
                return
            total += loss * len(idx)
        m.train_loss.append(total / len(train_y))
        _evaluate_classifier(t, m, val_x, val_y, test_x, test_y)


def _every(config: RunConfig) -> int:
    return config.eval_every or max(1, config.iters // 10)


def _train_iterations(t: _Trainer, ds, m: _Measured) -> None:
    """Classification by iterations: batches from a reshuffled stream of the training set,
    evaluated every ``eval_every`` iterations and after the last."""
    c = t.config
    train_x, train_y, val_x, val_y, test_x, test_y = _split_data(c, ds, t.device)
    order = torch.Generator().manual_seed(c.seed)

    def stream():
        while True:
            yield from torch.randperm(len(train_y), generator=order).split(c.batch_size)

    batches = stream()

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = next(batches).to(t.device)
        return train_x[idx], train_y[idx]

    _iterate(t, m, batch, lambda: _evaluate_classifier(t, m, val_x, val_y, test_x, test_y))


def _iterate(t: _Trainer, m: _Measured, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
             evaluate: Callable[[], None]) -> None:
    """``t.config.iters`` steps on ``batch()``; every ``eval_every`` and after the last, the mean
    training loss since the evaluation before, the step, and ``evaluate()``."""
    c = t.config
    since: list[float] = []
    for step in range(1, c.iters + 1):
        loss = t.step(*batch())
        if loss is None:
            m.status = "diverged"
            return
        since.append(loss)
        if step % _every(c) == 0 or step == c.iters:
            m.train_loss.append(statistics.fmean(since))
            since.clear()
            m.evals.append(step)
            evaluate()


def _train_language_model(t: _Trainer, ds: TextData, m: _Measured) -> None:
    """nanoGPT's loop: random windows of the training split each iteration; the validation and test
    losses on fixed windows every ``eval_every`` iterations and after the last."""
    c = t.config
    context = _context(t.model)
    generator = torch.Generator().manual_seed(c.seed)
    starts = {"val": eval_starts(len(ds.val), context), "test": eval_starts(len(ds.test), context)}

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = sample_batch(ds.train, c.batch_size, context, generator)
        return x.to(t.device), y.to(t.device)

    def evaluate() -> None:
        m.val.append(mean_loss(t.model, ds.val, starts["val"], context, t.device))
        m.test.append(mean_loss(t.model, ds.test, starts["test"], context, t.device))

    _iterate(t, m, batch, evaluate)


def _context(model: torch.nn.Module) -> int:
    context = getattr(model, "context", None)
    if not isinstance(context, int):
        raise ValueError(f"a language model must say its context length (an int attribute 'context'); "
                         f"{type(model).__name__} does not")
    return context


def result_row(config: RunConfig, status: str, error: str = "", losses: Sequence[float] = (),
               val: Sequence[float] = (), test: Sequence[float] = (), wall: float = 0.0,
               params: int = -1, peak: int = -1, backend: str = "", *, evals: Sequence[int] = (),
               saved: int = -1, iter_time: float = 0.0, source_score: float = -1.0,
               converted_score: float = -1.0) -> dict:
    """The stored row of a run (see ``run``) from what it measured: ``val`` and ``test`` per
    evaluation are accuracies, or for a language model losses (``metric`` "loss", lower is
    better). Without a validation split the best evaluation is the one with the best test
    accuracy (the papers' measure). ``iter_time``: the median time of a training step, the first
    ``WARM_STEPS`` (eager, then compiling) left out: a step that compiles again (a new batch shape
    under ``--compile``) is not a step's cost. ``epoch_time``: the wall time per epoch, which holds
    loading the data, compiling and evaluating. A fine-tuning run's row names its ``source`` data, the
    activation it was pretrained with (``start_activation``), its ``init`` and, where it converted
    the network, the source's test accuracy before and after the conversion (``source_acc``,
    ``converted_acc``; a language model's loss: ``source_loss``, ``converted_loss``; -1 where it did
    not convert; ``finetune.Start``)."""
    pre = config.pretrained
    language = is_language_data(config.dataset)
    picks = val if config.validation > 0 and val else test  # a 1-sample train set holds none out
    sign = -1 if language else 1
    best = max(range(len(picks)), key=lambda e: (sign * picks[e], -e)) if picks else -1
    accuracy = {"val_acc": [] if language else list(val), "test_acc": [] if language else list(test)}
    loss = {"val_loss": list(val) if language else [], "test_loss": list(test) if language else []}
    measure = loss["test_loss"] if language else accuracy["test_acc"]
    first, chosen, last = (measure[0], measure[best], measure[-1]) if measure else (0.0, 0.0, 0.0)
    return {
        "key": config.key,
        **config.identity(),
        "policy": config.policy,
        "amp": config.amp or "",
        "compile": config.compile,
        "scale": config.scale,
        "loss": config.loss,
        "validation": config.validation,
        "iters": config.iters,
        "eval_every": (config.eval_every or max(1, config.iters // 10)) if config.iters else 0,
        "metric": "loss" if language else "accuracy",
        "train_loss": list(losses),
        **accuracy,
        **loss,
        "evals": list(evals),
        "first_epoch_acc": 0.0 if language else first,
        "best_epoch": best + 1,
        "best_acc": 0.0 if language else chosen,
        "last_acc": 0.0 if language else last,
        "first_loss": first if language else 0.0,
        "best_loss": chosen if language else 0.0,
        "last_loss": last if language else 0.0,
        "wall_time": wall,
        "epoch_time": 0.0 if config.iters else wall / max(1, len(test)),
        "iter_time": iter_time,
        "source": pre.dataset if pre else "",
        "start": config.start,
        "start_activation": pre.activation if pre else "",
        "init": config.init if pre and pre.activation != config.activation else "",
        "source_acc": -1.0 if language else source_score,
        "converted_acc": -1.0 if language else converted_score,
        "source_loss": source_score if language else -1.0,
        "converted_loss": converted_score if language else -1.0,
        "activation_params": params,
        "peak_memory": peak,
        "saved_memory": saved,
        "backend": backend,
        "warnings": [],
        "versions": versions(),
        "status": status,
        "error": error[:2000],
    }


def checkpoint_name(config: RunConfig) -> str:
    """A readable checkpoint file name: activation, optimizer, lr, seed and the run's key."""
    return f"{config.activation}-{config.optimizer}-lr{config.lr:g}-seed{config.seed}-{config.key}.pt"
