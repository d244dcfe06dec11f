"""Export a profile as the constructor arguments of IBM aihwkit's inference noise models (plain dict/JSON).

aihwkit is not a dependency: the output is a JSON-able dict whose keys match the aihwkit 1.2 names
(aihwkit.inference): SinglePairConductanceConverter(g_max, g_min) (the profile's window: the converter
decides which conductance each weight is programmed to, so it must be passed to the noise model),
PCMLikeNoiseModel(prog_coeff, g_max, prog_noise_scale, read_noise_scale, drift_scale) and
ReRamWan2022NoiseModel(coeff_dic, g_max, noise_scale), plus the rpu_config.forward short-term read
noise (w_noise_type=ADDITIVE_CONSTANT, w_noise relative to the largest weight). aihwkit works in
microsiemens; so does this export. The coefficient reference g_max is the converter's g_max: aihwkit
1.2.0 sets ``*coeff_g_max_reference`` only when that argument is left out (passing it raises
AttributeError), so it is not exported. Parts of the profile aihwkit cannot carry are listed, one line
each, under "dropped". JSON object keys are strings: convert coeff_dic keys back with float().
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from calibration.noise_terms import PolyFit
from calibration.profile import NoiseProfile

DEFAULT_TIMES_S = (1.0, 3600.0, 86400.0, 2 * 86400.0, 365.25 * 86400.0)
_GRID = 201
_DEGREE = 4
# A profile law that the exported polynomial or constant misses by more than this (relative) is "dropped".
_REL_TOL = 0.01
# aihwkit clamps programmed conductances at 0; a probability of g + N(0, sigma^2) < 0 above this is listed.
_CLAMP_TOL = 1e-3


def _us(value_s: float) -> float:
    """Siemens to microsiemens, rounded to 12 significant digits (drops float noise like 0.34799999)."""
    return float(f"{float(value_s) * 1e6:.12g}")


def _window(profile: NoiseProfile) -> np.ndarray:
    return np.linspace(profile.g_min, profile.g_max, _GRID)


def _exact_poly(poly: PolyFit, profile: NoiseProfile) -> bool:
    """True when aihwkit's unclipped polynomial in g/g_max equals the profile's sigma over the whole window."""
    if not math.isclose(poly.g_ref, profile.g_max, rel_tol=1e-12):
        return False
    covers = poly.g_lo <= profile.g_min and (np.isnan(poly.g_hi) or poly.g_hi >= profile.g_max)
    return bool(covers and np.all(poly(_window(profile)) >= 0))


def _target_sigma(profile: NoiseProfile, verified: bool, t_s: float | None, g: np.ndarray) -> np.ndarray:
    """sigma_total(g) = sqrt(prog^2 + relaxation extra^2) in S (prog alone when t_s is None)."""
    sig = profile.programming_sigma(g, verified=verified)
    if t_s is not None:
        sig = np.sqrt(sig**2 + profile.relaxation(g, t_s)[1] ** 2)
    return sig


def _check_points(profile: NoiseProfile) -> np.ndarray:
    """Where the export must match: the levels for the step-wise state_dependent family, else the window."""
    return profile.levels_g if profile.family == "state_dependent" else _window(profile)


def _sigma_coeffs(profile: NoiseProfile, verified: bool, t_s: float | None) -> list[float]:
    """Coefficients (uS) of sigma_total(g) as a polynomial in g/g_max.

    Exact (a copy) when the profile's programming sigma is a stored polynomial in g/g_max covering the
    window and no relaxation is added; gaussian/additive: [sigma]; lognormal: [0, slope]; state_dependent:
    the polynomial through (beyond 5 levels, least squares over) the per-level sigmas; otherwise a
    relative least-squares fit of degree <= 4 on a grid over [g_min, g_max], or the stored polynomial
    unclipped when that is closer (a fitted law is held constant outside its levels, aihwkit extrapolates).
    """
    model = None
    if profile.family not in ("gaussian", "additive", "lognormal", "state_dependent"):
        model = profile.verified if verified else profile.open_loop
    extra_needed = (
        t_s is not None and profile.relaxation_model is not None and profile.relaxation_model.log_time(t_s) > 0
    )
    if not extra_needed:
        if model is not None and _exact_poly(model.sigma_poly, profile):
            return [_us(c) for c in model.sigma_poly.coeffs]
        if profile.family in ("gaussian", "additive"):
            return [_us(profile.programming_sigma(np.array([profile.g_max]))[0])]
        if profile.family == "lognormal":
            slope = float(profile.programming_sigma(np.array([profile.g_max]))[0])  # sigma = slope * g/g_max
            return [0.0, _us(slope)]
    g = _check_points(profile)
    deg = min(_DEGREE, g.size - 1)
    sig = _target_sigma(profile, verified, t_s, g)
    weight = 1.0 / np.maximum(sig, 1e-3 * max(float(np.max(sig)), 1e-30))  # relative residuals
    fit = [_us(c) for c in np.polynomial.polynomial.polyfit(g / profile.g_max, sig, deg, w=weight)]
    if model is None or extra_needed or not math.isclose(model.sigma_poly.g_ref, profile.g_max, rel_tol=1e-12):
        return fit
    copy = [_us(c) for c in model.sigma_poly.coeffs]
    better = _worst_rel_error(profile, copy, verified, None)[0] < _worst_rel_error(profile, fit, verified, None)[0]
    return copy if better else fit


def _worst_rel_error(
    profile: NoiseProfile, coeffs_us: list[float], verified: bool, t_s: float | None
) -> tuple[float, float]:
    """(largest |exported - profile| / profile sigma, conductance in S where it occurs) over the check points."""
    g = _check_points(profile)
    want = _target_sigma(profile, verified, t_s, g)
    got = np.abs(np.polynomial.polynomial.polyval(g / profile.g_max, np.asarray(coeffs_us) * 1e-6))
    ok = want > 1e-3 * max(float(np.max(want)), 1e-30)
    if not np.any(ok):
        return 0.0, float(profile.g_max)
    rel = np.abs(got[ok] - want[ok]) / want[ok]
    i = int(np.argmax(rel))
    return float(rel[i]), float(g[ok][i])


def _read_noise(profile: NoiseProfile) -> tuple[float, list[str]]:
    """forward.w_noise and the read-noise lines for "dropped".

    A weight is a differential pair (g+ = g_min + |w|/w_max * (g_max - g_min), g- = g_min), so one read of
    it has variance sigma_r(g+)^2 + sigma_r(g_min)^2; w_noise is the RMS of that over the window, in units
    of the largest weight (g_max - g_min).
    """
    g = _window(profile)
    sr = profile.read_sigma(g)
    sr_min = float(profile.read_sigma(np.array([profile.g_min]))[0])
    pair = np.sqrt(sr**2 + sr_min**2)
    rms = float(np.sqrt(np.mean(pair**2)))
    w_noise = rms / (profile.g_max - profile.g_min)
    lines: list[str] = []
    if rms > 0 and float(np.max(np.abs(pair - rms))) > _REL_TOL * rms:
        lines.append(
            f"read noise vs conductance (pair sigma {_us(pair.min()):.3g}-{_us(pair.max()):.3g} uS over the "
            f"window): forward.w_noise is one constant, their RMS"
        )
    rtn = profile.read_noise.rtn if profile.read_noise is not None else None
    if rtn is not None and rtn.fraction_bimodal > 0:
        lines.append(
            f"random telegraph noise ({100 * rtn.fraction_bimodal:.3g} % of cells bimodal, median step "
            f"{_us(rtn.amplitude_median):.3g} uS): aihwkit's forward noise is Gaussian"
        )
    return w_noise, lines


def _dropped(profile: NoiseProfile, verified: bool, prog: list[float], coeff_dic: dict[str, list[float]]) -> list[str]:
    """One line per part of the profile that the exported aihwkit objects do not reproduce, and why."""
    out: list[str] = []
    g = _window(profile)
    model = profile.verified if verified else profile.open_loop
    if profile.family == "lognormal":
        s = float(profile.family_params["s"])
        out.append(
            f"log-normal shape g*exp(N(0, {s:g}^2)) and its mean shift g*{math.expm1(0.5 * s * s):.3g}: aihwkit "
            "adds zero-mean Gaussian noise of the same sigma"
        )
    elif model is not None and profile.family is None:
        worst = float(np.max(np.abs(model.mean_error(g))))
        if worst > 0:
            out.append(f"mean programming error (up to {_us(worst):.4g} uS): aihwkit noise is zero-mean")
    if profile.family == "state_dependent":
        out.append(
            "sigma between levels: the profile uses the nearest level's sigma, the export the polynomial "
            "through the levels (exact at the levels)"
        )
    rel, at = _worst_rel_error(profile, prog, verified, None)
    if rel > _REL_TOL:
        out.append(
            f"programming sigma shape: the degree-{len(prog) - 1} polynomial aihwkit evaluates is up to "
            f"{100 * rel:.3g} % off at {_us(at):.4g} uS (the profile holds fitted laws constant outside the "
            "fitted levels)"
        )
    later = [(_worst_rel_error(profile, c, verified, float(t)), t) for t, c in coeff_dic.items() if c is not prog]
    worst_t = max(later, key=lambda x: x[0][0], default=((0.0, 0.0), "0"))
    if worst_t[0][0] > _REL_TOL:
        out.append(
            f"sigma after relaxation: the polynomial at t = {float(worst_t[1]):g} s is up to "
            f"{100 * worst_t[0][0]:.3g} % off (at {_us(worst_t[0][1]):.4g} uS) from sqrt(prog^2 + extra^2)"
        )
    sig = _target_sigma(profile, verified, None, g)
    p_below = np.array([0.5 * math.erfc(gi / (si * math.sqrt(2))) if si > 0 else 0.0 for gi, si in zip(g, sig)])
    k = int(np.argmax(p_below))
    if p_below[k] > _CLAMP_TOL:
        out.append(
            f"programmed conductance below 0 (up to {100 * p_below[k]:.3g} % of cells, at {_us(g[k]):.4g} uS, in "
            "the profile's Gaussian): aihwkit clamps it at 0, which lowers sigma there"
        )
    if profile.relaxation_model is not None and np.any(profile.relaxation_model.b_poly.coeffs != 0):
        out.append("mean relaxation shift b(g)*log10(t/t0): aihwkit's ReRAM model only grows the spread")
    lrs, hrs = profile.stuck_fractions
    if lrs > 0 or hrs > 0:
        g_hi, g_lo = profile.stuck_conductances
        out.append(
            f"stuck cells ({100 * lrs:.3g} % at LRS reading {_us(g_hi):.4g} uS, {100 * hrs:.3g} % at HRS reading "
            f"{_us(g_lo):.4g} uS): aihwkit's noise models program every device"
        )
    _, read_lines = _read_noise(profile)
    out.extend(read_lines)
    if profile.spatial is not None:
        out.append("spatial covariance: aihwkit samples every device independently")
    if profile.endurance is not None:
        out.append("endurance (cycling spreads, Weibull life): aihwkit inference has no wear model")
    return out


def export_aihwkit(
    profile: NoiseProfile, verified: bool = False, times_s: tuple[float, ...] = DEFAULT_TIMES_S
) -> dict[str, Any]:
    """Noise-model arguments for aihwkit from a profile (see module docstring for the mapping)."""
    g_min_us, g_max_us = _us(profile.g_min), _us(profile.g_max)
    prog = _sigma_coeffs(profile, verified, None)
    t_prog = 1.0
    model = profile.verified if verified else profile.open_loop
    if model is not None:
        t_prog = model.t_read_s
    coeff_dic: dict[str, list[float]] = {}
    for t in times_s:
        coeff_dic[repr(float(t))] = prog if t <= t_prog else _sigma_coeffs(profile, verified, t)
    w_noise, _ = _read_noise(profile)
    return {
        "source": {
            "family": profile.family,
            "verified": bool(verified),
            "board_id": profile.provenance.board_id,
            "created_utc": profile.provenance.created_utc,
        },
        "units": "uS",
        "g_min": g_min_us,
        "g_max": g_max_us,
        "SinglePairConductanceConverter": {"g_max": g_max_us, "g_min": g_min_us},
        "PCMLikeNoiseModel": {
            "prog_coeff": prog,
            "g_max": g_max_us,
            "prog_noise_scale": 1.0,
            # the PCM drift and 1/f laws do not describe ReRAM: switch them off (IBM supplement B.2)
            "read_noise_scale": 0.0,
            "drift_scale": 0.0,
        },
        "ReRamWan2022NoiseModel": {"coeff_dic": coeff_dic, "g_max": g_max_us, "noise_scale": 1.0},
        "forward": {"w_noise_type": "ADDITIVE_CONSTANT", "w_noise": w_noise},
        "dropped": _dropped(profile, verified, prog, coeff_dic),
    }


def write_aihwkit_json(
    profile: NoiseProfile, path: str | Path, verified: bool = False, overwrite: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Write export_aihwkit(profile) as indented JSON; refuse to replace a file unless overwrite.

    Returns the path and the exported dict (the CLI prints its "dropped" lines).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    data = export_aihwkit(profile, verified=verified)
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError("the export holds NaN/inf coefficients (an unfitted model); refit the profile") from None
    path.write_text(text + "\n")
    return path, data
