"""A comparison sweep: every (activation, optimizer, lr, seed), resumable through the store."""

from __future__ import annotations

import contextlib
import itertools
import os
import json
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .executors import execute
from ..files import atomic_write
from .store import ResultStore, StoreError, owner
from ..registry import spec
from .sources import Source
from .train import RunConfig, result_row, run

__all__ = ["RESNET_SUITE", "SweepSummary", "expand", "lost_run", "run_sweep"]

# The ACON paper's ResNet comparison: Meta-ACON-C only after the 3x3 conv of each block.
RESNET_SUITE: dict[str, Any] = {
    "model": "resnet18_w16",
    "activations": ("relu", "swish", "acon_c", "meta_acon_c", "aprelu", "arelu", "dy_relu_b", "frelu"),
    "policies": {"meta_acon_c": "resnet_after_3x3"}}


@dataclass
class SweepSummary:
    total: int
    already_done: int
    ran: int
    backends: dict[str, int] = field(default_factory=dict)  # what the runs done now ran -> how many
    warnings: list[str] = field(default_factory=list)  # distinct warnings of the runs done now
    lost: list[str] = field(default_factory=list)  # runs whose worker died twice: not stored

    def __add__(self, other: SweepSummary | None) -> SweepSummary:
        """Both sweeps' counts (a fine-tuning comparison sweeps its pretraining runs first)."""
        if other is None:
            return self
        backends = dict(self.backends)
        for b, n in other.backends.items():
            backends[b] = backends.get(b, 0) + n
        return SweepSummary(self.total + other.total, self.already_done + other.already_done,
                            self.ran + other.ran, backends,
                            list(dict.fromkeys(self.warnings + other.warnings)), self.lost + other.lost)

    def notes(self) -> list[str]:
        """One line on the backends the adaptive activations ran, one per distinct warning (the
        workers' warnings reach the sweep's output here, once per sweep)."""
        lines = []
        if self.backends:
            ran = ", ".join(f"{b} ({n} runs)" for b, n in sorted(self.backends.items()))
            lines.append(f"adaptive activations ran: {ran}")
        lines += [f"warning from the runs: {w}" for w in self.warnings]
        lines += [f"not stored, runs again next time (its worker died twice): {run}" for run in self.lost]
        return lines


def expand(dataset: str | Source, model: str | Source, activations: Sequence[str], optimizers: Sequence[str],
           lrs: Sequence[float], seeds: int, epochs: int, batch_size: int = 128,
           data_dir: str | None = None, checkpoint_dir: str | None = None,
           policies: Mapping[str, str] | None = None, device: str = "cpu", amp: str | None = None,
           compile: bool = False, scale: str = "standard", loss: str = "cross_entropy",
           validation: float = 0.1, iters: int = 0, eval_every: int = 0) -> list[RunConfig]:
    """Every combination, seeds 0..seeds-1, in a stable order; ``policies`` maps an activation to
    the replace_activations policy it is put in with (default "all"). ``dataset``/``model``:
    built-in names or ``sources.Source`` (user data and factories)."""
    policies = policies or {}
    data = dataset if isinstance(dataset, Source) else Source(dataset, dataset)
    net = model if isinstance(model, Source) else Source(model, model)
    user_data = data if data.ref is not None else None
    user_model = net if net.ref is not None else None
    definitions = {a: definition_fingerprint(a) for a in activations}
    return [RunConfig(dataset=data.fingerprint, model=net.fingerprint, activation=a, optimizer=o,
                      lr=float(lr), seed=s, definition=definitions[a], epochs=epochs, batch_size=batch_size,
                      policy=policies.get(a, "all"), device=device, amp=amp, compile=compile, scale=scale,
                      loss=loss, validation=validation, iters=iters, eval_every=eval_every if iters else 0,
                      data_dir=data_dir, checkpoint_dir=checkpoint_dir,
                      data_source=user_data,
                      model_source=user_model)
            for a, o, lr, s in itertools.product(activations, optimizers, lrs, range(seeds))]


def definition_fingerprint(activation: str) -> str:
    """The fingerprint of an activation made by ``adaptact.define`` (its formula and initial
    values: a changed formula is a new run), "" for the built-ins."""
    definition = spec(activation).definition
    return "" if definition is None else definition.fingerprint()


