"""Small statistics helpers shared by the fitters: grouping by level and weighted polynomial fits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.noise_terms import PolyFit

MAX_DISTINCT_LEVELS = 256


@dataclass
class Groups:
    """Rows grouped by target level: ``index`` maps each row to its group in ``levels``."""

    levels: np.ndarray
    index: np.ndarray
    count: np.ndarray


def group_levels(target: np.ndarray, n_bins: int = 32) -> Groups:
    """Group rows by distinct target; with more than MAX_DISTINCT_LEVELS targets, use equal-count bins.

    Binned groups take the mean target of their members as level.
    """
    levels, index = np.unique(target, return_inverse=True)
    if levels.size > MAX_DISTINCT_LEVELS:
        edges = np.quantile(target, np.linspace(0.0, 1.0, n_bins + 1))
        index = np.clip(np.searchsorted(edges, target, side="right") - 1, 0, n_bins - 1)
        used = np.unique(index)
        index = np.searchsorted(used, index)
        count = np.bincount(index).astype(np.float64)
        levels = np.bincount(index, weights=target) / count
        return Groups(levels, index, count)
    return Groups(levels.astype(np.float64), index.ravel(), np.bincount(index.ravel()).astype(np.float64))


@dataclass
class GroupMoments:
    """Per-group mean, sample variance (ddof=1) and their standard errors (normal theory)."""

    mean: np.ndarray
    var: np.ndarray
    mean_se: np.ndarray
    sigma: np.ndarray
    sigma_se: np.ndarray
    var_se: np.ndarray


def group_moments(values: np.ndarray, groups: Groups) -> GroupMoments:
    """Mean/variance of ``values`` per group with SE(mean)=s/sqrt(n), SE(s)=s/sqrt(2(n-1)), SE(s^2)=s^2 sqrt(2/(n-1))."""
    n = groups.count
    s1 = np.bincount(groups.index, weights=values, minlength=n.size)
    mean = s1 / n
    dev = values - mean[groups.index]
    ss = np.bincount(groups.index, weights=dev * dev, minlength=n.size)
    dof = np.maximum(n - 1.0, 1.0)
    var = np.where(n > 1, ss / dof, np.nan)
    sigma = np.sqrt(var)
    return GroupMoments(
        mean=mean,
        var=var,
        mean_se=sigma / np.sqrt(n),
        sigma=sigma,
        sigma_se=np.where(n > 1, sigma / np.sqrt(2.0 * dof), np.nan),
        var_se=np.where(n > 1, var * np.sqrt(2.0 / dof), np.nan),
    )


def weighted_linear_fit(X: np.ndarray, y: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares y ~ X beta with known standard errors; returns (beta, cov, reduced chi2)."""
    w = 1.0 / se
    A = X * w[:, None]
    b = y * w
    beta, *_ = np.linalg.lstsq(A, b, rcond=None)
    cov = np.linalg.pinv(A.T @ A)
    dof = X.shape[0] - X.shape[1]
    chi2 = float(np.sum((A @ beta - b) ** 2))
    return beta, cov, (chi2 / dof if dof > 0 else float("nan"))


def fit_poly(g: np.ndarray, y: np.ndarray, se: np.ndarray, g_ref: float, degree: int) -> PolyFit:
    """Weighted polynomial in g/g_ref; groups with a missing or non-positive SE are dropped.

    The fit remembers the range of the usable points and is held constant outside it.
    The degree is lowered to (number of usable points - 1) when there are too few points; with no
    usable point at all the fit is the unweighted mean (or 0) with an infinite-free zero covariance.
    """
    ok = np.isfinite(y) & np.isfinite(se) & (se > 0)
    if not np.any(ok):
        finite = y[np.isfinite(y)]
        value = float(finite.mean()) if finite.size else 0.0
        return PolyFit(np.array([value]), np.full((1, 1), np.nan), float(g_ref))
    x = g[ok] / g_ref
    deg = int(min(degree, int(ok.sum()) - 1))
    X = np.vander(x, deg + 1, increasing=True)
    beta, cov, chi2 = weighted_linear_fit(X, y[ok], se[ok])
    return PolyFit(beta, cov, float(g_ref), chi2, float(g[ok].min()), float(g[ok].max()))
