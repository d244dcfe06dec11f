"""Stationary spatial covariance from ONE programmed array: errors versus position.

Without repetitions the covariance of every pair cannot be estimated; assuming it depends only on the
(row, col) offset, the autocovariance C(dr, dc) is estimated from all cell pairs at that offset
(mean removed, divided by the number of overlapping pairs) for |dr|, |dc| <= max_lag and taken as 0
beyond. The implied n x n covariance Sigma_ij = C(r_i - r_j, c_i - c_j) acts on a map as a 2-D
correlation with that kernel, so only its top-k eigenpairs are computed: by ARPACK's Lanczos (eigsh) on
that operator, O(n) per product, or by LAPACK's eigh restricted to the k of them for arrays of at most
DENSE_MAX_CELLS cells; never the full eigendecomposition, whose O(n^3) cost ruled the fit from 32x32 cells
on. The full matrix is built only where the profile stores it (full_max_cells). The estimated kernel need
not be positive semi-definite: only positive eigenvalues are kept.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy import ndimage
from scipy.sparse.linalg import LinearOperator, eigsh

from calibration.datasets import ErrorMapDataset
from calibration.noise_terms import SpatialModel

# Up to this many cells the dense solver for the k pairs (~10 ms at 256) beats building Lanczos' operator products.
DENSE_MAX_CELLS = 256


def lag_autocovariance(x: np.ndarray, max_lag: int) -> np.ndarray:
    """(2m+1, 2m+1) array: element [m+dr, m+dc] = mean of x[i, j] * x[i+dr, j+dc] over overlapping pairs."""
    rows, cols = x.shape
    m = max_lag
    out = np.zeros((2 * m + 1, 2 * m + 1))
    for dr in range(-m, m + 1):
        for dc in range(-m, m + 1):
            a = x[max(0, -dr) : rows - max(0, dr), max(0, -dc) : cols - max(0, dc)]
            b = x[max(0, dr) : max(0, dr) + a.shape[0], max(0, dc) : max(0, dc) + a.shape[1]]
            out[m + dr, m + dc] = float(np.mean(a * b))
    return 0.5 * (out + out[::-1, ::-1])  # exact symmetry C(d) = C(-d)


def covariance_operator(kernel: np.ndarray, shape: tuple[int, int]) -> LinearOperator:
    """Sigma @ v for the stationary covariance with this lag kernel (zero beyond the array edges).

    scipy.ndimage.correlate takes every weight of magnitude <= 2.2e-16 for zero, and the kernel of a map in
    siemens (variances ~1e-13 S^2) has such lags: the kernel is correlated scaled to a largest entry of 1,
    so only weights below round-off of the sum (2.2e-16 of the largest) can be dropped.
    """
    n = shape[0] * shape[1]
    scale = float(np.max(np.abs(kernel))) or 1.0
    unit = np.asarray(kernel, dtype=np.float64) / scale

    def matvec(v: np.ndarray) -> np.ndarray:
        x = np.asarray(v, dtype=np.float64).reshape(shape)
        return (ndimage.correlate(x, unit, mode="constant", cval=0.0) * scale).ravel()

    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def full_covariance(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Build Sigma explicitly (n x n) from the lag kernel: block Toeplitz, one (cols x cols) block per row lag."""
    rows, cols = shape
    m = kernel.shape[0] // 2
    c = np.arange(cols)
    dc = c[None, :] - c[:, None]  # [c1, c2] = c2 - c1
    inside = np.abs(dc) <= m
    cov = np.zeros((rows, cols, rows, cols))
    for dr in range(-min(m, rows - 1), min(m, rows - 1) + 1):
        block = np.where(inside, kernel[m + dr, np.clip(m + dc, 0, 2 * m)], 0.0)  # Sigma[(r, c1), (r + dr, c2)]
        r = np.arange(max(0, -dr), rows - max(0, dr))
        cov[r, :, r + dr, :] = block
    return cov.reshape(rows * cols, rows * cols)


