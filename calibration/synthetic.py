"""Synthetic datasets drawn from known noise models, for tests, benchmarks and demos (numpy only)."""

from __future__ import annotations

import numpy as np

from calibration.datasets import (
    EnduranceDataset,
    ProgrammingDataset,
    ReadNoiseDataset,
    RelaxationDataset,
    SpatialDataset,
)

IBM_1S_US = (0.348, 16.030, -43.853, 45.393, -16.815)


def poly_sigma(g: np.ndarray, coeffs_s: np.ndarray, g_max: float) -> np.ndarray:
    """sum c_i (g/g_max)^i with coefficients in S."""
    return np.polynomial.polynomial.polyval(np.asarray(g) / g_max, coeffs_s)


def programming(
    rng: np.random.Generator,
    levels_g: np.ndarray,
    n_per_level: int,
    family: str = "poly",
    *,
    g_max: float = 40e-6,
    sigma_coeffs: np.ndarray | None = None,
    mean_coeffs: np.ndarray | None = None,
    eta: float = 0.05,
    s: float = 0.2,
    level_sigma_frac: np.ndarray | None = None,
    verified: bool = False,
    mean_pulses: float = 1.0,
) -> ProgrammingDataset:
    """Draw g for each target from: 'poly' (mean/sigma polynomials in g/g_max, S), 'additive' (eta*g_max),
    'lognormal' (t*exp(N(0, s^2))) or 'state_dependent' (level_sigma_frac*g_max per level)."""
    levels_g = np.asarray(levels_g, dtype=np.float64)
    t = np.repeat(levels_g, n_per_level)
    z = rng.standard_normal(t.size)
    if family == "poly":
        sc = np.asarray(sigma_coeffs if sigma_coeffs is not None else np.array(IBM_1S_US) * 1e-6)
        mc = np.asarray(mean_coeffs if mean_coeffs is not None else [0.0])
        g = t + poly_sigma(t, mc, g_max) + poly_sigma(t, sc, g_max) * z
    elif family == "additive":
        g = t + eta * g_max * z
    elif family == "lognormal":
        g = t * np.exp(s * z)
    elif family == "state_dependent":
        frac = np.asarray(level_sigma_frac)
        g = t + np.repeat(frac, n_per_level) * g_max * z
    else:
        raise ValueError(f"unknown synthetic family {family!r}")
    pulses = 1.0 + rng.poisson(max(mean_pulses - 1.0, 0.0), t.size)
    return ProgrammingDataset(t, g, pulses=pulses, verified=verified)


def relaxation(
    rng: np.random.Generator,
    levels_g: np.ndarray,
    times_s: np.ndarray,
    n_cells: int,
    a: np.ndarray,
    b: np.ndarray,
    s0: np.ndarray,
    s1: np.ndarray,
    t0_s: float = 1.0,
) -> RelaxationDataset:
    """Independent reads at each time with mean a+b L and variance s0^2 + s1^2 L per level, L = log10(t/t0)."""
    levels_g = np.asarray(levels_g, dtype=np.float64)
    times_s = np.asarray(times_s, dtype=np.float64)
    lv = np.repeat(np.arange(levels_g.size), times_s.size * n_cells)
    ti = np.tile(np.repeat(np.arange(times_s.size), n_cells), levels_g.size)
    L = np.log10(times_s[ti] / t0_s)
    mu = np.asarray(a)[lv] + np.asarray(b)[lv] * L
    sd = np.sqrt(np.asarray(s0)[lv] ** 2 + np.asarray(s1)[lv] ** 2 * L)
    g = levels_g[lv] + mu + sd * rng.standard_normal(lv.size)
    return RelaxationDataset(levels_g[lv], times_s[ti], g, t0_s=t0_s)


def reads(
    rng: np.random.Generator,
    levels_g: np.ndarray,
    cells_per_level: int,
    n_reads: int,
    read_coeffs: np.ndarray,
    g_max: float = 40e-6,
    rtn_fraction: float = 0.0,
    rtn_amplitude_rel: float = 0.0,
    rtn_switch: float = 0.1,
) -> tuple[ReadNoiseDataset, np.ndarray]:
    """Repeated reads with sigma(g) polynomial; a fraction of cells get a two-state telegraph signal.

    Returns the dataset and the boolean mask of planted RTN cells.
    """
    t = np.repeat(np.asarray(levels_g, dtype=np.float64), cells_per_level)
    sig = poly_sigma(t, np.asarray(read_coeffs), g_max)
    g = t[:, None] + sig[:, None] * rng.standard_normal((t.size, n_reads))
    rtn = rng.random(t.size) < rtn_fraction
    if rtn.any():
        flips = rng.random((int(rtn.sum()), n_reads)) < rtn_switch
        state = (np.cumsum(flips, axis=1) + rng.integers(0, 2, (int(rtn.sum()), 1))) % 2
        g[rtn] += state * (rtn_amplitude_rel * t[rtn])[:, None]
    return ReadNoiseDataset(g, target_g=t), rtn


def endurance(
    rng: np.random.Generator,
    n_cells: int,
    cycles: np.ndarray,
    shape: float,
    scale: float,
    lrs_median: float = 50e-6,
    hrs_median: float = 5e-6,
    c2c: float = 0.1,
    d2d: float = 0.2,
    stuck_lrs: float = 0.0,
    stuck_hrs: float = 0.0,
) -> EnduranceDataset:
    """Log-normal LRS/HRS with cell offsets (d2d) and per-cycle noise (c2c); Weibull lifetimes censored
    at the last cycle; after failure a cell is stuck (both reads at the same state)."""
    cycles = np.asarray(cycles, dtype=np.float64)
    c = cycles.size
    off_l = d2d * rng.standard_normal((n_cells, 1))
    off_h = d2d * rng.standard_normal((n_cells, 1))
    lrs = lrs_median * np.exp(off_l + c2c * rng.standard_normal((n_cells, c)))
    hrs = hrs_median * np.exp(off_h + c2c * rng.standard_normal((n_cells, c)))
    life = scale * rng.weibull(shape, n_cells)
    failed = life <= cycles[-1]
    ctf = np.where(failed, life, cycles[-1])
    dead = cycles[None, :] >= ctf[:, None]
    dead &= failed[:, None]
    hrs = np.where(dead, lrs, hrs)  # a worn-out cell is stuck at LRS
    u = rng.random(n_cells)
    s_l = u < stuck_lrs
    s_h = (u >= stuck_lrs) & (u < stuck_lrs + stuck_hrs)
    hrs[s_l] = lrs[s_l]
    lrs[s_h] = hrs[s_h]
    failed = failed | s_l | s_h
    ctf = np.where(s_l | s_h, cycles[0], ctf)
    return EnduranceDataset(cycles, lrs, hrs, cycles_to_failure=ctf, failed=failed)


def spatial(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_repeats: int,
    factors: np.ndarray,
    noise_sigma: float,
) -> SpatialDataset:
    """Errors = factors @ z + white noise: covariance factors factors^T + noise_sigma^2 I (S^2)."""
    n = shape[0] * shape[1]
    z = rng.standard_normal((n_repeats, factors.shape[1]))
    e = z @ factors.T + noise_sigma * rng.standard_normal((n_repeats, n))
    return SpatialDataset(e.reshape(n_repeats, *shape))
