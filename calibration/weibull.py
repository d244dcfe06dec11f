"""Two-parameter Weibull maximum likelihood with right-censored lifetimes, with observed-information SEs.

F(t) = 1 - exp(-(t/scale)^shape). Failed cells contribute log f(t), censored cells log S(t) = -(t/scale)^shape.
The scale has a closed form given the shape, so the MLE is a 1-D root of the profile score in the
shape (brentq); standard errors come from the inverse observed information at the optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize


@dataclass
class WeibullFit:
    """Shape k, scale lambda (same unit as t) and their standard errors."""

    shape: float
    scale: float
    shape_se: float
    scale_se: float
    n_failed: int
    n_censored: int


def weibull_loglik(shape: float, scale: float, t: np.ndarray, failed: np.ndarray) -> float:
    """Censored log-likelihood."""
    z = (t / scale) ** shape
    lf = np.log(shape / scale) + (shape - 1.0) * np.log(t / scale)
    return float(np.sum(lf[failed]) - np.sum(z))


def fit_weibull_censored(t: np.ndarray, failed: np.ndarray) -> WeibullFit:
    """MLE of (shape, scale) from lifetimes t (> 0) with failed=False marking right-censored cells."""
    t = np.asarray(t, dtype=np.float64)
    failed = np.asarray(failed, dtype=bool)
    if t.shape != failed.shape or t.ndim != 1:
        raise ValueError("t and failed must be 1-D arrays of the same length")
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("lifetimes must be finite and > 0")
    r = int(failed.sum())
    n_c = int(t.size - r)
    if r < 2:
        raise ValueError(f"a Weibull fit needs >= 2 failed cells, got {r}")
    tf = t[failed]
    if np.ptp(tf) == 0 and n_c == 0:
        raise ValueError("all failures at the same cycle: the Weibull shape is unbounded")
    ts = t / np.max(t)  # scale-free for numerical stability
    lnt = np.log(ts)
    mean_ln_f = float(np.mean(lnt[failed]))

    def score(k: float) -> float:
        w = ts**k
        return float(np.sum(w * lnt) / np.sum(w) - 1.0 / k - mean_ln_f)

    lo, hi = 1e-3, 1.0
    while score(hi) < 0 and hi < 1e4:
        hi *= 2.0
    if score(hi) < 0:
        raise ValueError("Weibull shape diverges (failures all at nearly the same cycle)")
    k = optimize.brentq(score, lo, hi, xtol=1e-12, rtol=1e-12)
    lam = float((np.sum(ts**k) / r) ** (1.0 / k)) * float(np.max(t))
    k_se, lam_se = _standard_errors(k, lam, t, failed)
    return WeibullFit(float(k), lam, k_se, lam_se, r, n_c)


def _standard_errors(k: float, lam: float, t: np.ndarray, failed: np.ndarray) -> tuple[float, float]:
    """SEs from the analytic observed information of (k, lambda)."""
    r = failed.sum()
    x = t / lam
    lx = np.log(x)
    z = x**k
    # second derivatives of the log-likelihood
    d_kk = -r / k**2 - np.sum(z * lx**2)
    d_ll = (k / lam**2) * (r - (k + 1.0) * np.sum(z))
    d_kl = (-r + np.sum(z) + k * np.sum(z * lx)) / lam
    info = -np.array([[d_kk, d_kl], [d_kl, d_ll]])
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return float("nan"), float("nan")
    return math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(cov[1, 1], 0.0))
