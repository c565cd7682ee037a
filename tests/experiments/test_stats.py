"""The comparison's statistics against hand computations and against their own guarantees: the
paired t interval and test, Holm's family-wise error rate and its consistency with the intervals
shown, rliable's probability of improvement, and the power behind "seeds to resolve"."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from adaptact.experiments.cells import differences, ranks
from adaptact.experiments.stats import (ALPHA, MAX_SEEDS_NEEDED, POWER, holm, paired_difference,
                                        probability_of_improvement, seeds_to_resolve, t_test_power)


def test_paired_difference_by_hand():
    # differences 1, 2, 4 over the seeds both ran (seed 3 has no pair): mean 7/3, sd sqrt(7/3)
    d = paired_difference({0: 11.0, 1: 12.0, 2: 14.0, 3: 99.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert d.pairs == 3 and d.mean == pytest.approx(7 / 3) and d.sd == pytest.approx(math.sqrt(7 / 3))
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)  # t(0.975, 2 df)
    assert (d.low, d.high) == pytest.approx((7 / 3 - half, 7 / 3 + half), abs=1e-5)
    t = (7 / 3) / (math.sqrt(7 / 3) / math.sqrt(3))
    assert d.p == pytest.approx(2 * scipy_stats.t.sf(t, 2)) and not d.excludes_zero  # [-1.46, 6.13]
    tight = paired_difference({0: 11.0, 1: 11.2, 2: 10.9}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert tight.excludes_zero and tight.low > 0 and tight.p < ALPHA
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one.pairs == 1 and math.isnan(one.low) and math.isnan(one.p) and not one.excludes_zero
    assert paired_difference({0: 1.0}, {1: 1.0}) is None



def test_every_seed_differing_by_the_same_amount_is_the_sign_flip_tests_evidence():
    """Equal differences (to rounding: accuracies are counts over a test set) make the t statistic
    infinite; 2 seeds of them once read "better". The exact sign-flip test gives p = 2 / 2^n: not
    below 5% before 6 seeds, and the interval is the whole line until it is."""
    test_set = 360  # digits' test samples: accuracies are multiples of 1/360
    ours = {0: 58 / test_set * 100, 1: 71 / test_set * 100}
    base = {0: 48 / test_set * 100, 1: 61 / test_set * 100}  # 10 samples fewer on each seed
    two = paired_difference(ours, base)
    assert two.mean == pytest.approx(2.78, abs=5e-3) and two.sd == 0.0 and two.p == 0.5
    assert (two.low, two.high) == (-math.inf, math.inf) and not two.excludes_zero
    corrected = holm({"a": two, "b": paired_difference({0: 1.0, 1: 2.0}, {0: 0.0, 1: 2.5})})["a"]
    assert not corrected.excludes_zero and math.isinf(corrected.low)
    assert seeds_to_resolve(two, comparisons=3) == 7  # 2 / 2^7 <= 0.05 / 3 < 2 / 2^6
    six = paired_difference({s: s + 1.0 for s in range(6)}, {s: float(s) for s in range(6)})
    assert six.p == 2 / 2**6 and (six.low, six.high) == (1.0, 1.0) and six.excludes_zero
    assert seeds_to_resolve(six, comparisons=1) == 6
    nothing = paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert nothing.p == 1.0 and not nothing.excludes_zero


def _diff(mean_shift: float, rng: np.random.Generator, seeds: int = 5):
    base = rng.normal(size=seeds)
    shifted = base + mean_shift + rng.normal(size=seeds)
    return paired_difference(dict(enumerate(shifted)), dict(enumerate(base)))


def test_holm_by_hand():
    # p-values 0.01, 0.02, 0.03, 0.5 (m = 4): Holm adjusts to 0.04, 0.06, 0.06, 0.5 and rejects the
    # first only (0.02 > 0.05 / 3 stops it); paired differences built to have those p-values
    def with_p(p: float):
        t = scipy_stats.t.isf(p / 2, 2)  # three pairs: mean / (sd / sqrt 3) = t with sd 1
        mean = t / math.sqrt(3)
        return paired_difference({0: mean - 1, 1: mean, 2: mean + 1}, {0: 0.0, 1: 0.0, 2: 0.0})

    raw = {name: with_p(p) for name, p in (("a", 0.01), ("b", 0.02), ("c", 0.03), ("d", 0.5))}
    assert [raw[k].p for k in "abcd"] == pytest.approx([0.01, 0.02, 0.03, 0.5])
    out = holm(raw)
    assert [out[k].p_corrected for k in "abcd"] == pytest.approx([0.04, 0.06, 0.06, 0.5])
    assert [out[k].excludes_zero for k in "abcd"] == [True, False, False, False]
    assert out["a"].level == pytest.approx(1 - 0.05 / 4)
    assert [out[k].level for k in "bcd"] == pytest.approx([1 - 0.05 / 3] * 3)  # where the procedure stopped
    assert all(raw[k].excludes_zero for k in "abc")  # uncorrected, three of them would be "found"


@pytest.fixture
def quick_multipletests(monkeypatch):
    """statsmodels' multipletests runs gc.collect() on every call (0.1 s with torch loaded): the
    simulations below call it thousands of times (the patch holds for all their examples)."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 12), seeds=st.integers(2, 8),
       shift=st.floats(0.0, 3.0))