def top_eigenpairs(a: np.ndarray | LinearOperator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs (largest first) of a symmetric n x n matrix or operator, and only those.

    A dense matrix: LAPACK's eigh for the index range n-k..n-1 (only those eigenvectors). An operator:
    ARPACK's eigsh (tol 0: to machine precision; needs k < n) from a start vector drawn with seed 0, so a
    given input always gives the same pairs. The start vector is generic on purpose: a symmetric one (all
    ones) is orthogonal to every odd mode of a stationary kernel, which Lanczos then finds only by round-off.
    """
    n = a.shape[0]
    if isinstance(a, np.ndarray):
        w, v = scipy.linalg.eigh(a, subset_by_index=[n - k, n - 1])
    else:
        w, v = eigsh(a, k=k, which="LA", v0=np.random.default_rng(0).standard_normal(n))
    order = np.argsort(w)[::-1]
    return w[order], v[:, order]


def portmanteau(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Q = sum over the distinct nonzero lags d of n_d * r(d)^2 (2-D Box-Pierce) of each map in (..., rows, cols).

    Large when neighbours correlate; 0 for a constant map. Computed for a stack of maps at once (the shuffles).
    """
    rows, cols = x.shape[-2:]
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    var = np.mean(x * x, axis=(-2, -1))
    q = np.zeros(var.shape)
    for dr in range(0, max_lag + 1):  # one of each pair d, -d (r(d) = r(-d)), without d = 0
        for dc in range(-max_lag, max_lag + 1):
            if dr == 0 and dc <= 0:
                continue
            a = x[..., : rows - dr, max(0, -dc) : cols - max(0, dc)]
            b = x[..., dr:, max(0, dc) : max(0, dc) + a.shape[-1]]
            n_d = a.shape[-2] * a.shape[-1]
            r = np.divide(np.mean(a * b, axis=(-2, -1)), var, out=np.zeros_like(var), where=var > 0)
            q += n_d * r**2
    return q


def spatial_p_value(errors: np.ndarray, max_lag: int, shuffles: int = 99, seed: int = 0) -> float:
    """Permutation p-value of "errors do not depend on position": the map's portmanteau Q against shuffled maps.

    Shuffling keeps every error and destroys only their positions, so p = (1 + #shuffles with Q >= observed) /
    (1 + shuffles) is exact for any error distribution (level biases and outliers included), unlike the chi^2
    approximation of Q. Seeded: the same map gives the same p.
    """
    x = np.asarray(errors, dtype=np.float64)
    q = float(portmanteau(x, max_lag))
    rng = np.random.default_rng(seed)
    null = rng.permuted(np.broadcast_to(x.ravel(), (shuffles, x.size)), axis=1).reshape(shuffles, *x.shape)
    return (1 + int(np.sum(portmanteau(null, max_lag) >= q))) / (1 + shuffles)


def fit_spatial_map(ds: ErrorMapDataset, k: int = 10, max_lag: int = 3, full_max_cells: int = 1024) -> SpatialModel:
    """Stationary covariance model of one error map: lag kernel, top-k eigenpairs, full matrix if small.

    `full_max_cells` decides only whether the full matrix is stored, not how the eigenpairs are found.
    """
    if k < 1 or max_lag < 0:
        raise ValueError(f"need k >= 1 and max_lag >= 0, got k={k}, max_lag={max_lag}")
    shape = ds.shape
    if max_lag >= min(shape):
        raise ValueError(f"max_lag={max_lag} must be smaller than the array sides {shape}")
    x = ds.errors - ds.errors.mean()
    kernel = lag_autocovariance(x, max_lag)
    n = shape[0] * shape[1]
    full = full_covariance(kernel, shape) if n <= full_max_cells else None
    k_eff = min(k, n - 1)
    if n <= DENSE_MAX_CELLS:
        w, v = top_eigenpairs(full if full is not None else full_covariance(kernel, shape), k_eff)
    else:
        w, v = top_eigenpairs(covariance_operator(kernel, shape), k_eff)
    keep = w > 0
    if not np.any(keep):
        raise ValueError("the estimated spatial covariance has no positive eigenvalue")
    w, v = w[keep], v[:, keep].copy()
    flip = np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
    v *= np.where(flip == 0, 1.0, flip)
    return SpatialModel(
        shape=shape,
        eigvals=w,
        eigvecs=v,
        n_repeats=1,
        total_variance=float(kernel[max_lag, max_lag] * n),
        full_cov=full,
        method="stationary",
        lag_cov=kernel,
    )