def _store(store: ResultStore, result: dict) -> bool:
    """``store.add(result)``; when the database cannot take it, the result is written beside the
    database (JSON, named in the error) instead of being lost with the training that made it."""
    try:
        return store.add(result)
    except (sqlite3.DatabaseError, OSError) as err:
        kept = store.path.with_name(f"{store.path.name}.unstored-{result['key']}.json")
        atomic_write(kept, lambda tmp: tmp.write_text(json.dumps(result, indent=1, default=str)))
        raise StoreError(f"{store.path}: run {result['key']} finished but could not be stored ({err}); its "
                         f"result is kept in {kept}") from None


LOST = "lost"  # the status of a run whose worker died twice: never stored, run again next time


def lost_run(config: RunConfig, error: BaseException) -> dict:
    """A run whose worker died twice: not a result (an infrastructure failure), so it is reported
    and left out of the store; the next invocation runs it again."""
    return result_row(config, LOST, f"the worker running it died ({type(error).__name__}: {error})")


class _Progress:
    """tqdm when installed, else a line per finished run (stderr)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        self.enabled = enabled
        self.done, self.total = initial, total
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="run", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


WAIT_SECONDS = 2.0  # how often a sweep looks whether runs another sweep claimed have been stored


def load(executor: str, workers: int) -> str:
    """What shares the machine with a run of a sweep while it is timed (the report's costs say it)."""
    if executor != "local":
        return f"on a Ray cluster, up to {workers} runs at a time"
    cores = os.cpu_count()
    return (f"up to {workers} runs at a time on {cores} CPU cores" if workers > 1
            else f"one run at a time on {cores} CPU cores")


def run_sweep(configs: Iterable[RunConfig], store: ResultStore, executor: str = "local", workers: int = 1,
              address: str | None = None, progress: bool = True) -> SweepSummary:
    """Run the configs not yet in ``store``; each result is stored the moment it arrives. Sweeps
    sharing the database claim their runs first (``ResultStore.claim``): a run another live sweep
    claimed is waited for, not trained again; one whose sweep died is taken over."""
    configs = list(dict.fromkeys(configs))  # drop repeats, keep order
    finished = store.finished_keys()
    todo = [c for c in configs if c.key not in finished]
    bar = _Progress(len(configs), len(configs) - len(todo), progress)
    me = owner()
    ran = 0
    lost: list[str] = []
    backends: dict[str, int] = {}
    caught: dict[str, None] = {}
    waiting = [c.key for c in todo]
    under = load(executor, workers)
    try:
        while waiting:
            mine = set(store.claim(waiting, me))
            batch = [c for c in todo if c.key in mine]
            for result in execute(executor, run, batch, workers=workers, address=address, lost=lost_run):
                if result["status"] == LOST:
                    lost.append(f"{result['activation']} {result['optimizer']} lr={result['lr']:g} "
                                f"seed={result['seed']}: {result['error']}")
                    continue
                if not _store(store, {**result, "timed_under": under}):
                    continue  # another sweep stored it first: counted there
                ran += 1
                if result.get("backend"):
                    backends[result["backend"]] = backends.get(result["backend"], 0) + 1
                caught.update(dict.fromkeys(result.get("warnings", ())))
                if result["status"] != "ok":
                    outcome = result["status"]
                elif result.get("metric") == "loss":
                    outcome = f"test loss {result['best_loss']:.4f}"
                else:
                    outcome = f"{100 * result['best_acc']:.2f}%"
                bar.update(f"{result['activation']} {result['optimizer']} lr={result['lr']:g} "
                           f"seed={result['seed']}: {outcome}")
            finished = store.finished_keys()
            waiting = [k for k in waiting if k not in finished and k not in mine]
            if waiting and not batch:  # all claimed by other live sweeps: wait for them
                time.sleep(WAIT_SECONDS)
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{store.path}: the results database failed ({err}); the runs stored so far are "
                         f"kept") from None
    finally:
        bar.close()
        with contextlib.suppress(sqlite3.DatabaseError):
            store.release(me)
    return SweepSummary(total=len(configs), already_done=len(configs) - len(todo), ran=ran, backends=backends,
                        warnings=list(caught), lost=lost)