def test_holm_intervals_exclude_zero_exactly_where_it_rejects(quick_multipletests, seed, m, seeds, shift):
    rng = np.random.default_rng(seed)
    raw = {k: _diff(shift * (k % 3) / 2, rng, seeds) for k in range(m)}
    for k, d in holm(raw).items():
        if abs(d.p_corrected - ALPHA) > 1e-9:  # away from the boundary itself
            assert d.excludes_zero == (d.p_corrected < ALPHA), (k, d)
        assert d.low <= d.mean <= d.high and (d.high - d.low) >= (raw[k].high - raw[k].low) - 1e-9


def test_holm_keeps_the_family_wise_error_rate(quick_multipletests):
    # 20 activations no different from the baseline, 5 seeds, 400 comparisons of them: uncorrected
    # 95% intervals call one or more "different" in about 64% of the comparisons, Holm in about 5%
    rng = np.random.default_rng(20261206)
    any_uncorrected = any_corrected = 0
    trials = 400
    for _ in range(trials):
        raw = {k: _diff(0.0, rng) for k in range(20)}
        any_uncorrected += any(d.excludes_zero for d in raw.values())
        any_corrected += any(d.excludes_zero for d in holm(raw).values())
    assert any_uncorrected / trials > 0.5
    assert any_corrected / trials <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials)


def test_probability_of_improvement_by_hand():
    # 1, 2, 3 against 2, 2, 2: 3 pairs lost, 3 tied (half each), 3 won -> 4.5 / 9
    p = probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert p.probability == pytest.approx(0.5) and 0.0 <= p.low <= 0.5 <= p.high <= 1.0
    assert p.low == pytest.approx(1 - p.high)  # symmetric about 1/2
    assert probability_of_improvement([3.0, 4.0], [1.0, 2.0]).probability == 1.0
    assert probability_of_improvement([3.0, 4.0], [1.0, 2.0], lower_is_better=True).probability == 0.0
    wide = probability_of_improvement([1.0, 5.0, 2.0, 6.0], [3.0, 4.0, 3.5, 2.5])
    assert wide.low < wide.probability < wide.high
    assert math.isnan(probability_of_improvement([3.0], [1.0]).low)  # one run each: no interval


