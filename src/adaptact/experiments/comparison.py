"""The activation comparison from Python, with the options of ``adaptact compare``.

Everything that can be wrong with the request is checked before any training: names, numbers,
the output folders (writable), the results database (SQLite and adaptact's), the data (found and
sane) and the model (it takes the data's samples). Then the sweep runs, resumable from the
database, and the report is written.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..datasets import builtin
from ..errors import UserError, described
from ..files import writable_dir
from ..nn import ActivationModule
from .executors import check_ray_address
from .cells import usable
from .report import baseline_of, label, setups_of, verdict_of, write_report
from .verdict import INDISTINGUISHABLE
from .request import DEFAULT_MODEL, MAX_LR, MAX_RUNS, MAX_SEEDS, CompareRequest, plan
from .sources import Source, build_model, data_source, model_source
from .store import ResultStore, read_runs
from .sweep import SweepSummary, expand, run_sweep
from ..datasets.shakespeare import TextData
from .language import CONTEXT, EVAL_WINDOWS, windows
from .finetune import pretrained_checkpoint
from .train import GRAD_CLIP, RunConfig, checkpoint_name, held_out, versions

__all__ = ["DEFAULT_MODEL", "MAX_LR", "MAX_RUNS", "MAX_SEEDS", "CompareRequest", "Rows", "check_fits",
           "compare", "fine_tuning", "report", "run"]

class Rows(list):
    """The stored rows of a comparison's runs (dicts, as ``ResultStore.rows``), with ``summary``
    (runs total, already stored, run now), ``report`` (the files written, report.md first) and
    ``extra`` (runs beyond the request's seeds that ``extra_runs`` added, stored before or now)."""

    def __init__(self, rows: list[dict], summary: SweepSummary, report: list[Path], extra: int = 0) -> None:
        super().__init__(rows)
        self.summary = summary
        self.report = report
        self.extra = extra  # runs beyond the request's seeds, added to resolve comparisons


def check_fits(data: Source, model: Source, ds: builtin.Dataset | TextData,
               activations: Sequence[str] = ("relu",),
               policies: Mapping[str, str] | None = None) -> None:
    """UserError unless ``model`` with each of ``activations`` (placed by its policy in
    ``policies``, default "all") takes two samples of ``ds`` and returns one score per class:
    an activation that cannot take the model's tensors (FReLU after a Linear layer) is refused
    here, before any training, not stored as a failed run. A language model takes two windows of
    token ids and returns one score per token and character."""
    if isinstance(ds, TextData):
        return _check_language_model(data, model, ds, activations)
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
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's model or the activation: any failure, one line
            raise UserError(f"{what} does not fit data {data.label!r} (samples of shape {shape}): "
                            f"{_first_line(err)}") from None
        if tuple(out.shape) != (min(2, len(ds.train_x)), ds.num_classes):
            raise UserError(f"{what} gives outputs of shape {tuple(out.shape)} for data {data.label!r}, "
                            f"expected (N, {ds.num_classes})")


def _first_line(err: Exception) -> str:
    """``err`` in one line; its type left out for a shape or value error of torch's kind."""
    if isinstance(err, (RuntimeError, ValueError, TypeError)) and str(err).strip():
        return str(err).strip().splitlines()[0]
    return described(err)


def _check_language_model(data: Source, model: Source, ds: TextData, activations: Sequence[str]) -> None:
    x, _ = windows(ds.train, torch.tensor([0, 1]), CONTEXT)
    for activation in dict.fromkeys(("gelu", *activations)):
        what = f"model {model.label!r}" + ("" if activation == "gelu" else f" with activation {activation!r}")
        try:
            net = build_model(model, activation, (CONTEXT,), ds.num_classes)
            for m in net.modules():
                if isinstance(m, ActivationModule):
                    m.backend = "autograd"
            with torch.no_grad():
                out = net.eval()(x)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's model or the activation: any failure, one line
            raise UserError(f"{what} does not fit data {data.label!r} (windows of {CONTEXT} tokens): "
                            f"{_first_line(err)}") from None
        if tuple(out.shape) != (2, CONTEXT, ds.num_classes):
            raise UserError(f"{what} gives outputs of shape {tuple(out.shape)} for data {data.label!r}, "
                            f"expected (N, {CONTEXT}, {ds.num_classes})")


def _shippable(source: Source, what: str, workers: int, executor: str) -> None:
    """A factory or loader given from Python must reach worker processes by reference."""
    if callable(source.ref) and (workers > 1 or executor != "local"):
        try:
            pickle.dumps(source.ref)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise UserError(f"{what} {source.label} cannot be sent to worker processes ({err}): define it at "
                            f"module level, give a module:attribute spec, or use workers=1") from None


def _setup(data: Source, model: Source, ds: builtin.Dataset | TextData, device: str, command: str | None,
           settings: Mapping[str, Any]) -> dict:
    if isinstance(ds, TextData):
        return {"protocol": settings["protocol"], "model": model.label, "device": device,
                "command": command or "adaptact.compare(...)",
                "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                "data": f"{data.label}: {len(ds.train)} train, {len(ds.val)} validation, {len(ds.test)} test "
                        f"characters, a vocabulary of {ds.num_classes}; windows of {CONTEXT}",
                "loss": "cross-entropy per character (nats; bits = nats / ln 2)",
                "training": f"{settings['iters']} iterations, evaluated every {settings['eval_every']} on "
                            f"{EVAL_WINDOWS} fixed windows per split; warm-up, cosine schedule, gradient "
                            f"clipping at {GRAD_CLIP:g}"}
    n_train = len(ds.train_y)
    held = held_out(n_train, settings["validation"])
    scale = {"standard": "standardised with the training set's mean and std",
             "unit": "in [0, 1] (ToTensor)"}[settings["scale"]] if builtin.builtin(data.label) else "as given"
    return {"protocol": settings["protocol"],
            "data": f"{data.label}: {n_train - held} train, {held} validation, {len(ds.test_y)} test samples "
                    f"of shape {tuple(ds.train_x.shape[1:])}, {ds.num_classes} classes; inputs {scale}",
            "model": model.label,
            "loss": {"cross_entropy": "cross-entropy", "nll": "log-softmax + NLL"}[settings["loss"]],
            "device": device, "command": command or "adaptact.compare(...)",
            "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}


def compare(model: str | Callable | None = None, data=None, **options: Any) -> Rows:
    """Train ``model`` with each activation x optimizer x lr x seed (0..seeds-1) on ``data``,
    store each finished run in ``db`` and write the report to ``out``; returns the stored rows.
    ``options`` are ``CompareRequest``'s, by keyword (activations, optimizers, lrs, seeds, epochs,
    batch_size, protocol, scale, loss, validation, suite, snr, baseline, db, out, data_dir,
    save_checkpoints, workers, executor, address, device, amp, compile, progress, command,
    extra_runs).

    ``protocol``: the named settings (``experiments.protocols.PROTOCOLS``) every setting left None
    takes: "default" (MNIST-1D, the default activation set, SGD at lr 1e-2, 3 seeds, 5 epochs,
    batch 128, standardised inputs, cross-entropy, 10% validation split) or "arelu" (the AReLU
    paper's experiment as its code runs it: MNIST in [0, 1], ConvMNIST, log-softmax + NLL, SGD and
    Adam at lr 1e-2..1e-5, 5 seeds, 20 epochs, its activation set, best test accuracy over the
    epochs). ``snr`` (with ``data="bearing"``, the simulated vibration signals of
    ``datasets.bearing``): one sweep per SNR in dB, white noise added at that SNR (the APReLU
    paper: 5, 3, 1); each is its own data set, ``bearing-snr<dB>``, in the database and the report.

    ``extra_runs``: after the sweep, add seeds to the comparisons the report's verdict leaves
    unresolved (at the tuned settings of the activation and the baseline, as many as would resolve
    the observed difference), round by round, until they resolve or this many runs beyond the
    grid are spent; the same call resumes where it stopped.

    Runs already in ``db`` are not run again; a run that fails or diverges is stored with its
    status and the sweep goes on. Raises UserError for anything wrong with the request, before
    training."""
    return run(CompareRequest(model=model, data=data, **options))


def run(request: CompareRequest) -> Rows:
    """The comparison ``request`` asks for (``compare`` and ``adaptact compare`` both come here):
    checked whole (``request.plan``), the data loaded and each model probed on it, then the sweep,
    resumable from the database, and the report."""
    p = plan(request)
    r = request
    if r.address:
        check_ray_address(r.address)
    net = model_source(p.model)
    in_process = r.workers == 1 and r.executor == "local"  # else tensors travel to workers as a file
    loaded = []
    for name in p.datasets:
        cache = None if in_process else Path(r.db).parent / ".adaptact-cache"
        source, ds = data_source(name, r.data_dir, cache, p.settings["scale"])
        check_fits(source, net, ds, p.activations, p.policies)
        _shippable(source, "data", r.workers, r.executor)
        loaded.append((source, ds))
    _shippable(net, "model", r.workers, r.executor)
    pretraining: list = []
    if p.settings["source"] is not None:
        cache = None if in_process else Path(r.db).parent / ".adaptact-cache"
        source, source_ds = data_source(p.settings["source"], r.data_dir, cache, p.settings["scale"])
        check_fits(source, net, source_ds, [p.settings["base"]] if p.settings["base"] else p.activations,
                   p.policies)
        _shippable(source, "data", r.workers, r.executor)
        pretraining = [(source, source_ds)]
    saved = None if r.save_checkpoints is None else str(r.save_checkpoints)  # pretrained networks always are
    with ResultStore(r.db) as store:  # a database that is not ours fails here, before any training
        def configs_on(data: Source, activations: Sequence[str], optimizers: Sequence[str],
                       lrs: Sequence[float], epochs: int, iters: int, eval_every: int,
                       checkpoints: str | None) -> list[RunConfig]:
            return expand(data, net, activations, optimizers, lrs, p.seeds, epochs, p.batch_size, r.data_dir,
                          checkpoints, p.policies, p.device, r.amp, r.compile, p.settings["scale"],
                          p.settings["loss"], float(p.settings["validation"]), iters, eval_every)

        configs = [c for source, _ in loaded
                   for c in configs_on(source, p.activations, p.optimizers, p.lrs, p.epochs, p.iters,
                                       p.eval_every, saved)]
        first: list[RunConfig] = []
        if pretraining:
            s = p.settings
            iters = s["pretrain_iters"]  # by iterations: evaluated every tenth
            epochs, every = (0, max(1, iters // 10)) if iters else (s["pretrain_epochs"], 0)
            first = configs_on(pretraining[0][0], [s["base"]] if s["base"] else p.activations,
                               [s["pretrain_optimizer"]], [s["pretrain_lr"]], epochs, iters, every,
                               str(p.checkpoints))
            configs = fine_tuning(configs, first, s["base"], s["inits"])
        summary = run_sweep(first, store, r.executor, r.workers, r.address, r.progress) if first else None
        for pre in first:  # a checkpoint of another network stops here, before any fine-tuning
            path = Path(str(pre.checkpoint_dir)) / checkpoint_name(pre)
            if path.exists():
                pretrained_checkpoint(pre, path)
        summary = run_sweep(configs, store, r.executor, r.workers, r.address, r.progress) + summary
        known = {c.key: c for c in first + configs}
        extra: dict[str, RunConfig] = {}
        if r.extra_runs:
            added = _add_seeds(known, extra, store, r, p.baseline)
            summary = added + summary if added else summary
        rows = [row for row in store.rows() if row["key"] in known]
    setups = [_setup(source, net, ds, p.device, r.command, p.settings) for source, ds in loaded]
    setup = {**setups[0], "data": "; ".join(s["data"] for s in setups)}
    if pretraining:
        setup.update(_fine_tuning_setup(pretraining[0][0], loaded[0][0], p.settings))
    files = write_report(rows, p.out, baseline=p.baseline, setup=setup)
    return Rows(rows, summary, files, extra=len(extra))


def seeds_wanted(rows: Sequence[dict], baseline: str | None = None) -> list[tuple[str, int]]:
    """For each comparison of ``rows``' verdicts (``report.verdict_of``) that its seeds leave
    unresolved, the activation's and the baseline's cell at their tuned settings with the seeds
    each should have: those that would resolve the observed difference (at least one more than
    now), at most ``MAX_SEEDS``. As (key of a stored run of the cell, seeds), fewest first: the
    comparisons cheapest to resolve come first."""
    labelled = [{**row, "activation": label(row)} for row in rows]
    wanted: dict[tuple, tuple[str, int]] = {}
    for setup, group in setups_of(labelled).items():
        base = baseline_of([row for row in group if usable(row)], baseline)
        for c in verdict_of(group, base):
            if c.outcome != INDISTINGUISHABLE or c.seeds_needed is None or c.seeds_needed > MAX_SEEDS:
                continue
            n = max(c.seeds_needed, c.difference.pairs + 1)
            for cell in ((c.activation, *c.setting), (base, *c.baseline_setting)):
                key = next(row["key"] for row in group
                           if (row["activation"], row["optimizer"], row["lr"]) == cell)
                wanted[(setup, *cell)] = (key, max(n, wanted.get((setup, *cell), ("", 0))[1]))
    return sorted(wanted.values(), key=lambda kn: (kn[1], kn[0]))


def _add_seeds(known: dict[str, RunConfig], extra: dict[str, RunConfig], store: ResultStore,
               r: CompareRequest, baseline: str | None) -> SweepSummary | None:
    """Seeds for the comparisons left unresolved (``seeds_wanted``), round by round until they
    resolve, nothing more is wanted, or ``r.extra_runs`` runs beyond the request's grid are spent
    (those already stored count: the same command resumes where it stopped). ``known``: the
    comparison's runs by key, grown with ``extra``, the runs added."""
    summary = None
    while len(extra) < r.extra_runs:
        stored = [row for row in store.rows() if row["key"] in known]
        new: dict[str, RunConfig] = {}
        for key, seeds in seeds_wanted(stored, baseline):
            for seed in range(seeds):
                c = dataclasses.replace(known[key], seed=seed)
                if c.key not in known:
                    new.setdefault(c.key, c)
        batch = list(new.values())[:r.extra_runs - len(extra)]
        if not batch:
            break
        for c in batch:
            known[c.key] = extra[c.key] = c
        summary = run_sweep(batch, store, r.executor, r.workers, r.address, r.progress) + summary
    return summary


def fine_tuning(configs: Sequence[RunConfig], pretraining: Sequence[RunConfig], base: str | None,
                inits: Sequence[str]) -> list[RunConfig]:
    """``configs`` (runs on the target) as fine-tuning runs: each starts from the pretraining run
    of its seed with its own activation (``base`` None) or with ``base``, converted with each of
    ``inits`` where the activations differ."""
    start = {(c.activation, c.seed): c for c in pretraining}
    out = []
    for c in configs:
        pre = start[(base or c.activation, c.seed)]
        for init in (inits if c.activation != pre.activation else ("paper",)):
            out.append(dataclasses.replace(c, start=pre.key, pretrained=pre, init=init))
    return out


def _fine_tuning_setup(source: Source, target: Source, settings: Mapping[str, Any]) -> dict:
    s = settings
    how = (f"each activation's network converted from a {s['base']} network (init {', '.join(s['inits'])})"
           if s["base"] else "each activation's network pretrained with itself")
    length = f"{s['pretrain_iters']} iterations" if s["pretrain_iters"] else f"{s['pretrain_epochs']} epochs"
    pretraining = f"{s['pretrain_optimizer']} lr={s['pretrain_lr']:g}, {length}"
    text = builtin.is_language_data(s["dataset"])
    head = "the head kept (the same characters)" if text else "the classifier head fresh"
    return {"source": source.label, "target": target.label,
            "pretraining": f"{pretraining} on {source.label}; {how}; {head}, "
                           f"fine-tuned on {target.label}"}


def report(db: str | Path, out: str | Path = "report", dataset: str | None = None,
           baseline: str | None = None) -> list[Path]:
    """Rebuild the report of the runs in ``db`` (those on ``dataset`` only, if given) in ``out``;
    ``baseline`` None: relu where it ran, else gelu, and gelu for language models."""
    rows = [r for r in read_runs(db) if dataset in (None, r["dataset"])]
    if not rows:
        raise UserError(f"no runs in {db}" + (f" for data set {dataset}" if dataset else ""))
    return write_report(rows, writable_dir(out, "report folder"), baseline=baseline)
