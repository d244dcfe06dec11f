"""The log-time relaxation law recovers its parameters and predicts the spread at any time."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import synthetic as syn
from calibration.datasets import RelaxationDataset
from calibration.fit_relaxation import fit_relaxation

G_MAX = 40e-6
LEVELS = np.array([5e-6, 15e-6, 25e-6, 35e-6])
TIMES = np.array([1.0, 10.0, 100.0, 1e3, 1e4, 1e5])


def _planted(seed: int = 0):  # type: ignore[no-untyped-def]
    a = np.array([0.1e-6, 0.0, -0.1e-6, 0.05e-6])
    b = np.array([-0.05e-6, -0.15e-6, -0.25e-6, -0.35e-6])
    s0 = np.array([0.8e-6, 1.2e-6, 1.0e-6, 0.6e-6])
    s1 = np.array([0.3e-6, 0.5e-6, 0.6e-6, 0.4e-6])
    ds = syn.relaxation(np.random.default_rng(seed), LEVELS, TIMES, 2000, a, b, s0, s1)
    return ds, a, b, s0, s1


def test_parameters_recovered_within_uncertainty() -> None:
    ds, a, b, s0, s1 = _planted()
    m = fit_relaxation(ds, G_MAX)
    np.testing.assert_allclose(m.levels_g, LEVELS)
    for est, se, true in ((m.a, m.a_se, a), (m.b, m.b_se, b), (m.s0sq, m.s0sq_se, s0**2), (m.s1sq, m.s1sq_se, s1**2)):
        z = (est - true) / se
        assert np.all(np.abs(z) < 4), z
    assert np.all(np.abs(np.sqrt(m.s1sq) - s1) / s1 < 0.10)
    assert m.t0_s == 1.0 and m.t_max_s == 1e5


def test_prediction_at_one_day_and_zero_before_t0() -> None:
    ds, a, b, s0, s1 = _planted(1)
    m = fit_relaxation(ds, G_MAX)
    shift, extra = m.shift(LEVELS, 86400.0), m.extra_sigma(LEVELS, 86400.0)
    L = np.log10(86400.0)
    # 4 levels -> cubic through the per-level values: prediction at the levels equals the per-level law
    np.testing.assert_allclose(shift, m.b * L, rtol=1e-6, atol=1e-15)
    assert np.all(np.abs(extra - s1 * np.sqrt(L)) / (s1 * np.sqrt(L)) < 0.10)
    assert np.all(m.shift(LEVELS, 0.5) == 0) and np.all(m.extra_sigma(LEVELS, 1.0) == 0)
    with pytest.raises(ValueError, match="> 0 s"):
        m.shift(LEVELS, 0.0)


def test_polynomial_across_many_levels() -> None:
    levels = np.linspace(2e-6, G_MAX, 12)
    gn = levels / G_MAX
    b = -0.4e-6 * gn
    s1 = 0.2e-6 + 0.3e-6 * gn
    ds = syn.relaxation(np.random.default_rng(2), levels, TIMES, 800, np.zeros(12), b, np.full(12, 0.5e-6), s1)
    m = fit_relaxation(ds, G_MAX, degree=2)
    g = np.linspace(2e-6, G_MAX, 7)
    np.testing.assert_allclose(m.b_poly(g), -0.4e-6 * g / G_MAX, atol=0.03e-6)
    truth = (0.2e-6 + 0.3e-6 * g / G_MAX) ** 2
    assert np.all(np.abs(m.s1sq_poly(g) - truth) / truth < 0.15)


def test_needs_two_times() -> None:
    with pytest.raises(ValueError, match="2 distinct times"):
        RelaxationDataset([1e-6, 1e-6], [1.0, 1.0], [1e-6, 1e-6])
    with pytest.raises(ValueError, match="t_s must be > 0"):
        RelaxationDataset([1e-6, 1e-6], [0.0, 1.0], [1e-6, 1e-6])
