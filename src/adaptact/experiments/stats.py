"""Statistics of a comparison: paired differences over seeds, Holm's correction for many
comparisons, the probability of improvement and the seeds a difference needs.

Runs of two activations with the same seed start from the same initial weights (where the
networks match) and see the same batches in the same order, so their difference is paired by
seed: the test is Student's paired t-test (scipy) over the per-seed differences. Where every seed
differs by the same amount (common: accuracies are counts over a test set) the t statistic is
infinite, and the exact sign-flip test decides instead: p = 2 / 2^n, the interval the whole line
until n seeds can reject (6 at 5%), the single difference after.

Many activations are compared with one baseline at once, so each decision is corrected over all
of them with Holm's step-down procedure (statsmodels): it keeps the chance of any false "better"
or "worse" among them at ``ALPHA``. The interval shown with a corrected decision is the t interval
at the level Holm's procedure tested that comparison at, ``1 - ALPHA / (m - i + 1)`` for the i-th
smallest p-value (the level of the step where the procedure stopped, for the comparisons after
it), so it excludes 0 exactly when the correction rejects.

The probability of improvement is rliable's (Agarwal et al., "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", NeurIPS 2021): P(X > Y) + P(X = Y) / 2 for a run X of the
activation and a run Y of the baseline, over all pairs of their runs, with Newcombe's score
interval (his method 5, Statistics in Medicine 2006), which keeps its width where a bootstrap of a
few seeds collapses: resampling runs that all beat the baseline gives runs that all beat it. The
seeds a difference needs are those that give the paired t-test 80% power (``POWER``) against the
observed mean difference and spread at the strictest level Holm may test it at, ``ALPHA / m``
(``t_test_power``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from ..errors import require

__all__ = ["ALPHA", "MAX_SEEDS_NEEDED", "POWER", "Difference", "Improvement", "holm", "improvement_interval",
           "paired_difference", "probability_of_improvement", "seeds_to_resolve", "t_test_power"]

ALPHA = 0.05  # family-wise error rate of a comparison's decisions
POWER = 0.8  # the chance a seed count is asked to give of resolving the observed difference
MAX_SEEDS_NEEDED = 10_000  # past this the report says "more than"
SAME_DIFFERENCE = 1e-9  # relative spread under which the per-seed differences are one difference

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Difference:
    """The mean of the per-seed differences with its t interval [low, high] at ``level``, the
    two-sided p-value of the paired t-test (nan with one pair), the standard deviation of the
    differences, and, after ``holm``, the corrected p-value and decision."""

    mean: float
    low: float
    high: float
    pairs: int
    p: float
    sd: float
    level: float = 1 - ALPHA
    p_corrected: float = math.nan  # set by ``holm``
    corrected: bool = False

    @property
    def excludes_zero(self) -> bool:
        """The interval lies above or below 0 (with ``holm``'s intervals: the correction rejects)."""
        return self.pairs >= 2 and (self.low > 0 or self.high < 0)


def _interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    """The paired t interval at ``level``; where every pair differs by the same amount (``sd`` 0),
    the inverted sign-flip test's (``_same_differences_p``): the mean alone where that test
    rejects at ``level``, else the whole line (no value of the mean is ruled out)."""
    stats = require("scipy.stats", "bench")

    if n < 2:
        return math.nan, math.nan
    if sd == 0:
        return (mean, mean) if _same_differences_p(n) <= 1 - level else (-math.inf, math.inf)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def _same_differences_p(n: int) -> float:
    """The two-sided p-value of the exact sign-flip (randomisation) test of a mean difference
    against any other value, where all ``n`` pairs differ by the same amount: the observed mean is
    the largest (or smallest) of the 2^n sign patterns, so p = 2 / 2^n. The t statistic is
    infinite there; accuracies counted on a few hundred test samples make equal differences over a
    few seeds common (2 seeds of digits: a difference of 2.78 points in each once read "better")."""
    return min(1.0, 2.0 / 2.0**n)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      level: float = 1 - ALPHA) -> Difference | None:
    """``values[seed] - baseline[seed]`` over the seeds both have: mean, t interval at ``level``
    and the paired t-test's p-value; None when they share no seed."""
    stats = require("scipy.stats", "bench")

    seeds = sorted(values.keys() & baseline.keys())
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Difference(mean, math.nan, math.nan, 1, math.nan, math.nan, level)
    # every seed differing by the same amount (to rounding: accuracies are counts over the test set,
    # their differences equal ones computed in floating point) makes the t statistic infinite or 0/0
    same = max(diffs) - min(diffs) <= SAME_DIFFERENCE * max(1.0, *map(abs, diffs))
    sd = 0.0 if same else statistics.stdev(diffs)
    if sd == 0:
        p = 1.0 if mean == 0 else _same_differences_p(len(diffs))
    else:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    low, high = _interval(mean, sd, len(diffs), level)
    return Difference(mean, low, high, len(diffs), p, sd, level)


