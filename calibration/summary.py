"""Human and JSON summaries of a noise profile (what `rram profile show` prints)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from calibration.noise_terms import as_plain
from calibration.profile import NoiseProfile

_US = 1e6


def _f(x: float, unit: float = 1.0, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x * unit + 0.0:.{digits}g}"


def _finite_or_none(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def profile_summary(p: NoiseProfile) -> dict[str, Any]:
    """JSON-able dict (strict JSON: NaN/inf become null) of the mapping, provenance and every model (SI)."""
    return _finite_or_none(_summary(p))


def _summary(p: NoiseProfile) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format_version": p.format_version,
        "mapping": {
            "g_min": p.g_min,
            "g_max": p.g_max,
            "n_levels": p.n_levels,
            "bits_per_device": p.bits_per_device,
            "levels_g": as_plain(p.levels_g),
        },
        "provenance": {k: as_plain(v) for k, v in vars(p.provenance).items()},
        "family": p.family,
        "family_params": {k: as_plain(v) for k, v in p.family_params.items()},
        "stuck_fractions": list(p.stuck_fractions),
    }
    for name in ("open_loop", "verified"):
        m = getattr(p, name)
        if m is not None:
            out[name] = {
                "sigma_coeffs": as_plain(m.sigma_poly.coeffs),
                "sigma_coeffs_se": as_plain(m.sigma_poly.stderr),
                "sigma_chi2_red": m.sigma_poly.chi2_red,
                "mean_coeffs": as_plain(m.mean_poly.coeffs),
                "mean_coeffs_se": as_plain(m.mean_poly.stderr),
                "levels_g": as_plain(m.table.levels_g),
                "sigma": as_plain(m.table.sigma),
                "sigma_se": as_plain(m.table.sigma_se),
                "mean": as_plain(m.table.mean),
                "count": as_plain(m.table.count),
                "pulses_mean": m.pulses_mean,
                "pulses_se": m.pulses_se,
                "t_read_s": m.t_read_s,
            }
    if p.families:
        out["families"] = {
            k: {
                "params": f.params,
                "param_se": f.param_se,
                "aic": f.aic,
                "bic": f.bic,
                "ks": f.ks,
                "ks_pvalue": f.ks_pvalue,
                "loglik": f.loglik,
                "n": f.n,
            }
            for k, f in p.families.items()
        }
        out["best_family_aic"] = p.best_family("aic")
    rm = p.relaxation_model
    if rm is not None:
        out["relaxation"] = {
            "t0_s": rm.t0_s,
            "t_max_s": rm.t_max_s,
            "levels_g": as_plain(rm.levels_g),
            **{k: as_plain(getattr(rm, k)) for k in ("a", "a_se", "b", "b_se", "s0sq", "s0sq_se", "s1sq", "s1sq_se")},
            "b_coeffs": as_plain(rm.b_poly.coeffs),
            "s1sq_coeffs": as_plain(rm.s1sq_poly.coeffs),
        }
    if p.read_noise is not None:
        r = p.read_noise
        out["read_noise"] = {
            "sigma_coeffs": as_plain(r.sigma_poly.coeffs),
            "sigma_coeffs_se": as_plain(r.sigma_poly.stderr),
            "rtn": None if r.rtn is None else {k: as_plain(v) for k, v in vars(r.rtn).items()},
        }
    if p.endurance is not None:
        out["endurance"] = {k: as_plain(v) for k, v in vars(p.endurance).items()}
    if p.spatial is not None:
        s = p.spatial
        out["spatial"] = {
            "shape": list(s.shape),
            "k": int(s.eigvals.size),
            "eigvals": as_plain(s.eigvals),
            "explained_fraction": s.explained_fraction,
            "n_repeats": s.n_repeats,
            "has_full_cov": s.full_cov is not None,
        }
    return out


def format_summary(p: NoiseProfile) -> str:
    """Readable multi-line table of a profile (conductances in uS)."""
    lines = [
        f"noise profile (format {p.format_version})",
        f"  mapping     g_min {_f(p.g_min, _US)} uS, g_max {_f(p.g_max, _US)} uS, {p.n_levels} levels, "
        f"{p.bits_per_device} bit(s)/device",
    ]
    pv = p.provenance
    lines.append(
        f"  provenance  board {pv.board_id or '-'}, created {pv.created_utc or '-'}, "
        f"software {pv.software_version or '-'}, runs: {', '.join(pv.run_files) or '-'}"
    )
    if pv.notes:
        lines.append(f"              {pv.notes}")
    if p.family:
        params = ", ".join(
            f"{k}={_f(v) if isinstance(v, float) else v}"
            for k, v in p.family_params.items()
            if not isinstance(v, np.ndarray)
        )
        lines.append(f"  family      {p.family} ({params})")
        if "level_sigma_frac" in p.family_params:
            lines.append(
                "              level sigma / g_max: " + " ".join(_f(x) for x in p.family_params["level_sigma_frac"])
            )
    lines.append(f"  stuck       at LRS {_f(p.stuck_fractions[0])}, at HRS {_f(p.stuck_fractions[1])}")
    for name in ("open_loop", "verified"):
        m = getattr(p, name)
        if m is None:
            continue
        c = " ".join(f"{_f(x, _US)}+-{_f(e, _US, 2)}" for x, e in zip(m.sigma_poly.coeffs, m.sigma_poly.stderr))
        lines.append(f"  {name:<11} sigma(gn) coeffs c0..c{m.sigma_poly.coeffs.size - 1} (uS): {c}")
        lines.append(
            f"              pulses/device {_f(m.pulses_mean)} +- {_f(m.pulses_se, 1, 2)}, read at {_f(m.t_read_s)} s"
        )
        t = m.table
        if t.levels_g.size:
            lines.append("              level(uS)   n      mean err(uS)  sigma(uS)")
            for i in range(t.levels_g.size):
                lines.append(
                    f"              {_f(t.levels_g[i], _US):>9} {int(t.count[i]):>6} "
                    f"{_f(t.mean[i], _US):>12}  {_f(t.sigma[i], _US):>9} +- {_f(t.sigma_se[i], _US, 2)}"
                )
    if p.families:
        lines.append("  families    name             AIC            KS       params")
        best = p.best_family()
        for k, f in p.families.items():
            par = ", ".join(f"{a}={_f(v)}" for a, v in f.params.items())
            mark = " *" if k == best else ""
            lines.append(f"              {k:<16} {_f(f.aic, 1, 10):>14} {_f(f.ks, 1, 3):>8}  {par}{mark}")
    rm = p.relaxation_model
    if rm is not None:
        lines.append(
            f"  relaxation  mu = a + b L, var = s0^2 + s1^2 L, L = log10(t/{_f(rm.t0_s)} s), "
            f"data up to {_f(rm.t_max_s)} s"
        )
        for i in range(rm.levels_g.size):
            lines.append(
                f"              {_f(rm.levels_g[i], _US):>9} uS: b {_f(rm.b[i], _US)} +- {_f(rm.b_se[i], _US, 2)} uS/dec,"
                f" s1^2 {_f(rm.s1sq[i], _US**2)} +- {_f(rm.s1sq_se[i], _US**2, 2)} uS^2/dec"
            )
        for t_s, name in ((1.0, "1 s"), (3600.0, "1 h"), (86400.0, "1 day"), (3.15576e7, "1 year")):
            g = np.array([p.g_min, 0.5 * (p.g_min + p.g_max), p.g_max])
            sh, ex = p.relaxation(g, t_s)
            lines.append(
                f"              at {name:<6}: shift {' '.join(_f(x, _US) for x in sh)} uS, "
                f"extra sigma {' '.join(_f(x, _US) for x in ex)} uS  (g_min, mid, g_max)"
            )
    if p.read_noise is not None:
        r = p.read_noise
        c = " ".join(f"{_f(x, _US)}" for x in r.sigma_poly.coeffs)
        lines.append(f"  read noise  sigma(gn) coeffs (uS): {c}")
        if r.rtn is not None:
            q = r.rtn
            lines.append(
                f"              RTN: {_f(100 * q.fraction_bimodal, 1, 3)}% of {q.n_cells} cells bimodal "
                f"(+-{_f(100 * q.fraction_se, 1, 2)}%), amplitude {_f(q.amplitude_median, _US)} uS "
                f"({_f(100 * q.amplitude_rel_median, 1, 3)}%), switch prob {_f(q.switch_prob_median, 1, 3)}"
            )
    e = p.endurance
    if e is not None:
        lines.append(
            f"  endurance   LRS median {_f(e.lrs_median, _US)} uS (ln-sigma c2c {_f(e.lrs_sigma_c2c, 1, 3)}, "
            f"d2d {_f(e.lrs_sigma_d2d, 1, 3)}); HRS median {_f(e.hrs_median, _US)} uS "
            f"(c2c {_f(e.hrs_sigma_c2c, 1, 3)}, d2d {_f(e.hrs_sigma_d2d, 1, 3)})"
        )
        lines.append(
            f"              Weibull shape {_f(e.weibull_shape)} +- {_f(e.weibull_shape_se, 1, 2)}, scale "
            f"{_f(e.weibull_scale)} +- {_f(e.weibull_scale_se, 1, 2)} cycles ({e.n_failed} failed, "
            f"{e.n_censored} censored)"
        )
        if e.cycles.size:
            lines.append(
                f"              window {_f(e.window_median[0], 1, 3)} at cycle {_f(e.cycles[0])} -> "
                f"{_f(e.window_median[-1], 1, 3)} at cycle {_f(e.cycles[-1])}"
            )
    s = p.spatial
    if s is not None:
        lines.append(
            f"  spatial     {s.shape[0]}x{s.shape[1]} cells, {s.n_repeats} repeats, top {s.eigvals.size} "
            f"eigenpairs hold {_f(100 * s.explained_fraction, 1, 3)}% of the variance"
            f"{', full covariance stored' if s.full_cov is not None else ''}"
        )
    return "\n".join(lines)
