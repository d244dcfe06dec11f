"""Summary statistics that have no value without data: None (shown "none"), never NaN or a numpy warning."""

from __future__ import annotations

import numpy as np


def median(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=float)
    return float(np.median(x)) if x.size else None


def mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=float)
    return float(np.mean(x)) if x.size else None


def std(x: np.ndarray, ddof: int = 0) -> float | None:
    """Standard deviation; None with no more than `ddof` values."""
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=ddof)) if x.size > ddof else None


def fraction(mask: np.ndarray) -> float | None:
    mask = np.asarray(mask, dtype=bool)
    return float(mask.mean()) if mask.size else None


def phase_stats(d: np.ndarray, tol: float) -> dict[str, float | None]:
    """Programming error of the cells of a program table (S): spread, mean, pulses, share within `tol`."""
    err = d["g"] - d["target"]
    return {
        "sigma_s": std(err),
        "mean_error_s": mean(err),
        "pulses_mean": mean(d["pulses"]),
        "within_tol": fraction(np.abs(err) <= tol),
    }