def holm(differences: Mapping[K, Difference], alpha: float = ALPHA) -> dict[K, Difference]:
    """``differences`` corrected together by Holm's step-down procedure: each gets its adjusted
    p-value and its interval at the level the procedure tested it at (see the module's docstring),
    so ``excludes_zero`` is the corrected decision. Differences of one pair cannot be tested and
    are left out of the count."""
    multipletests = require("statsmodels.stats.multitest", "bench").multipletests

    testable = sorted((k for k, d in differences.items() if d.pairs >= 2), key=lambda k: differences[k].p)
    out = {k: replace(d, corrected=True) for k, d in differences.items()}
    if not testable:
        return out
    m = len(testable)
    reject, adjusted, _, _ = multipletests([differences[k].p for k in testable], alpha=alpha, method="holm")
    stopped = next((i for i, r in enumerate(reject) if not r), m)  # the first step that kept its hypothesis
    for i, k in enumerate(testable):
        d = differences[k]
        level = 1 - alpha / (m - min(i, stopped))
        low, high = _interval(d.mean, d.sd, d.pairs, level)
        out[k] = replace(d, low=low, high=high, level=level, p_corrected=float(adjusted[i]), corrected=True)
    return out


@dataclass(frozen=True)
class Improvement:
    """P(a run of the activation is better than a run of the baseline) with its interval
    [low, high] at level ``1 - ALPHA`` (``improvement_interval``)."""

    probability: float
    low: float
    high: float


def probability_of_improvement(values: Sequence[float], baseline: Sequence[float], *,
                               lower_is_better: bool = False) -> Improvement:
    """rliable's probability of improvement of ``values`` over ``baseline`` (unpaired: every run
    against every run; ties count half), with Newcombe's score interval (``improvement_interval``);
    no interval (nan) with one run each."""
    sign = -1.0 if lower_is_better else 1.0
    x = [sign * v for v in values]
    y = [sign * v for v in baseline]
    wins = sum((a > b) + 0.5 * (a == b) for a in x for b in y)
    point = wins / (len(x) * len(y))
    if len(x) < 2 and len(y) < 2:
        return Improvement(point, math.nan, math.nan)
    return Improvement(point, *improvement_interval(point, len(x), len(y)))


IMPROVEMENT_INNER = 1e-9  # how far inside (0, 1) the bracket of a root starts from an estimate at 0 or 1


