"""Paired differences and their 95% t intervals, against hand computations."""

import math

import pytest

from adaptact.experiments.report import differences, ranks
from adaptact.experiments.stats import paired_difference, t_critical


def test_paired_difference_by_hand():
    # per-seed differences 1, 2, 4 (seed 3 has no pair): mean 7/3, sample sd sqrt(7/3), t(0.975, 2) = 4.303
    d = paired_difference({0: 11.0, 1: 12.0, 2: 14.0, 3: 99.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert d.pairs == 3
    assert d.mean == pytest.approx(7 / 3)
    assert d.half_width == pytest.approx(4.303 * math.sqrt(7 / 3) / math.sqrt(3))
    assert d.low == pytest.approx(7 / 3 - d.half_width) and not d.excludes_zero  # [-1.46, 6.13]
    tight = paired_difference({0: 11.0, 1: 11.2, 2: 10.9}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert tight.excludes_zero and tight.low > 0
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one.pairs == 1 and math.isnan(one.half_width) and not one.excludes_zero
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


@pytest.mark.parametrize("df, expected", [(1, 12.706), (5, 2.571), (30, 2.042), (40, 2.021), (60, 2.000),
                                          (120, 1.980), (10_000, 1.960)])
def test_t_critical(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=1.5e-3)


def test_report_differences_pair_by_seed_and_ranks():
    accuracies = {"relu": (0.90, 0.80, 0.85), "acon_c": (0.92, 0.83, 0.86)}
    rows = [{"activation": a, "optimizer": "sgd", "lr": 0.1, "seed": s, "best_acc": acc}
            for a, accs in accuracies.items() for s, acc in enumerate(accs)]
    (d,) = differences(rows, "best_acc", "relu").values()
    by_hand = paired_difference({0: 92.0, 1: 83.0, 2: 86.0}, {0: 90.0, 1: 80.0, 2: 85.0})
    assert d.mean == pytest.approx(by_hand.mean) and d.half_width == pytest.approx(by_hand.half_width)
    assert ranks({("relu", "sgd", 0.1): (85.0, 0, 3), ("acon_c", "sgd", 0.1): (87.0, 0, 3)}) == {
        ("relu", "sgd", 0.1): 2, ("acon_c", "sgd", 0.1): 1}
