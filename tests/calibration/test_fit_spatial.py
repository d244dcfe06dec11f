"""Spatial covariance: top-k eigenpairs equal numpy's eigh of the sample covariance; planted structure found.

Both ways of finding them are checked: the thin SVD (few repetitions or few cells) and, above
PARTIAL_MIN_SIZE repetitions and cells, Lanczos for the k kept pairs only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # installed with scikit-learn

from calibration import fit_spatial as fs
from calibration import synthetic as syn
from calibration.datasets import SpatialDataset
from calibration.fit_spatial import fit_spatial


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """The reference decompositions on one BLAS thread: two threads on 2 busy cores take 40x as long."""
    with threadpool_limits(1, user_api="blas"):
        yield


def test_top_k_matches_eigh_of_sample_covariance() -> None:
    rng = np.random.default_rng(0)
    shape = (6, 8)
    n = 48
    factors = rng.standard_normal((n, 3)) * np.array([3e-6, 2e-6, 1e-6])
    ds = syn.spatial(rng, shape, 3000, factors, 0.2e-6)
    m = fit_spatial(ds, k=5)
    cov = np.cov(ds.errors.reshape(3000, n), rowvar=False)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1][:5], v[:, ::-1][:, :5]
    np.testing.assert_allclose(m.eigvals, w, rtol=1e-8)
    for j in range(5):
        assert abs(abs(m.eigvecs[:, j] @ v[:, j]) - 1.0) < 1e-8
    assert m.full_cov is not None
    np.testing.assert_allclose(m.full_cov, cov, rtol=1e-10, atol=1e-24)
    assert m.total_variance == pytest.approx(np.trace(cov))
    assert m.shape == shape and m.eigvecs.shape == (n, 5)
    # planted low-rank structure: the top-3 subspace matches the planted factors' span
    q, _ = np.linalg.qr(factors)
    overlap = np.linalg.svd(q.T @ m.eigvecs[:, :3], compute_uv=False)
    assert np.all(overlap > 0.99)
    planted = np.sort(np.linalg.eigvalsh(factors @ factors.T + 0.04e-12 * np.eye(n)))[::-1][:3]
    assert np.all(np.abs(m.eigvals[:3] - planted) / planted < 0.1)
    assert m.explained_fraction > 0.9
    # DAT factor reproduces the rank-k covariance
    a = m.low_rank_factor
    np.testing.assert_allclose(a @ a.T, (v * w) @ v.T, rtol=1e-6, atol=1e-20)


def test_many_repetitions_of_many_cells_compute_only_the_kept_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """600 repetitions of 576 cells (both > PARTIAL_MIN_SIZE): Lanczos's top 5 equal numpy's eigh of the sample
    covariance (eigenvalues to 1e-8 relative, eigenvectors up to sign) and the SVD path's pairs.

    Lanczos (tol 0) and eigh work to machine precision: eigenvalues agree to ~1e-15 of the largest, eigenvectors
    to ~1e-16 / (relative gap), <= 1e-10 for the gaps (> 1e-6, checked) here.
    """
    assert min(600, 576) > fs.PARTIAL_MIN_SIZE
    rng = np.random.default_rng(2)
    shape, n = (24, 24), 576
    factors = rng.standard_normal((n, 5)) * np.array([3e-6, 2.4e-6, 1.8e-6, 1.3e-6, 0.9e-6])  # 5 distinct pairs
    ds = syn.spatial(rng, shape, 600, factors, 0.2e-6)
    m = fit_spatial(ds, k=5)
    cov = np.cov(ds.errors.reshape(600, n), rowvar=False)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1][:6], v[:, ::-1][:, :5]
    assert np.all(-np.diff(w) / w[0] > 1e-6)
    np.testing.assert_allclose(m.eigvals, w[:5], rtol=1e-8)
    assert np.all(np.abs(1 - np.abs(np.sum(m.eigvecs * v, axis=0))) < 1e-8)
    assert np.all(m.eigvecs[np.abs(m.eigvecs).argmax(axis=0), np.arange(5)] > 0)
    assert m.total_variance == pytest.approx(np.trace(cov), rel=1e-12) and m.full_cov is not None
    monkeypatch.setattr(fs, "PARTIAL_MIN_SIZE", 10**9)  # the thin SVD of every pair
    svd = fit_spatial(ds, k=5)
    np.testing.assert_allclose(m.eigvals, svd.eigvals, rtol=1e-10)
    np.testing.assert_allclose(m.eigvecs, svd.eigvecs, atol=1e-9)  # the same sign convention
    assert m.total_variance == svd.total_variance


def test_large_array_skips_full_matrix_and_k_capped_by_rank() -> None:
    rng = np.random.default_rng(1)
    ds = SpatialDataset(rng.standard_normal((5, 40, 40)) * 1e-6)
    m = fit_spatial(ds, k=10, full_max_cells=1024)
    assert m.full_cov is None
    assert m.eigvals.size == 4  # 5 repeats -> rank 4
    assert np.all(m.eigvecs[np.abs(m.eigvecs).argmax(axis=0), np.arange(4)] > 0)


def test_needs_repeats() -> None:
    with pytest.raises(ValueError, match=">= 2 repetitions"):
        SpatialDataset(np.zeros((1, 4, 4)))
