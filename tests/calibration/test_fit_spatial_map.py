"""Stationary spatial model from one error map: lag kernel, operator and eigenpairs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal
from scipy.sparse.linalg import eigsh

from calibration.datasets import ErrorMapDataset
from calibration.fit_spatial_map import covariance_operator, fit_spatial_map, full_covariance, lag_autocovariance

SMOOTH = np.array([[0.5, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 0.5]]) * 0.3e-6


def _field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """White noise smoothed by SMOOTH: autocovariance = autocorrelation of SMOOTH."""
    white = rng.standard_normal((shape[0] + 2, shape[1] + 2))
    return signal.convolve2d(white, SMOOTH, mode="valid")


def test_lag_kernel_matches_theory() -> None:
    x = _field(np.random.default_rng(0), (300, 300))
    k = lag_autocovariance(x - x.mean(), 3)
    theory = signal.correlate2d(SMOOTH, SMOOTH, mode="full")  # 5x5, lags -2..2
    np.testing.assert_allclose(k[1:6, 1:6], theory, rtol=0.1, atol=0.02 * theory.max())
    assert np.all(np.abs(k[0, :]) < 0.02 * theory.max())  # lag 3 rows: zero in theory


def test_operator_equals_full_matrix_and_eigh() -> None:
    rng = np.random.default_rng(1)
    x = _field(rng, (12, 15))
    kern = lag_autocovariance(x - x.mean(), 2)
    full = full_covariance(kern, (12, 15))
    np.testing.assert_allclose(full, full.T)
    op = covariance_operator(kern, (12, 15))
    v = rng.standard_normal(180)
    np.testing.assert_allclose(op.matvec(v), full @ v, rtol=1e-10, atol=1e-25)
    m_small = fit_spatial_map(ErrorMapDataset(x), k=4, max_lag=2)
    m_big = fit_spatial_map(ErrorMapDataset(x), k=4, max_lag=2, full_max_cells=10)  # eigsh path
    assert m_small.full_cov is not None and m_big.full_cov is None
    np.testing.assert_allclose(m_big.eigvals, m_small.eigvals, rtol=1e-6)
    for j in range(4):
        assert abs(abs(m_big.eigvecs[:, j] @ m_small.eigvecs[:, j]) - 1) < 1e-5
    w = np.linalg.eigvalsh(full)[::-1][:4]
    np.testing.assert_allclose(m_small.eigvals, w, rtol=1e-10)
    assert m_small.method == "stationary" and m_small.lag_cov.shape == (5, 5) and m_small.n_repeats == 1


def test_recovers_planted_top_eigenvalue() -> None:
    # one map samples the lowest spatial frequencies only a few times (~20 % scatter per map), so
    # check the mean over 8 maps against the planted value within 3 standard errors of that mean
    shape = (50, 50)
    kern_true = np.zeros((7, 7))
    kern_true[1:6, 1:6] = signal.correlate2d(SMOOTH, SMOOTH, mode="full")
    op = covariance_operator(kern_true, shape)
    planted = np.sort(eigsh(op, k=2, which="LA", v0=np.ones(2500))[0])[::-1]
    est = np.array(
        [
            fit_spatial_map(ErrorMapDataset(_field(np.random.default_rng(s), shape)), k=2, full_max_cells=0).eigvals
            for s in range(8)
        ]
    )
    se = est.std(axis=0, ddof=1) / np.sqrt(est.shape[0])
    assert np.all(np.abs(est.mean(axis=0) - planted) < 3 * se), (est.mean(axis=0) / planted, se / planted)
    assert np.all(se / planted < 0.1)


def test_bad_map() -> None:
    with pytest.raises(ValueError, match="2x2"):
        ErrorMapDataset(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="max_lag"):
        fit_spatial_map(ErrorMapDataset(np.random.default_rng(0).standard_normal((3, 3))), max_lag=3)


def test_spatial_p_value_is_uniform_on_white_maps_and_small_on_a_field() -> None:
    """The permutation test errs at its level on white maps and finds a mild smooth field.

    200 white 12x12 maps: p <= 0.01 has probability 0.01 each (exact for a permutation test, up to ties),
    so the count is Binomial(200, 0.01): P(count >= 8) = 1.1e-4. A field with lag-1 correlation ~0.5 gives
    Q far above any shuffle, so p is 0.01 (the smallest 99 shuffles can give) on every one of 10 maps.
    """
    from calibration.fit_spatial_map import spatial_p_value

    alarms = sum(
        spatial_p_value(np.random.default_rng(s).standard_normal((12, 12)), 2, seed=s) <= 0.01 for s in range(200)
    )
    assert alarms < 8
    for s in range(10):
        z = np.random.default_rng(500 + s).standard_normal((13, 13))
        field = z[:-1, :-1] + z[1:, :-1] + z[:-1, 1:] + z[1:, 1:]
        assert spatial_p_value(field, 2, seed=s) == 0.01
    assert spatial_p_value(np.ones((6, 6)), 2) == 1.0  # no variation: nothing to find
