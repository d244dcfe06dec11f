"""Endurance: log-normal LRS/HRS spreads (cycle-to-cycle and device-to-device), window vs cycles, lifetime.

Reads after a cell's failure are ignored. Cells that failed at or before the first read cycle are
"stuck": stuck at LRS when their median read is above the geometric midpoint of the LRS and HRS
medians (a cell with no valid read at all counts as stuck at HRS, an open cell); stuck cells are left out of
the spreads and of the Weibull fit, which describes wear-out of cells that worked.
Spreads use natural-log conductance: c2c = pooled within-cell sigma, d2d = sigma of cell means with the
c2c contribution removed. SEs are normal-theory approximations.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np

from calibration.datasets import EnduranceDataset
from calibration.noise_terms import EnduranceModel
from calibration.weibull import fit_weibull_censored


def _spreads(lng: np.ndarray) -> tuple[float, float, float, float]:
    """(c2c sigma, d2d sigma, SE c2c, SE d2d) from a (cells, cycles) array of ln g with NaN gaps."""
    n_obs = np.sum(np.isfinite(lng), axis=1)
    use = n_obs >= 2
    if use.sum() < 2:
        return float("nan"), float("nan"), float("nan"), float("nan")
    x = lng[use]
    m = np.nanmean(x, axis=1)
    v = np.nanvar(x, axis=1, ddof=1)
    dof = n_obs[use] - 1.0
    c2c_var = float(np.sum(v * dof) / np.sum(dof))
    d2d_var = float(max(np.var(m, ddof=1) - np.mean(c2c_var / n_obs[use]), 0.0))
    c2c, d2d = math.sqrt(c2c_var), math.sqrt(d2d_var)
    n_cells = int(use.sum())
    se_c2c = c2c / math.sqrt(2.0 * float(np.sum(dof)))
    se_d2d = math.sqrt(float(np.var(m, ddof=1))) / math.sqrt(2.0 * (n_cells - 1))
    return c2c, d2d, se_c2c, se_d2d


def fit_endurance(ds: EnduranceDataset) -> EnduranceModel:
    """Spreads, window(cycles), stuck fractions and the censored Weibull lifetime of an endurance run."""
    n = ds.g_lrs.shape[0]
    ctf, failed = ds.cycles_to_failure, ds.failed
    assert ctf is not None and failed is not None  # EnduranceDataset derives them when not given
    alive = np.where(failed[:, None], ds.cycles[None, :] < ctf[:, None], True)
    lrs = np.where(alive, ds.g_lrs, np.nan)
    hrs = np.where(alive, ds.g_hrs, np.nan)
    stuck = failed & (ctf <= ds.cycles[0])
    with np.errstate(all="ignore"):
        lrs_med_all = float(np.nanmedian(lrs[~stuck])) if np.any(np.isfinite(lrs[~stuck])) else float("nan")
        hrs_med_all = float(np.nanmedian(hrs[~stuck])) if np.any(np.isfinite(hrs[~stuck])) else float("nan")
    mid = math.sqrt(lrs_med_all * hrs_med_all) if math.isfinite(lrs_med_all * hrs_med_all) else float("nan")
    stuck_lrs = 0
    if stuck.any():
        both = np.concatenate([ds.g_lrs[stuck], ds.g_hrs[stuck]], axis=1)
        with np.errstate(all="ignore"), _quiet():
            med = np.nanmedian(both, axis=1)
        stuck_lrs = int(np.sum(np.isfinite(med) & (med > mid)))
    stuck_hrs = int(stuck.sum()) - stuck_lrs
    good = ~stuck
    lrs_g, hrs_g = lrs[good], hrs[good]
    with np.errstate(all="ignore"):
        l_c2c, l_d2d, l_se1, l_se2 = _spreads(np.log(lrs_g))
        h_c2c, h_d2d, h_se1, h_se2 = _spreads(np.log(hrs_g))
        ratio = lrs_g / hrs_g
    n_alive = np.sum(np.isfinite(ratio), axis=0)
    with _quiet():
        window = np.where(n_alive > 0, np.nanmedian(np.where(np.isfinite(ratio), ratio, np.nan), axis=0), np.nan)
    shape = scale = shape_se = scale_se = float("nan")
    n_fail = int(np.sum(failed[good]))
    if n_fail >= 2:
        w = fit_weibull_censored(ctf[good], failed[good])
        shape, scale, shape_se, scale_se = w.shape, w.scale, w.shape_se, w.scale_se
    return EnduranceModel(
        n_cells=int(n),
        lrs_median=lrs_med_all,
        lrs_sigma_c2c=l_c2c,
        lrs_sigma_d2d=l_d2d,
        hrs_median=hrs_med_all,
        hrs_sigma_c2c=h_c2c,
        hrs_sigma_d2d=h_d2d,
        sigma_se=np.array([l_se1, l_se2, h_se1, h_se2]),
        cycles=ds.cycles.astype(np.float64),
        window_median=window.astype(np.float64),
        n_alive=n_alive.astype(np.float64),
        weibull_shape=shape,
        weibull_shape_se=shape_se,
        weibull_scale=scale,
        weibull_scale_se=scale_se,
        n_failed=n_fail,
        n_censored=int(np.sum(~failed[good])),
        stuck_lrs_fraction=stuck_lrs / n,
        stuck_hrs_fraction=stuck_hrs / n,
        **_kaplan_meier(ctf[good], failed[good]),
    )


def _kaplan_meier(t: np.ndarray, failed: np.ndarray, max_points: int = 200) -> dict[str, np.ndarray]:
    """Kaplan-Meier failed fraction at the failure times (failures sorted before censorings at ties)."""
    if not failed.any():
        return {"km_t": np.zeros(0), "km_f": np.zeros(0)}
    order = np.lexsort((~failed, t))
    ts, fs = t[order], failed[order]
    at_risk = t.size - np.arange(t.size)
    surv = np.cumprod(1.0 - fs / at_risk)
    km_t, km_f = ts[fs], 1.0 - surv[fs]
    if km_t.size > max_points:
        pick = np.unique(np.linspace(0, km_t.size - 1, max_points).round().astype(int))
        km_t, km_f = km_t[pick], km_f[pick]
    return {"km_t": km_t.astype(np.float64), "km_f": km_f}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's 'All-NaN slice' RuntimeWarning for cells/cycles with no valid read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