def improvement_interval(theta: float, m: int, n: int, level: float = 1 - ALPHA) -> tuple[float, float]:
    """The score interval at ``level`` for the probability of improvement ``theta`` estimated from
    ``m`` and ``n`` runs: Newcombe's method 5 (Statistics in Medicine 25:559-573, 2006), the values
    of t with (theta - t)^2 <= z^2 V(t), V Hanley and McNeil's variance with both sizes set to
    their mean. Unlike a bootstrap, it does not shrink to a point when every run beats every run:
    3 runs against 3 give [0.50, 1]."""
    optimize = require("scipy.optimize", "bench")
    stats = require("scipy.stats", "bench")

    z2 = float(stats.norm.ppf(0.5 + level / 2)) ** 2
    star = (m + n) / 2 - 1

    def outside(t: float) -> float:  # positive outside the interval, negative inside
        variance = t * (1 - t) * (1 + star * ((1 - t) / (2 - t) + t / (1 + t))) / (m * n)
        return (theta - t) ** 2 - z2 * variance

    inner = IMPROVEMENT_INNER
    low = 0.0 if theta <= inner else float(optimize.brentq(outside, 0.0, theta - inner))
    high = 1.0 if theta >= 1 - inner else float(optimize.brentq(outside, theta + inner, 1.0))
    return low, high


def t_test_power(effect: float, n: int, level: float) -> float:
    """The power of the two-sided one-sample (paired) t-test at ``level`` with ``n`` pairs against a
    standardised ``effect`` (mean / sd). T = (Z + effect sqrt(n)) / S with S a chi variable over
    sqrt(n - 1), so the power is the normal tail integrated over S's density (scipy's quad): exact,
    where the noncentral t's tail routines (scipy's nct, statsmodels' TTestPower) return nan for
    some large effects."""
    stats, integrate = require("scipy.stats", "bench"), require("scipy.integrate", "bench")
    df = n - 1
    crit = float(stats.t.isf(level / 2, df))
    shift = effect * math.sqrt(n)
    root = math.sqrt(df)

    log_norm = (df / 2 - 1) * math.log(2) + math.lgamma(df / 2)  # of chi's density

    def tails(s: float) -> float:  # P(|T| > crit | S = s) times S's density at s
        x = s * root
        if x <= 0:
            return 0.0
        density = root * math.exp((df - 1) * math.log(x) - x * x / 2 - log_norm)
        upper = 0.5 * math.erfc((crit * s - shift) / math.sqrt(2))
        lower = 0.5 * math.erfc((crit * s + shift) / math.sqrt(2))
        return (upper + lower) * density

    top = float(stats.chi.isf(1e-14, df)) / root
    mode = math.sqrt(max(df - 1, 0)) / root
    value = sum(integrate.quad(tails, lo, hi, limit=200)[0] for lo, hi in ((0.0, mode), (mode, top)))
    return min(1.0, max(0.0, value))


def seeds_to_resolve(difference: Difference, comparisons: int, alpha: float = ALPHA,
                     power: float = POWER) -> int | None:
    """The seeds that give the paired t-test ``power`` against ``difference``'s mean and spread at
    ``alpha / comparisons`` (the strictest level Holm tests any of ``comparisons`` at); None where
    no count can (a mean of 0, or one pair: no spread to go by); ``MAX_SEEDS_NEEDED + 1`` past
    that bound."""
    if difference.pairs < 2 or difference.mean == 0 or not math.isfinite(difference.sd):
        return None
    if difference.sd == 0:  # the sign-flip test's count, should every seed differ by the same amount
        needed = max(2, math.ceil(math.log2(2 * max(1, comparisons) / alpha)))  # 2 / 2^n <= alpha / m
        return min(max(difference.pairs, needed), MAX_SEEDS_NEEDED + 1)
    effect = abs(difference.mean) / difference.sd
    level = alpha / max(1, comparisons)

    def enough(n: int) -> bool:
        return t_test_power(effect, n, level) >= power

    high = 2  # the power grows with n: double to a count that is enough, then halve the gap
    while not enough(high):
        if high >= MAX_SEEDS_NEEDED:
            return MAX_SEEDS_NEEDED + 1
        high = min(2 * high, MAX_SEEDS_NEEDED)
    low = high // 2 if high > 2 else 1  # not enough (or below 2 pairs)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
