"""Stationary spatial model from one error map: lag kernel, operator and eigenpairs.

Only the k kept eigenpairs are computed (LAPACK's eigh for that index range up to DENSE_MAX_CELLS cells,
Lanczos on the operator above): they are checked against numpy's full eigendecomposition of the full matrix.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from scipy import signal
from scipy.sparse.linalg import eigsh
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # installed with scikit-learn

from calibration.datasets import ErrorMapDataset
from calibration.fit_spatial_map import (
    DENSE_MAX_CELLS,
    covariance_operator,
    fit_spatial_map,
    full_covariance,
    lag_autocovariance,
)

SMOOTH = np.array([[0.5, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 0.5]]) * 0.3e-6
# Smoother along rows than along columns: on a rectangle the top eigenvalues are then distinct (an isotropic
# field on a square has pairs of equal ones, whose eigenvectors are any rotation within the pair).
ANISO = np.outer([0.5, 1.0, 1.0, 0.5], [0.3, 1.0, 0.3]) * 0.3e-6


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """The reference eigendecompositions on one BLAS thread: two threads on 2 busy cores take 40x as long."""
    with threadpool_limits(1, user_api="blas"):
        yield


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
    m_big = fit_spatial_map(ErrorMapDataset(x), k=4, max_lag=2, full_max_cells=10)  # not stored: same pairs
    assert m_small.full_cov is not None and m_big.full_cov is None
    np.testing.assert_array_equal(m_big.eigvals, m_small.eigvals)
    np.testing.assert_array_equal(m_big.eigvecs, m_small.eigvecs)
    w = np.linalg.eigvalsh(full)[::-1][:4]
    np.testing.assert_allclose(m_small.eigvals, w, rtol=1e-10)
    assert m_small.lag_cov is not None and m_small.lag_cov.shape == (5, 5)
    assert m_small.method == "stationary" and m_small.n_repeats == 1


def _aniso_map(seed: int, shape: tuple[int, int]) -> np.ndarray:
    white = np.random.default_rng(seed).standard_normal((shape[0] + 3, shape[1] + 2))
    return signal.convolve2d(white, ANISO, mode="valid")


@pytest.mark.parametrize(
    ("shape", "seed"),
    [((12, 15), 1), ((20, 36), 2), ((16, 40), 3)],  # dense (180 cells), Lanczos (720 and 640 cells)
)
def test_the_kept_pairs_equal_the_top_k_of_the_full_eigendecomposition(shape: tuple[int, int], seed: int) -> None:
    """Eigenvalues to 1e-8 relative and eigenvectors up to sign, against numpy's eigh of the full matrix.

    Both solvers work to machine precision (Lanczos with tol 0): an eigenvalue is then off by ~1e-16 of the
    largest, and an eigenvector by ~1e-16 / (relative gap to its neighbours), <= 1e-10 for the gaps (> 1e-6,
    checked; 7e-5 at the least here) of these maps, inside 1e-8.
    """
    x = _aniso_map(seed, shape)
    n = shape[0] * shape[1]
    m = fit_spatial_map(ErrorMapDataset(x), k=10)
    kern = lag_autocovariance(x - x.mean(), 3)
    w, v = np.linalg.eigh(full_covariance(kern, shape))
    w, v = w[::-1][:11], v[:, ::-1][:, :10]
    assert np.all(-np.diff(w) / w[0] > 1e-6)  # distinct top eigenvalues: the eigenvectors are defined up to sign
    np.testing.assert_allclose(m.eigvals, w[:10], rtol=1e-8)
    assert np.all(np.abs(1 - np.abs(np.sum(m.eigvecs * v, axis=0))) < 1e-8)
    assert (m.full_cov is not None) == (n <= 1024) and (n <= DENSE_MAX_CELLS) == (shape == (12, 15))
    lean = fit_spatial_map(ErrorMapDataset(x), k=10, full_max_cells=0)  # storage changes, the pairs do not
    assert lean.full_cov is None
    np.testing.assert_array_equal(lean.eigvals, m.eigvals)
    np.testing.assert_array_equal(lean.eigvecs, m.eigvecs)


def test_operator_keeps_the_tiny_lags_of_a_kernel_in_siemens() -> None:
    """A map in S has lag covariances of 1e-16 S^2 and below, which scipy.ndimage.correlate alone drops as zero
    (weights <= 2.2e-16; the operator once lost 3e-4 of a product that way): the products equal the matrix's
    to round-off (1e-12 leaves room for the ~1e-16 per-term error of 49-term sums)."""
    rng = np.random.default_rng(4)
    kern = rng.standard_normal((7, 7)) * 1e-14
    kern = 0.5 * (kern + kern[::-1, ::-1])
    kern[0, 0] = kern[6, 6] = 1e-17
    kern[3, 0] = kern[3, 6] = -2e-16
    for shape in ((20, 36), (2, 9), (64, 64)):
        v = rng.standard_normal(shape[0] * shape[1])
        want = full_covariance(kern, shape) @ v
        got = covariance_operator(kern, shape).matvec(v)
        assert np.max(np.abs(got - want)) < 1e-12 * np.max(np.abs(want)), shape


def test_full_covariance_is_the_kernel_at_every_pair_offset() -> None:
    """The block-Toeplitz build equals Sigma_ij = C(r_j - r_i, c_j - c_i) (0 beyond max_lag), entry by entry."""
    rng = np.random.default_rng(5)
    for shape, m in (((12, 15), 2), ((3, 7), 3), ((7, 3), 3), ((1, 5), 2), ((5, 2), 4)):
        kern = rng.standard_normal((2 * m + 1, 2 * m + 1))
        r, c = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
        dr, dc = r[None, :] - r[:, None], c[None, :] - c[:, None]
        inside = (np.abs(dr) <= m) & (np.abs(dc) <= m)
        want = np.where(inside, kern[np.clip(m + dr, 0, 2 * m), np.clip(m + dc, 0, 2 * m)], 0.0)
        np.testing.assert_array_equal(full_covariance(kern, shape), want)


def test_a_64x64_map_fits_with_exact_kept_pairs() -> None:
    """4096 cells (no full matrix): 10 orthonormal eigenvectors whose residuals |Sigma v - lambda v| are at
    round-off (1e-9 of lambda: Lanczos converged to tol 0 leaves ~1e-15), eigenvalues positive, decreasing."""
    x = _aniso_map(6, (64, 64))
    m = fit_spatial_map(ErrorMapDataset(x), k=10)
    assert m.shape == (64, 64) and m.eigvecs.shape == (4096, 10) and m.full_cov is None
    assert np.all(m.eigvals > 0) and np.all(np.diff(m.eigvals) < 0)
    np.testing.assert_allclose(m.eigvecs.T @ m.eigvecs, np.eye(10), atol=1e-10)
    assert m.lag_cov is not None
    op = covariance_operator(m.lag_cov, (64, 64))
    for j in range(10):
        residual = op.matvec(m.eigvecs[:, j]) - m.eigvals[j] * m.eigvecs[:, j]
        assert np.linalg.norm(residual) < 1e-9 * m.eigvals[j], j
    assert 0 < m.explained_fraction < 1


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
