"""KPP order-statistic intervals: exact ranks, coverage of a known distribution's quantile, small-n behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from models.montecarlo import draws_for_interval, order_statistic_ranks, summarize

TRIALS = 4000  # repeated Monte Carlo runs per coverage check


def _coverage(sample: np.ndarray, p: float, q: float) -> tuple[float, float]:
    """Share of the runs (rows) whose order-statistic interval of the p-quantile holds q, and the promised one."""
    lo, hi, promised = order_statistic_ranks(sample.shape[1], p)
    s = np.sort(sample, axis=1)
    return float(np.mean((s[:, lo - 1] <= q) & (q <= s[:, hi - 1]))), promised


def _sd(c: float) -> float:
    """Standard error of a coverage frequency over TRIALS independent runs (binomial: sqrt(c (1 - c) / R))."""
    return math.sqrt(c * (1 - c) / TRIALS)


def test_ranks_match_the_binomial_definition():
    # the classical equal-tailed 95 % interval of the median of 100 draws: the 40th and 61st order statistics
    assert order_statistic_ranks(100, 0.5)[:2] == (40, 61)
    for n, p in ((1000, 0.01), (1000, 0.05), (400, 0.01), (50, 0.3)):
        lo, hi, cov = order_statistic_ranks(n, p)
        tail = 0.025
        # l: the largest rank with P(B < l) <= tail; u: the smallest with P(B >= u) <= tail
        assert stats.binom.cdf(lo - 1, n, p) <= tail < stats.binom.cdf(lo, n, p)
        assert stats.binom.sf(hi - 1, n, p) <= tail < stats.binom.sf(hi - 2, n, p)
        assert cov == pytest.approx(stats.binom.cdf(hi - 1, n, p) - stats.binom.cdf(lo - 1, n, p), rel=1e-12)
        assert cov >= 0.95
    assert draws_for_interval(0.01) == 368 and draws_for_interval(0.99) == 368  # 0.99^368 <= 0.025 < 0.99^367
    with pytest.raises(ValueError, match="at least one draw"):
        order_statistic_ranks(0, 0.5)


def test_interval_covers_the_true_quantile_of_a_continuous_distribution():
    """Standard normal draws: coverage >= 95 % and equal to the binomial promise (exact for continuous data)."""
    rng = np.random.default_rng(20240917)
    n = 1000
    sample = rng.standard_normal((TRIALS, n))
    for k in (1.0, 5.0, 50.0):
        freq, promised = _coverage(sample, k / 100, float(stats.norm.ppf(k / 100)))
        # the frequency over R = 4000 runs has standard error sqrt(c (1 - c) / R) <= 0.0035 at c = 0.95; falling
        # 3 of them below 0.95 by chance has probability 0.13 %
        assert freq >= 0.95 - 3 * _sd(0.95)
        # and it is the promise itself (exact for a continuous law): 4 standard errors, 6e-5 by chance
        assert abs(freq - promised) <= 4 * _sd(promised)


def test_too_few_draws_for_a_lower_rank_use_the_worst_draw_and_say_what_it_covers():
    # 200 draws: P(no draw below the 1st percentile) = 0.99^200 = 0.134 > 0.025, so the lower end is the minimum
    lo, hi, promised = order_statistic_ranks(200, 0.01)
    assert lo == 1 and promised == pytest.approx(stats.binom.cdf(hi - 1, 200, 0.01) - 0.99**200, rel=1e-12)
    assert promised < 0.9
    rng = np.random.default_rng(7)
    freq, _ = _coverage(rng.random((TRIALS, 200)), 0.01, 0.01)  # uniform: the 1st percentile is 0.01
    assert abs(freq - promised) <= 4 * _sd(promised)  # the reported coverage is the real one, not 95 %


def test_interval_is_conservative_for_tied_accuracies():
    """Accuracies are counts over a test set (ties): coverage is at least the promise."""
    rng = np.random.default_rng(11)
    n_samples, acc = 200, 0.9
    sample = rng.binomial(n_samples, acc, size=(TRIALS, 1000)) / n_samples
    q = float(stats.binom.ppf(0.01, n_samples, acc)) / n_samples  # the 1st percentile of the accuracy law
    freq, promised = _coverage(sample, 0.01, q)
    assert freq >= promised - 3 * _sd(promised)


def test_summarize_reports_the_interval_per_k():
    accs = np.random.default_rng(3).permutation(1000) / 1000.0  # 0.000 ... 0.999
    r = summarize(accs, 0.0, 0, 100, kpp=(1.0, 5.0))
    lo, hi, cov = order_statistic_ranks(1000, 0.01)
    assert r.kpp_ci[1.0] == ((lo - 1) / 1000, (hi - 1) / 1000) and r.kpp_ci_coverage[1.0] == cov
    assert r.kpp_ci[1.0][0] <= r.kpp[1.0] <= r.kpp_ci[1.0][1]
    assert r.kpp_ci[5.0][0] <= r.kpp[5.0] <= r.kpp_ci[5.0][1]
    d = r.to_dict()
    assert d["kpp_ci"]["1.0"] == list(r.kpp_ci[1.0]) and d["kpp_ci_coverage"]["5.0"] >= 0.95
