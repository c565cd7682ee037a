"""The cells of the comparison's tables: how a kind of run is measured (``Measure``), which runs
are reported (``usable``), and per cell, an (activation, optimizer, learning rate), the mean over
seeds, its rank in the column and its difference to the baseline paired by seed. The report's
tables, its verdict's rendering and its figures all read them."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..registry import spec
from .stats import Difference, paired_difference

__all__ = ["ACCURACY", "GROUPS", "LOSS", "Cell", "Measure", "aggregate", "columns", "differences", "family",
           "grouped", "measure_of", "ranks", "setting_text", "usable"]

GROUPS = (("classic", "Non-learnable"), ("learnable", "Learnable"), ("adaptive", "Adaptive"))
Cell = tuple[str, str, float]  # (activation, optimizer, lr)


@dataclass(frozen=True)
class Measure:
    """How a kind of run is measured: the row's fields for the selected, first and last
    evaluation and the curve; ``scale`` from the stored value to the table's unit; the unit of a
    difference and what a cell holds; which way is better."""

    first: str
    best: str
    last: str
    curve: str
    scale: float
    unit: str  # of a difference: "points", "nats"
    label: str  # what a cell holds
    lower_is_better: bool


ACCURACY = Measure("first_epoch_acc", "best_acc", "last_acc", "test_acc", 100.0, "points",
                   "test accuracy (%)", False)
LOSS = Measure("first_loss", "best_loss", "last_loss", "test_loss", 1.0, "nats per character",
               "test loss (nats per character)", True)


def measure_of(row: Mapping) -> Measure:
    return LOSS if row.get("metric") == "loss" else ACCURACY


def usable(row: dict) -> bool:
    """A run that finished with finite measures: the only kind reported in the tables."""
    m = measure_of(row)
    try:
        values = [row[m.first], row[m.best], *row[m.curve]]
        return (row.get("status", "ok") == "ok" and bool(row[m.curve])
                and all(math.isfinite(v) for v in values))
    except (TypeError, KeyError):
        return False


def family(name: str) -> str:
    """The registry family of a row's label ("classic" for a name outside the registry)."""
    try:
        return spec(name.split(" ")[0]).family  # "meta_acon_c (resnet_after_3x3)" -> meta_acon_c
    except ValueError:
        return "classic"


def aggregate(rows: Sequence[dict], metric: str,
              scale: float = 100.0) -> dict[Cell, tuple[float, float, int]]:
    """(activation, optimizer, lr) -> (mean, std, seeds) of ``scale`` * ``metric`` over seeds
    (sample std; accuracies in %)."""
    groups: dict[Cell, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["activation"], r["optimizer"], r["lr"])].append(scale * r[metric])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def ranks(stats: Mapping[Cell, tuple[float, float, int]], lower_is_better: bool = False) -> dict[Cell, int]:
    """Rank of each cell's mean within its column (1 = best; ties share the better rank)."""
    columns: dict[tuple[str, float], list[float]] = defaultdict(list)
    for (_, o, lr), (mean, _, _) in stats.items():
        columns[(o, lr)].append(mean)
    sign = -1 if lower_is_better else 1
    return {cell: 1 + sum(sign * m > sign * mean for m in columns[cell[1:]])
            for cell, (mean, _, _) in stats.items()}


def differences(rows: Sequence[dict], metric: str, baseline: str,
                scale: float = 100.0) -> dict[Cell, Difference]:
    """Per cell, the difference of ``scale`` * ``metric`` (points of % for accuracies) to
    ``baseline`` in the same column, paired by seed."""
    by_cell: dict[Cell, dict[int, float]] = defaultdict(dict)
    for r in rows:
        by_cell[(r["activation"], r["optimizer"], r["lr"])][r["seed"]] = scale * r[metric]
    out = {}
    for (a, o, lr), values in by_cell.items():
        base = by_cell.get((baseline, o, lr))
        if a != baseline and base:
            diff = paired_difference(values, base)
            if diff is not None:
                out[(a, o, lr)] = diff
    return out


def columns(rows: Sequence[dict]) -> list[tuple[str, float]]:
    """The (optimizer, lr) columns of ``rows``' tables, by optimizer then falling lr."""
    return sorted({(r["optimizer"], r["lr"]) for r in rows}, key=lambda c: (c[0], -c[1]))


def grouped(rows: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """``rows``' activations under each of ``GROUPS``' titles, by name."""
    names = sorted({r["activation"] for r in rows})
    return [(title, [n for n in names if family(n) == fam]) for fam, title in GROUPS]


def setting_text(setting: tuple[str, float]) -> str:
    """An (optimizer, lr) setting as the report writes it: "SGD lr=0.01"."""
    return f"{setting[0].upper()} lr={setting[1]:g}"
