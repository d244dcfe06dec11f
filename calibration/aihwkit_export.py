"""Export a profile as the constructor arguments of IBM aihwkit's inference noise models (plain dict/JSON).

aihwkit is not a dependency: the output is a JSON-able dict whose keys match the aihwkit names
(aihwkit.inference.noise): PCMLikeNoiseModel(prog_coeff, g_max, prog_coeff_g_max_reference, t_read, t_0,
prog_noise_scale, read_noise_scale, drift_scale) and ReRamWan2022NoiseModel(coeff_dic, g_max,
coeff_g_max_reference, noise_scale), plus the rpu_config.forward short-term read noise
(w_noise_type=ADDITIVE_CONSTANT, w_noise). aihwkit works in microsiemens; so does this export.
The aihwkit models are zero-mean: a measured mean programming error cannot be expressed and is
reported under "dropped". JSON object keys are strings: convert coeff_dic keys back with float().
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from calibration.profile import NoiseProfile

DEFAULT_TIMES_S = (1.0, 3600.0, 86400.0, 2 * 86400.0, 365.25 * 86400.0)
_GRID = 201


def _us(value_s: float) -> float:
    """Siemens to microsiemens, rounded to 12 significant digits (drops float noise like 0.34799999)."""
    return float(f"{float(value_s) * 1e6:.12g}")


def _sigma_coeffs(profile: NoiseProfile, verified: bool, t_s: float | None, degree: int = 4) -> list[float]:
    """Coefficients (uS) of sigma_total(g) = sqrt(prog^2 + relaxation^2) as a polynomial in g/g_max.

    Exact (no refit) when the profile's programming sigma is itself the stored polynomial and no
    relaxation is added; state_dependent: the polynomial through (or, beyond 5 levels, least squares
    over) the per-level sigmas; otherwise a least-squares fit of degree <= 4 on a grid over [g_min, g_max].
    """
    model = None
    if profile.family not in ("gaussian", "additive", "lognormal", "state_dependent"):
        model = profile.verified if verified else profile.open_loop
    extra_needed = (
        t_s is not None and profile.relaxation_model is not None and profile.relaxation_model.log_time(t_s) > 0
    )
    if model is not None and not extra_needed:
        return [_us(c) for c in model.sigma_poly.coeffs]
    if profile.family in ("gaussian", "additive"):
        return [_us(profile.programming_sigma(np.array([profile.g_max]))[0])]
    if profile.family == "lognormal":
        slope = float(profile.programming_sigma(np.array([profile.g_max]))[0])  # sigma = slope * g/g_max
        return [0.0, _us(slope)]
    if profile.family == "state_dependent":  # through the per-level sigmas (exact for <= 5 levels)
        g = profile.levels_g
        deg = min(degree, g.size - 1)
    else:
        g = np.linspace(profile.g_min, profile.g_max, _GRID)
        deg = degree
    sig = profile.programming_sigma(g, verified=verified)
    if t_s is not None:
        sig = np.sqrt(sig**2 + profile.relaxation(g, t_s)[1] ** 2)
    coeffs = np.polynomial.polynomial.polyfit(g / profile.g_max, sig, deg)
    return [_us(c) for c in coeffs]


def export_aihwkit(
    profile: NoiseProfile, verified: bool = False, times_s: tuple[float, ...] = DEFAULT_TIMES_S
) -> dict[str, Any]:
    """Noise-model arguments for aihwkit from a profile (see module docstring for the mapping)."""
    g_max_us = _us(profile.g_max)
    prog = _sigma_coeffs(profile, verified, None)
    t_prog = 1.0
    model = profile.verified if verified else profile.open_loop
    if model is not None:
        t_prog = model.t_read_s
    coeff_dic: dict[str, list[float]] = {}
    for t in times_s:
        coeff_dic[repr(float(t))] = prog if t <= t_prog else _sigma_coeffs(profile, verified, t)
    g = np.linspace(profile.g_min, profile.g_max, _GRID)
    w_noise = float(np.mean(profile.read_sigma(g)) / profile.g_max)
    dropped: list[str] = []
    if model is not None and profile.family is None:
        worst = float(np.max(np.abs(model.mean_error(g))))
        if worst > 0:
            dropped.append(f"mean programming error up to {worst * 1e6:.4g} uS (aihwkit noise is zero-mean)")
    if profile.relaxation_model is not None and np.any(profile.relaxation_model.b_poly.coeffs != 0):
        dropped.append("mean relaxation shift b(g)*log10(t/t0) (only the spread is exported)")
    if profile.spatial is not None:
        dropped.append("spatial covariance (aihwkit samples cells independently)")
    return {
        "source": {
            "family": profile.family,
            "verified": bool(verified),
            "board_id": profile.provenance.board_id,
            "created_utc": profile.provenance.created_utc,
        },
        "units": "uS",
        "g_min": _us(profile.g_min),
        "g_max": g_max_us,
        "PCMLikeNoiseModel": {
            "prog_coeff": prog,
            "g_max": g_max_us,
            "prog_coeff_g_max_reference": g_max_us,
            "prog_noise_scale": 1.0,
            # the PCM drift and 1/f laws do not describe ReRAM: switch them off (IBM supplement B.2)
            "read_noise_scale": 0.0,
            "drift_scale": 0.0,
        },
        "ReRamWan2022NoiseModel": {
            "coeff_dic": coeff_dic,
            "g_max": g_max_us,
            "coeff_g_max_reference": g_max_us,
            "noise_scale": 1.0,
        },
        "forward": {"w_noise_type": "ADDITIVE_CONSTANT", "w_noise": w_noise},
        "dropped": dropped,
    }


def write_aihwkit_json(
    profile: NoiseProfile, path: str | Path, verified: bool = False, overwrite: bool = False
) -> Path:
    """Write export_aihwkit(profile) as indented JSON; refuse to replace a file unless overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    data = export_aihwkit(profile, verified=verified)
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError("the export holds NaN/inf coefficients (an unfitted model); refit the profile") from None
    path.write_text(text + "\n")
    return path
