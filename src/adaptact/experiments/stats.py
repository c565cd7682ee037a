"""Statistics of a comparison: paired differences over seeds with Student-t confidence intervals.

Runs of two activations with the same seed start from the same initial weights (where the
networks match) and see the same batches in the same order, so their difference is paired by
seed; the interval is over the per-seed differences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Difference", "paired_difference", "t_critical"]

# Two-sided 95% critical values of Student's t, degrees of freedom 1..30.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
_Z975 = 1.959964


def t_critical(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table to 30, then the
    Cornish-Fisher expansion around the normal quantile, within 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Difference:
    mean: float  # mean of the per-seed differences
    half_width: float  # of the 95% interval; nan with one pair
    pairs: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return self.pairs >= 2 and (self.low > 0 or self.high < 0)


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> Difference | None:
    """Mean of ``values[seed] - baseline[seed]`` over the seeds both have, with the half width of
    its 95% t interval; None when they share no seed."""
    seeds = sorted(values.keys() & baseline.keys())
    if not seeds:
        return None
    diffs: Sequence[float] = [values[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Difference(mean, math.nan, 1)
    half = t_critical(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Difference(mean, half, len(diffs))