def test_every_run_beating_every_run_of_a_few_seeds_is_no_certainty():
    """3 runs all above 3 runs: P = 1, but the interval reaches down to about 1/2 (a bootstrap gave
    [1, 1]); it narrows with more runs and is never a point. By hand from Newcombe's equation:
    at t = 0.5 with m = n = 3, (1 - t)^2 = 0.25 against 1.96^2 * V(t) = 0.249, just outside."""
    three = probability_of_improvement([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert three.probability == 1.0 and three.high == 1.0 and three.low == pytest.approx(0.501, abs=5e-4)
    five = probability_of_improvement([6.0, 7, 8, 9, 10], [1.0, 2, 3, 4, 5])
    assert three.low < five.low < 0.7
    worse = probability_of_improvement([4.0, 5.0, 6.0], [1.0, 2.0, 3.0], lower_is_better=True)
    assert (worse.probability, worse.low) == (0.0, 0.0) and worse.high == pytest.approx(1 - three.low)


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_the_improvement_interval_covers_the_true_probability(seeds, shift):
    """Seeded experiments of ``seeds`` runs ~ N(shift, 1) against ``seeds`` runs ~ N(0, 1): the 95%
    interval holds P = Phi(shift / sqrt 2) in at least 85% of them (measured over 5000: 89.6% and
    97.1% at 3 seeds, 95.0% and 95.3% at 5; a percentile bootstrap's held it in 36% at 3 seeds and
    P = 0.92, 80% at P = 0.5)."""
    truth = float(scipy_stats.norm.cdf(shift / math.sqrt(2)))
    rng = np.random.default_rng(seeds)
    trials = 400
    held = 0
    for _ in range(trials):
        p = probability_of_improvement(list(rng.normal(shift, 1.0, seeds)), list(rng.normal(0.0, 1.0, seeds)))
        held += p.low <= truth <= p.high
    assert held / trials >= 0.85, held / trials


def _power(effect: float, n: int, level: float) -> float:
    """The paired t-test's power, simulated: the share of 40000 seeded experiments of n pairs
    with differences ~ N(effect, 1) that the test rejects (no power formula shared with the code)."""
    rng = np.random.default_rng(n)
    x = rng.normal(effect, 1.0, size=(40_000, n))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > scipy_stats.t.isf(level / 2, n - 1)))


@pytest.mark.parametrize("values, comparisons", [((1.0, 3.0, 2.5), 1), ((9.0, 14.0, 2.0), 22),
                                                 ((0.5, -0.2, 0.4, 0.1), 5)])
def test_seeds_to_resolve_give_the_power_asked_at_the_strictest_level(values, comparisons):
    d = paired_difference(dict(enumerate(values)), dict.fromkeys(range(len(values)), 0.0))
    n = seeds_to_resolve(d, comparisons)
    level = ALPHA / comparisons
    effect = abs(d.mean) / d.sd
    assert _power(effect, n, level) >= POWER - 0.01 and _power(effect, n - 1, level) < POWER + 0.01
    assert n >= 2


def test_seeds_to_resolve_where_no_count_can():
    assert seeds_to_resolve(paired_difference({0: 1.0}, {0: 0.0}), 3) is None  # one pair: no spread
    assert seeds_to_resolve(paired_difference({0: 1.0, 1: -1.0}, {0: 0.0, 1: 0.0}), 3) is None  # mean 0
    tiny = paired_difference({0: 1.0, 1: -0.999}, {0: 0.0, 1: 0.0})
    assert seeds_to_resolve(tiny, 20) == MAX_SEEDS_NEEDED + 1


def test_report_differences_pair_by_seed_and_ranks():
    accuracies = {"relu": (0.90, 0.80, 0.85), "acon_c": (0.92, 0.83, 0.86)}
    rows = [{"activation": a, "optimizer": "sgd", "lr": 0.1, "seed": s, "best_acc": acc}
            for a, accs in accuracies.items() for s, acc in enumerate(accs)]
    (d,) = differences(rows, "best_acc", "relu").values()
    by_hand = paired_difference({0: 92.0, 1: 83.0, 2: 86.0}, {0: 90.0, 1: 80.0, 2: 85.0})
    assert d == by_hand
    assert ranks({("relu", "sgd", 0.1): (85.0, 0, 3), ("acon_c", "sgd", 0.1): (87.0, 0, 3)}) == {
        ("relu", "sgd", 0.1): 2, ("acon_c", "sgd", 0.1): 1}


def test_t_test_power_matches_statsmodels_where_it_answers():
    from statsmodels.stats.power import TTestPower

    checked = 0
    for effect in (0.3, 2.0, 7.3, 20.0):
        for n in (2, 3, 5, 10, 30, 60, 118, 500):
            for level in (0.05, 0.05 / 22):
                theirs = TTestPower().power(effect_size=effect, nobs=n, alpha=level, alternative="two-sided")
                mine = t_test_power(effect, n, level)
                assert 0.0 <= mine <= 1.0
                if math.isfinite(theirs):  # statsmodels' noncentral t gives nan for some of these
                    assert mine == pytest.approx(theirs, abs=1e-6), (effect, n, level)
                    checked += 1
    assert checked > 40
