"""Endurance: censored Weibull, log-normal c2c/d2d spreads, window, stuck fractions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from calibration import synthetic as syn
from calibration.datasets import EnduranceDataset
from calibration.fit_endurance import fit_endurance
from calibration.weibull import fit_weibull_censored, weibull_loglik

CYCLES = np.unique(np.logspace(0, 6, 40).astype(int))


def test_censored_weibull_recovers_shape_and_scale() -> None:
    rng = np.random.default_rng(0)
    life = 1e4 * rng.weibull(2.0, 3000)
    stop = 1.2e4
    failed = life <= stop
    t = np.minimum(life, stop)
    assert 0.2 < (~failed).mean() < 0.4  # substantial censoring
    w = fit_weibull_censored(t, failed)
    assert abs(w.shape - 2.0) < 3 * w.shape_se and abs(w.shape - 2.0) / 2.0 < 0.05
    assert abs(w.scale - 1e4) < 3 * w.scale_se and abs(w.scale - 1e4) / 1e4 < 0.05
    assert w.n_failed == failed.sum() and w.n_censored == (~failed).sum()
    # agrees with scipy's censored MLE
    ref = stats.weibull_min.fit(stats.CensoredData(uncensored=t[failed], right=t[~failed]), floc=0)
    assert w.shape == pytest.approx(ref[0], rel=1e-3) and w.scale == pytest.approx(ref[2], rel=1e-3)
    # the optimum: nudging either parameter lowers the likelihood
    best = weibull_loglik(w.shape, w.scale, t, failed)
    for dk, dl in ((1.01, 1.0), (0.99, 1.0), (1.0, 1.01), (1.0, 0.99)):
        assert weibull_loglik(w.shape * dk, w.scale * dl, t, failed) < best


def test_weibull_standard_errors_match_spread_over_repeats() -> None:
    shapes = []
    ses = []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        life = 5e3 * rng.weibull(1.5, 400)
        failed = life <= 6e3
        w = fit_weibull_censored(np.minimum(life, 6e3), failed)
        shapes.append(w.shape)
        ses.append(w.shape_se)
    assert np.std(shapes) == pytest.approx(np.mean(ses), rel=0.3)


def test_weibull_refuses_too_few_failures() -> None:
    with pytest.raises(ValueError, match=">= 2 failed"):
        fit_weibull_censored(np.array([1.0, 2.0, 3.0]), np.array([True, False, False]))


def test_endurance_spreads_window_stuck_and_lifetime() -> None:
    rng = np.random.default_rng(1)
    ds = syn.endurance(rng, 3000, CYCLES, shape=1.2, scale=3e5, c2c=0.1, d2d=0.25, stuck_lrs=0.03, stuck_hrs=0.05)
    m = fit_endurance(ds)
    assert abs(m.stuck_lrs_fraction - 0.03) < 0.01
    assert abs(m.stuck_hrs_fraction - 0.05) < 0.012
    for est, true, se in (
        (m.lrs_sigma_c2c, 0.1, m.sigma_se[0]),
        (m.lrs_sigma_d2d, 0.25, m.sigma_se[1]),
        (m.hrs_sigma_c2c, 0.1, m.sigma_se[2]),
        (m.hrs_sigma_d2d, 0.25, m.sigma_se[3]),
    ):
        assert abs(est - true) / true < 0.10
        assert abs(est - true) < 4 * se
    assert m.lrs_median == pytest.approx(50e-6, rel=0.05)
    assert m.hrs_median == pytest.approx(5e-6, rel=0.05)
    early = m.window_median[m.cycles < 100]
    assert np.all(np.abs(early - 10.0) / 10.0 < 0.1)
    assert abs(m.weibull_shape - 1.2) < 4 * m.weibull_shape_se
    assert abs(m.weibull_scale - 3e5) < 4 * m.weibull_scale_se
    assert m.n_censored > 0 and m.n_failed > 0
    assert m.km_t.size == m.km_f.size > 0 and np.all(np.diff(m.km_f) >= 0)


def test_failures_derived_from_window_when_not_given() -> None:
    lrs = np.full((3, 4), 50e-6)
    hrs = np.full((3, 4), 5e-6)
    hrs[1, 2:] = 40e-6  # window collapses from cycle index 2 onward
    hrs[2, 1] = 40e-6  # a single bad read, recovers -> not failed
    ds = EnduranceDataset(np.array([1, 10, 100, 1000]), lrs, hrs)
    np.testing.assert_array_equal(ds.failed, [False, True, False])
    np.testing.assert_array_equal(ds.cycles_to_failure, [1000, 100, 1000])


def test_bad_endurance_input() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        EnduranceDataset(np.array([1, 1]), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="both"):
        EnduranceDataset(np.array([1, 2]), np.ones((2, 2)), np.ones((2, 2)), cycles_to_failure=np.ones(2))
