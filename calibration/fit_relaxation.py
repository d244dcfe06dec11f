"""Relaxation/drift after programming: per level, error mean and variance linear in L = log10(t/t0).

Law (per target level l, L = log10(t/t0) >= 0):
    mean error  mu_l(t)    = a_l + b_l * L
    variance    sigma_l^2(t) = s0sq_l + s1sq_l * L
a_l and s0sq_l describe the state at t0 (programming error plus read noise); b_l and s1sq_l are the
relaxation. Both regressions are weighted least squares on the per-(level, time) sample moments with
normal-theory standard errors, so every coefficient carries an analytic standard error. b(g) and
s1sq(g) are then fitted as polynomials in g/g_max across levels to predict any conductance.
"""

from __future__ import annotations

import numpy as np

from calibration.datasets import RelaxationDataset
from calibration.noise_terms import RelaxationModel
from calibration.stats import fit_poly, group_levels, weighted_linear_fit


def fit_relaxation(ds: RelaxationDataset, g_max: float, degree: int = 4) -> RelaxationModel:
    """Fit the log-time law per level and its b(g), s1sq(g) polynomials."""
    if not g_max > 0:
        raise ValueError(f"g_max must be > 0 S, got {g_max}")
    assert ds.t0_s is not None  # RelaxationDataset defaults it to the smallest t_s
    t0 = float(ds.t0_s)
    if np.any(ds.t_s < t0):
        raise ValueError(f"all t_s must be >= t0_s={t0} s")
    groups = group_levels(ds.target_g)
    times, t_index = np.unique(ds.t_s, return_inverse=True)
    n_l, n_t = groups.levels.size, times.size
    cell = groups.index * n_t + t_index.ravel()
    e = ds.g - ds.target_g
    cnt = np.bincount(cell, minlength=n_l * n_t).astype(np.float64)
    s1 = np.bincount(cell, weights=e, minlength=n_l * n_t)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        dev = e - mean[cell]
        var = np.bincount(cell, weights=dev * dev, minlength=n_l * n_t) / (cnt - 1.0)
    cnt, mean, var = (x.reshape(n_l, n_t) for x in (cnt, mean, var))
    L = np.log10(times / t0)

    out = {k: np.full(n_l, np.nan) for k in ("a", "a_se", "b", "b_se", "s0sq", "s0sq_se", "s1sq", "s1sq_se")}
    for lvl in range(n_l):
        ok = (cnt[lvl] >= 3) & np.isfinite(var[lvl]) & (var[lvl] > 0)
        if ok.sum() < 2:
            continue
        X = np.column_stack([np.ones(ok.sum()), L[ok]])
        beta, cov, _ = weighted_linear_fit(X, mean[lvl, ok], np.sqrt(var[lvl, ok] / cnt[lvl, ok]))
        out["a"][lvl], out["b"][lvl] = beta
        out["a_se"][lvl], out["b_se"][lvl] = np.sqrt(np.diag(cov))
        # Var(s^2) = 2 sigma^4/(n-1): weight with the fitted variance (one refinement step) to avoid bias
        se_v = var[lvl, ok] * np.sqrt(2.0 / (cnt[lvl, ok] - 1.0))
        beta_v, _, _ = weighted_linear_fit(X, var[lvl, ok], se_v)
        fitted = np.maximum(X @ beta_v, 1e-3 * var[lvl, ok])
        beta_v, cov_v, _ = weighted_linear_fit(X, var[lvl, ok], fitted * np.sqrt(2.0 / (cnt[lvl, ok] - 1.0)))
        out["s0sq"][lvl], out["s1sq"][lvl] = beta_v
        out["s0sq_se"][lvl], out["s1sq_se"][lvl] = np.sqrt(np.diag(cov_v))
    if not np.any(np.isfinite(out["b"])):
        raise ValueError("relaxation fit needs, for some level, >= 3 reads at each of >= 2 distinct times")
    return RelaxationModel(
        t0_s=t0,
        levels_g=groups.levels,
        b_poly=fit_poly(groups.levels, out["b"], out["b_se"], g_max, degree),
        s1sq_poly=fit_poly(groups.levels, out["s1sq"], out["s1sq_se"], g_max, degree),
        t_max_s=float(times.max()),
        **out,
    )
