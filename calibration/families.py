"""The noise families the papers train with, fitted by maximum likelihood to programming errors.

additive        g = t + N(0, (eta*g_max)^2)                      (MTRD additive; NeFT uniform sigma_d)
lognormal       g = t * exp(N(0, s^2))                           (MTRD multiplicative)
state_dependent g = t + N(0, (sigma_l*g_max)^2), one sigma per level (NeFT IV-F)
All three are zero-mean around the target, as in the papers. Goodness of fit: log-likelihood in the
conductance domain (so AIC/BIC compare across families), and the Kolmogorov-Smirnov statistic of the
probability-integral transform against U(0,1) (descriptive: parameters are estimated from the same data).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

from calibration.datasets import ProgrammingDataset
from calibration.noise_terms import PIT_PROBS, FamilyFit
from calibration.stats import group_levels

FITTED_FAMILIES = ("additive", "lognormal", "state_dependent")
_TINY = 1e-300
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _ks(u: np.ndarray) -> tuple[float, float]:
    """KS test of the PIT values against U(0,1); exact p-value up to 10^4 samples, asymptotic beyond."""
    method = "exact" if u.size <= 10_000 else "asymp"
    res = stats.kstest(np.clip(u, 0.0, 1.0), "uniform", method=method)
    return float(res.statistic), float(res.pvalue)


def _norm_logpdf(z_num: np.ndarray, sd: np.ndarray | float) -> np.ndarray:
    """log N(x; 0, sd^2) (plain numpy: scipy's generic logpdf is ~10x slower on 10^6 values)."""
    return -0.5 * (z_num / sd) ** 2 - np.log(sd) - _HALF_LOG_2PI


def _finish(
    family: str, params: dict, se: dict, k: int, n: int, loglik: float, u: np.ndarray | None, **arrays: np.ndarray
) -> FamilyFit:
    if u is None or not math.isfinite(loglik):
        ks, p = 1.0, 0.0
        aic = bic = float("inf")
        loglik = float("-inf")
    else:
        ks, p = _ks(u)
        arrays["pit_quantiles"] = np.quantile(u, PIT_PROBS)
        aic = 2.0 * k - 2.0 * loglik
        bic = k * math.log(n) - 2.0 * loglik
    return FamilyFit(family, params, se, k, n, float(loglik), float(aic), float(bic), ks, p, **arrays)


def fit_additive(ds: ProgrammingDataset, g_max: float) -> FamilyFit:
    """MLE of a zero-mean Gaussian with one sigma for all levels, eta = sigma/g_max."""
    e = ds.error
    n = e.size
    sd = max(math.sqrt(float(np.mean(e * e))), _TINY)
    loglik = float(np.sum(_norm_logpdf(e, sd)))
    eta = sd / g_max
    return _finish("additive", {"eta": eta}, {"eta": eta / math.sqrt(2.0 * n)}, 1, n, loglik, special.ndtr(e / sd))


def fit_lognormal(ds: ProgrammingDataset, g_max: float) -> FamilyFit:
    """MLE of g = t*exp(N(0, s^2)); impossible (AIC = inf) when any target or reading is <= 0."""
    n = ds.g.size
    if np.any(ds.g <= 0) or np.any(ds.target_g <= 0):
        return _finish("lognormal", {"s": float("nan")}, {"s": float("nan")}, 1, n, float("-inf"), None)
    r = np.log(ds.g / ds.target_g)
    s = max(math.sqrt(float(np.mean(r * r))), _TINY)
    loglik = float(np.sum(_norm_logpdf(r, s)) - np.sum(np.log(ds.g)))
    return _finish("lognormal", {"s": s}, {"s": s / math.sqrt(2.0 * n)}, 1, n, loglik, special.ndtr(r / s))


def fit_state_dependent(ds: ProgrammingDataset, g_max: float) -> FamilyFit:
    """MLE of a zero-mean Gaussian with one sigma per target level (sigmas as fractions of g_max)."""
    e = ds.error
    n = e.size
    groups = group_levels(ds.target_g)
    msq = np.bincount(groups.index, weights=e * e) / groups.count
    sd = np.maximum(np.sqrt(msq), _TINY)
    sd_row = sd[groups.index]
    loglik = float(np.sum(_norm_logpdf(e, sd_row)))
    frac = sd / g_max
    se = frac / np.sqrt(2.0 * groups.count)
    k = int(groups.levels.size)
    params = {"sigma_mean": float(frac.mean()), "sigma_min": float(frac.min()), "sigma_max": float(frac.max())}
    param_se = {"sigma_mean": float(math.sqrt(np.sum(se * se)) / k)}
    return _finish(
        "state_dependent",
        params,
        param_se,
        k,
        n,
        loglik,
        special.ndtr(e / sd_row),
        levels_g=groups.levels,
        level_sigma_frac=frac,
    )


def fit_families(ds: ProgrammingDataset, g_max: float) -> dict[str, FamilyFit]:
    """Fit every paper family to the same programming errors (the rows the programming wrote: `ds.law()`)."""
    if not g_max > 0:
        raise ValueError(f"g_max must be > 0 S, got {g_max}")
    ds = ds.law()
    return {
        "additive": fit_additive(ds, g_max),
        "lognormal": fit_lognormal(ds, g_max),
        "state_dependent": fit_state_dependent(ds, g_max),
    }


def best_family(fits: dict[str, FamilyFit], criterion: str = "aic") -> str:
    """Family with the lowest AIC (or BIC)."""
    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    return min(fits.values(), key=lambda f: getattr(f, criterion)).family
