"""The verdict of a comparison: each activation at its own tuned setting against the baseline at
the baseline's, corrected for the number of comparisons.

A setting is an (optimizer, learning rate) pair. Each activation's is the one with the best mean
validation score over its seeds (accuracy, or a language model's loss, at the evaluation the
validation split picks), never the test score; without a validation split, the lowest final
training loss (the test set stays unseen by the choice). A setting where a run diverged or failed
is chosen only where every setting of the activation has such a run. The test measures of the
chosen settings are then paired by seed with the baseline's (``stats.paired_difference``), all
comparisons are corrected together (``stats.holm``), and each gets its probability of improvement,
the seeds that would resolve it where it is unresolved, and a mark where a chosen setting had not
converged (its validation curve, mean over seeds, still improving in the last tenth of training).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .stats import ALPHA, Difference, Improvement, holm, paired_difference, probability_of_improvement, \
    seeds_to_resolve

__all__ = ["BETTER", "INDISTINGUISHABLE", "UNTESTED", "WORSE", "Comparison", "Setting", "selection_basis",
           "still_improving", "tuned_settings", "verdict"]

Setting = tuple[str, float]  # (optimizer, learning rate)
BETTER, INDISTINGUISHABLE, WORSE, UNTESTED = "better", "indistinguishable", "worse", "untested"
LAST_SHARE = 0.1  # "converged": the validation curve did not improve in this last share of training


@dataclass(frozen=True)
class Comparison:
    """One activation at its tuned ``setting`` against the baseline at ``baseline_setting``:
    the corrected paired ``difference`` of the test measure (in the report's units, signed as
    measured: for a loss, negative is better), the ``outcome``, the ``improvement`` probability,
    the ``seeds_needed`` to resolve it (None where resolved or where no count can), and which of
    the two settings had not converged (``unconverged``: "activation", "baseline")."""

    activation: str
    setting: Setting
    baseline_setting: Setting
    difference: Difference
    outcome: str
    improvement: Improvement
    seeds_needed: int | None
    unconverged: tuple[str, ...]


def _cells(rows: Sequence[dict]) -> dict[tuple[str, str, float], list[dict]]:
    cells: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["activation"], r["optimizer"], r["lr"])].append(r)
    return cells


def selection_basis(rows: Sequence[dict]) -> str:
    """What picks the settings of ``rows`` (one setup): "validation" or "training loss"."""
    return "validation" if all(_validation_curve(r) for r in rows) else "training loss"


def _validation_curve(row: Mapping) -> list[float]:
    return list(row.get("val_loss") or []) if row.get("metric") == "loss" else list(row.get("val_acc") or [])


def _selection_score(row: Mapping, basis: str) -> float:
    """Higher is better: the validation accuracy (or minus the loss) at the selected evaluation,
    or minus the last training loss."""
    if basis == "training loss":
        losses = row.get("train_loss") or [math.inf]
        return -float(losses[-1])
    curve = _validation_curve(row)
    value = float(curve[row["best_epoch"] - 1])
    return -value if row.get("metric") == "loss" else value


def tuned_settings(rows: Sequence[dict], usable: Sequence[dict]) -> dict[str, Setting]:
    """Each activation's setting by ``selection_basis``: ``rows`` are all runs of one setup,
    ``usable`` those that finished with finite measures (the only ones scored)."""
    basis = selection_basis(usable)
    finished = {id(r) for r in usable}
    failed = {(r["activation"], r["optimizer"], r["lr"]) for r in rows if id(r) not in finished}
    scores: dict[str, dict[Setting, float]] = defaultdict(dict)
    for (a, o, lr), rs in _cells(usable).items():
        values = [_selection_score(r, basis) for r in rs]
        if all(math.isfinite(v) for v in values):
            scores[a][(o, lr)] = statistics.fmean(values)
    chosen = {}
    for a, by_setting in scores.items():
        clean = {s: v for s, v in by_setting.items() if (a, *s) not in failed} or by_setting
        chosen[a] = max(clean, key=lambda s: (clean[s], -s[1], s[0]))  # ties: the smaller lr
    return chosen


def still_improving(rows: Sequence[dict]) -> bool:
    """Whether the mean validation curve of ``rows`` (one cell; the test curve where nothing was
    held out) reached its best in the last tenth of its evaluations and nowhere before."""
    loss = rows[0].get("metric") == "loss"
    curves = [_validation_curve(r) or list(r.get("test_loss" if loss else "test_acc") or []) for r in rows]
    n = min(len(c) for c in curves)
    if n < 2:
        return False
    sign = -1.0 if loss else 1.0
    mean = [sign * statistics.fmean(c[i] for c in curves) for i in range(n)]
    tail = max(1, math.ceil(LAST_SHARE * n))
    return max(mean[n - tail:]) > max(mean[:n - tail])


def verdict(rows: Sequence[dict], usable: Sequence[dict], baseline: str, metric: str, scale: float,
            lower_is_better: bool) -> list[Comparison]:
    """Every activation of ``usable`` but ``baseline``, each at its tuned setting, against the
    baseline at its own, on ``scale * metric``; corrected together; ranked best first (better,
    indistinguishable, untested, worse; by mean difference within each)."""
    settings = tuned_settings(rows, usable)
    if baseline not in settings:
        return []
    cells = _cells(usable)
    base_setting = settings[baseline]
    base_rows = cells[(baseline, *base_setting)]
    base = {r["seed"]: scale * r[metric] for r in base_rows}
    raw: dict[str, Difference] = {}
    for a, s in settings.items():
        if a == baseline:
            continue
        d = paired_difference({r["seed"]: scale * r[metric] for r in cells[(a, *s)]}, base)
        if d is not None:
            raw[a] = d
    corrected = holm(raw)
    testable = sum(d.pairs >= 2 for d in raw.values())
    base_unconverged = still_improving(base_rows)
    sign = -1.0 if lower_is_better else 1.0
    out = []
    for a, d in corrected.items():
        mine = cells[(a, *settings[a])]
        if d.pairs < 2:
            outcome = UNTESTED
        elif d.excludes_zero:
            outcome = BETTER if sign * d.mean > 0 else WORSE
        else:
            outcome = INDISTINGUISHABLE
        needed = seeds_to_resolve(d, testable, ALPHA) if outcome in (INDISTINGUISHABLE, UNTESTED) else None
        improvement = probability_of_improvement([scale * r[metric] for r in mine], list(base.values()),
                                                 lower_is_better=lower_is_better)
        unconverged = tuple(name for name, flag in (("activation", still_improving(mine)),
                                                    ("baseline", base_unconverged)) if flag)
        out.append(Comparison(a, settings[a], base_setting, d, outcome, improvement, needed, unconverged))
    order = {BETTER: 0, INDISTINGUISHABLE: 1, UNTESTED: 2, WORSE: 3}
    return sorted(out, key=lambda c: (order[c.outcome], -sign * c.difference.mean, c.activation))
