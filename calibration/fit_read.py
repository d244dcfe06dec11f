"""Read noise from repeated reads: sigma versus conductance, and random-telegraph (two-level) statistics.

RTN detection, per cell: sort the reads, choose the split into a low and a high group that minimises
the within-group sum of squares (1-D two-means, exact via cumulative sums), and call the cell bimodal
when (high mean - low mean) / pooled within-group sigma exceeds ``separation`` and the smaller group
holds at least ``min_state_fraction`` of the reads. The ratio is scale-free, so its distribution for a
purely Gaussian cell depends only on the number of reads R (median ~2.7, but a long tail for small R):
the threshold used is the larger of ``separation`` and the (1 - false_alarm) quantile of that null
distribution, computed once per R by a fixed-seed Monte Carlo. Bimodal cells are excluded from the
Gaussian read sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from calibration.datasets import ReadNoiseDataset
from calibration.noise_terms import LevelTable, ReadNoiseModel, RTNStats
from calibration.stats import Groups, fit_poly, group_levels


@dataclass
class RTNDetection:
    """Per-cell result of the two-level test."""

    bimodal: np.ndarray  # (N,) bool
    separation: np.ndarray  # (N,) (mu_hi - mu_lo) / within sigma
    amplitude: np.ndarray  # (N,) S, mu_hi - mu_lo
    switch_prob: np.ndarray  # (N,) fraction of consecutive reads that change state
    threshold: float  # separation threshold actually used


@lru_cache(maxsize=64)
def null_threshold(n_reads: int, min_state_fraction: float, false_alarm: float, n_sim: int = 20000) -> float:
    """(1 - false_alarm) quantile of the two-means separation of Gaussian cells with n_reads reads."""
    rng = np.random.default_rng(12345)
    sep = _separation(rng.standard_normal((n_sim, n_reads)), min_state_fraction)[0]
    return float(np.quantile(sep, 1.0 - false_alarm))


def detect_rtn(
    g_reads: np.ndarray, separation: float = 3.0, min_state_fraction: float = 0.05, false_alarm: float = 1e-3
) -> RTNDetection:
    """Two-means split of each cell's reads, vectorised over cells; threshold as in the module docstring."""
    threshold = max(separation, null_threshold(g_reads.shape[1], min_state_fraction, false_alarm))
    sep, mu_lo, mu_hi = _separation(g_reads, min_state_fraction)
    bimodal = sep > threshold
    state = g_reads > (0.5 * (mu_lo + mu_hi))[:, None]
    switch = np.mean(state[:, 1:] != state[:, :-1], axis=1)
    return RTNDetection(bimodal, sep, mu_hi - mu_lo, switch, threshold)


def _separation(
    g_reads: np.ndarray, min_state_fraction: float, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(separation ratio, low mean, high mean) of the best two-means split of each row (in row chunks)."""
    if g_reads.shape[0] > chunk:
        parts = [
            _separation(g_reads[i : i + chunk], min_state_fraction, chunk) for i in range(0, g_reads.shape[0], chunk)
        ]
        seps, lows, highs = zip(*parts)
        return np.concatenate(seps), np.concatenate(lows), np.concatenate(highs)
    n, r = g_reads.shape
    offset = g_reads.mean(axis=1, keepdims=True)  # centred rows keep the cumulative sums well conditioned
    x = np.sort(g_reads - offset, axis=1)
    c1 = np.cumsum(x, axis=1)
    c2 = np.cumsum(x * x, axis=1)
    k_min = max(1, int(math.ceil(min_state_fraction * r)))
    ks = np.arange(k_min, r - k_min + 1)
    if ks.size == 0:
        raise ValueError(f"min_state_fraction={min_state_fraction} leaves no split for {r} reads")
    left_s, left_q = c1[:, ks - 1], c2[:, ks - 1]
    right_s, right_q = c1[:, -1:] - left_s, c2[:, -1:] - left_q
    ssw = (left_q - left_s**2 / ks) + (right_q - right_s**2 / (r - ks))
    best = np.argmin(ssw, axis=1)
    k = ks[best]
    rows = np.arange(n)
    mu_lo = left_s[rows, best] / k + offset[:, 0]
    mu_hi = right_s[rows, best] / (r - k) + offset[:, 0]
    within = np.sqrt(np.maximum(ssw[rows, best], 0.0) / (r - 2))
    amp = mu_hi - mu_lo
    with np.errstate(divide="ignore", invalid="ignore"):
        sep = np.where(within > 0, amp / within, np.where(amp > 0, np.inf, 0.0))
    return sep, mu_lo, mu_hi


def fit_read_noise(
    ds: ReadNoiseDataset,
    g_max: float,
    degree: int = 2,
    n_groups: int = 16,
    separation: float = 3.0,
    min_state_fraction: float = 0.05,
    false_alarm: float = 1e-3,
) -> ReadNoiseModel:
    """Pooled within-cell read sigma per conductance group, its polynomial in g/g_max, and RTN statistics."""
    if not g_max > 0:
        raise ValueError(f"g_max must be > 0 S, got {g_max}")
    g = ds.g_reads
    n, r = g.shape
    det = detect_rtn(g, separation, min_state_fraction, false_alarm)
    cell_mean = g.mean(axis=1)
    cell_var = g.var(axis=1, ddof=1)
    keep = ~det.bimodal
    if not np.any(keep):
        raise ValueError("every cell reads bimodally; no Gaussian read noise left to fit")
    if ds.target_g is not None:
        groups = group_levels(ds.target_g[keep], n_bins=n_groups)
    else:
        groups = _quantile_groups(cell_mean[keep], n_groups)
    cnt = groups.count
    level_g = np.bincount(groups.index, weights=cell_mean[keep]) / cnt
    pooled = np.bincount(groups.index, weights=cell_var[keep]) / cnt
    sigma = np.sqrt(pooled)
    dof = cnt * (r - 1)
    sigma_se = sigma / np.sqrt(2.0 * dof)
    between = np.bincount(groups.index, weights=(cell_mean[keep] - level_g[groups.index]) ** 2)
    mean_se = np.sqrt(between / np.maximum(cnt - 1, 1)) / np.sqrt(cnt)
    order = np.argsort(level_g)
    table = LevelTable(level_g[order], level_g[order], mean_se[order], sigma[order], sigma_se[order], cnt[order])
    poly = fit_poly(table.levels_g, table.sigma, table.sigma_se, g_max, degree)
    frac = float(det.bimodal.mean())
    bm = det.bimodal
    rtn = RTNStats(
        n_cells=int(n),
        fraction_bimodal=frac,
        fraction_se=math.sqrt(frac * (1.0 - frac) / n),
        amplitude_median=float(np.median(det.amplitude[bm])) if bm.any() else 0.0,
        amplitude_rel_median=float(np.median(det.amplitude[bm] / np.abs(cell_mean[bm]))) if bm.any() else 0.0,
        switch_prob_median=float(np.median(det.switch_prob[bm])) if bm.any() else 0.0,
        separation_threshold=float(det.threshold),
        min_state_fraction=float(min_state_fraction),
        false_alarm=float(false_alarm),
    )
    return ReadNoiseModel(table=table, sigma_poly=poly, rtn=rtn)


def _quantile_groups(values: np.ndarray, n_groups: int) -> Groups:
    """Equal-count groups of cells by their mean conductance."""
    n_groups = max(1, min(n_groups, values.size))
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_groups + 1))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_groups - 1)
    used = np.unique(index)
    index = np.searchsorted(used, index)
    count = np.bincount(index).astype(np.float64)
    return Groups(np.bincount(index, weights=values) / count, index, count)
