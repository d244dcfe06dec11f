"""Spatial covariance of programming errors across the cells of an array, full and as top-k eigenpairs.

With R repetitions of the same array (errors X, R x n cells, centred per cell), the sample covariance
is C = Xc^T Xc / (R-1). Its leading eigenpairs are taken from the thin SVD of Xc (exact, and cheap when
R << n): eigvals = s^2/(R-1), eigvecs = right singular vectors. When both R and n exceed
PARTIAL_MIN_SIZE the SVD's O(R n min(R, n)) cost is avoided: only the k kept pairs of C are computed,
by Lanczos on the operator v -> Xc^T (Xc v) / (R-1) (calibration.fit_spatial_map.top_eigenpairs).
Each eigenvector's sign is fixed so its largest-magnitude entry is positive. The full matrix is stored
only for arrays up to ``full_max_cells`` cells. DAT samples errors as mu + V_k D_k^(1/2) z, z ~ N(0, I_k).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from calibration.datasets import SpatialDataset
from calibration.fit_spatial_map import top_eigenpairs
from calibration.noise_terms import SpatialModel

# Above this many repetitions and cells both, the thin SVD (~1 s at 500 x 4096 on one core) gives way to Lanczos.
PARTIAL_MIN_SIZE = 512


def sample_covariance_operator(xc: np.ndarray) -> LinearOperator:
    """C @ v = Xc^T (Xc v) / (R-1) for centred errors Xc (R x n), without forming C."""
    r, n = xc.shape

    def matvec(v: np.ndarray) -> np.ndarray:
        return xc.T @ (xc @ np.asarray(v, dtype=np.float64).ravel()) / (r - 1)

    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def fit_spatial(ds: SpatialDataset, k: int = 10, full_max_cells: int = 1024) -> SpatialModel:
    """Top-k eigenpairs (and, for small arrays, the full matrix) of the cell-to-cell error covariance."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r = ds.errors.shape[0]
    x = ds.errors.reshape(r, -1)
    n = x.shape[1]
    xc = x - x.mean(axis=0, keepdims=True)
    total = float(np.sum(xc * xc))
    if min(r, n) > PARTIAL_MIN_SIZE and total > 0:
        eig, vecs = top_eigenpairs(sample_covariance_operator(xc), min(k, min(r, n) - 1))
    else:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        eig, vecs = s**2 / (r - 1), vt.T
    # the rank among the pairs at hand: all of them (SVD), or the top ones (Lanczos), which gives the same k_eff
    rank = int(np.sum(eig > eig.max() * 1e-12)) if eig.size and eig.max() > 0 else 0
    k_eff = max(1, min(k, rank if rank > 0 else 1, eig.size))
    vecs = vecs[:, :k_eff].copy()
    flip = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(k_eff)])
    vecs *= np.where(flip == 0, 1.0, flip)
    full = np.cov(x, rowvar=False) if n <= full_max_cells else None
    return SpatialModel(
        shape=ds.shape,
        eigvals=eig[:k_eff].copy(),
        eigvecs=vecs,
        n_repeats=int(r),
        total_variance=total / (r - 1),
        full_cov=np.atleast_2d(full) if full is not None else None,
    )
