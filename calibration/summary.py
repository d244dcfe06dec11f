"""Human and JSON summaries of a noise profile (what `rram profile show` prints)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from calibration.noise_terms import GateMap, as_plain
from calibration.profile import NoiseProfile

_US = 1e6


def _f(x: float, unit: float = 1.0, digits: int = 4) -> str:
    return "none" if x is None or not math.isfinite(x) else f"{x * unit + 0.0:.{digits}g}"


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
                "gate_map": None
                if m.gate_map is None
                else {"gate_v": as_plain(m.gate_map.gate_v), "g_s": as_plain(m.gate_map.g_s)},
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


def _gate_map_rows(m: GateMap | None) -> list[tuple[str, str, str]]:
    """The gate calibration an open-loop law was measured with, in one line (none: not recorded)."""
    if m is None:
        return []
    med = np.median(m.g_s, axis=1)
    text = f"{m.gate_v.size} gates {_f(m.gate_v[0])}-{_f(m.gate_v[-1])} V on {m.g_s.shape[1]} cells"
    return [("gate map", f"{text}, median {_f(med[0], _US)}-{_f(med[-1], _US)} µS", "")]


def _rows(rows: list[tuple[str, str, str]], indent: int = 4) -> list[str]:
    """Aligned `name  value unit` lines (the layout of hil/cli/report.py; calibration imports nothing of hil)."""
    if not rows:
        return []
    rows = [(n, v, "" if v == "none" else u) for n, v, u in rows]
    name_w = max(len(n) for n, _, _ in rows)
    num = [v for _, v, _ in rows if _numeric(v)]
    value_w = max((len(v) for v in num), default=0)
    return [
        (" " * indent + f"{n:<{name_w}}  {v.rjust(value_w) if _numeric(v) else v} {u}").rstrip() for n, v, u in rows
    ]


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _pm(x: float, se: float, unit: float = 1.0) -> str:
    """'1.23 ± 0.04' (or 'none' without a value)."""
    if x is None or not math.isfinite(x):
        return "none"
    return f"{_f(x, unit)} ± {_f(se, unit, 2)}"


def _pct(x: float) -> str:
    return "none" if x is None or not math.isfinite(x) else f"{100 * x:.2g}"


def format_summary(p: NoiseProfile) -> str:
    """Readable summary of a profile: aligned `name  value unit` lines per model (conductances in µS)."""
    pv = p.provenance
    lines = [f"noise profile (format {p.format_version})", "  mapping"]
    lines += _rows(
        [
            ("g_min", _f(p.g_min, _US), "µS"),
            ("g_max", _f(p.g_max, _US), "µS"),
            ("levels", str(p.n_levels), ""),
            ("bits per device", str(p.bits_per_device), ""),
        ]
    )
    lines.append("  provenance")
    prov = [
        ("board", pv.board_id or "none", ""),
        ("created", pv.created_utc or "none", ""),
        ("software", pv.software_version or "none", ""),
        ("runs", ", ".join(pv.run_files) or "none", ""),
    ]
    if pv.notes:
        prov.append(("notes", pv.notes, ""))
    lines += _rows(prov)
    lines.append("  stuck")
    lines += _rows([("at LRS", _pct(p.stuck_fractions[0]), "%"), ("at HRS", _pct(p.stuck_fractions[1]), "%")])
    if p.family:
        lines.append(f"  family {p.family}")
        lines += _rows(
            [
                (k, _f(v), "")
                for k, v in p.family_params.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            + [(k, str(v), "") for k, v in p.family_params.items() if isinstance(v, str)]
        )
        if "level_sigma_frac" in p.family_params:
            lines += _rows([("level sigma / g_max", " ".join(_f(x) for x in p.family_params["level_sigma_frac"]), "")])
    for name in ("open_loop", "verified"):
        m = getattr(p, name)
        if m is None:
            continue
        lines.append(f"  {name}")
        coeffs = ", ".join(_pm(x, e, _US) for x, e in zip(m.sigma_poly.coeffs, m.sigma_poly.stderr))
        lines += _rows(
            [
                ("pulses per device", _pm(m.pulses_mean, m.pulses_se), ""),
                ("read at", _f(m.t_read_s), "s"),
                (f"sigma(gn) coeffs c0..c{m.sigma_poly.coeffs.size - 1}", coeffs, "µS"),
            ]
            + _gate_map_rows(m.gate_map)
        )
        t = m.table
        if t.levels_g.size:
            lines.append("    level (µS)       n  mean error (µS)  sigma (µS)")
            for i in range(t.levels_g.size):
                lines.append(
                    f"    {_f(t.levels_g[i], _US):>10} {int(t.count[i]):>7} {_f(t.mean[i], _US):>16}  "
                    f"{_f(t.sigma[i], _US):>10} ± {_f(t.sigma_se[i], _US, 2)}"
                )
    if p.families:
        lines.append("  families")
        lines.append("    name                        AIC        KS  params")
        best = p.best_family()
        for k, f in p.families.items():
            par = ", ".join(f"{a} {_f(v)}" for a, v in f.params.items())
            mark = "  (best)" if k == best else ""
            lines.append(f"    {k:<16} {_f(f.aic, 1, 10):>14} {_f(f.ks, 1, 3):>9}  {par}{mark}")
    rm = p.relaxation_model
    if rm is not None:
        lines.append(
            f"  relaxation  mu = a + b L, var = s0^2 + s1^2 L, L = log10(t / {_f(rm.t0_s)} s), "
            f"data up to {_f(rm.t_max_s)} s"
        )
        lines.append("    level (µS)  b (µS/decade)         s1^2 (µS^2/decade)")
        for i in range(rm.levels_g.size):
            lines.append(
                f"    {_f(rm.levels_g[i], _US):>10}  {_pm(rm.b[i], rm.b_se[i], _US):<20}  "
                f"{_pm(rm.s1sq[i], rm.s1sq_se[i], _US**2)}"
            )
        lines.append("    after    shift at g_min, mid, g_max (µS)   extra sigma (µS)")
        g = np.array([p.g_min, 0.5 * (p.g_min + p.g_max), p.g_max])
        for t_s, when in ((1.0, "1 s"), (3600.0, "1 h"), (86400.0, "1 day"), (3.15576e7, "1 year")):
            sh, ex = p.relaxation(g, t_s)
            lines.append(f"    {when:<7}  {', '.join(_f(x, _US) for x in sh):<32}  {', '.join(_f(x, _US) for x in ex)}")
    if p.read_noise is not None:
        r = p.read_noise
        lines.append("  read noise")
        rows = [("sigma(gn) coeffs", ", ".join(_f(x, _US) for x in r.sigma_poly.coeffs), "µS")]
        if r.rtn is not None:
            q = r.rtn
            rows += [
                ("RTN cells bimodal", f"{_pm(100 * q.fraction_bimodal, 100 * q.fraction_se)} % of {q.n_cells}", ""),
                ("RTN amplitude", f"{_f(q.amplitude_median, _US)} µS ({_f(100 * q.amplitude_rel_median, 1, 3)} %)", ""),
                ("RTN switch probability", _f(q.switch_prob_median, 1, 3), ""),
            ]
        lines += _rows(rows)
    e = p.endurance
    if e is not None:
        lines.append("  endurance")
        rows = [
            ("LRS median", _f(e.lrs_median, _US), "µS"),
            ("LRS ln-sigma c2c, d2d", f"{_f(e.lrs_sigma_c2c, 1, 3)}, {_f(e.lrs_sigma_d2d, 1, 3)}", ""),
            ("HRS median", _f(e.hrs_median, _US), "µS"),
            ("HRS ln-sigma c2c, d2d", f"{_f(e.hrs_sigma_c2c, 1, 3)}, {_f(e.hrs_sigma_d2d, 1, 3)}", ""),
            ("Weibull shape", _pm(e.weibull_shape, e.weibull_shape_se), ""),
            ("Weibull scale", _pm(e.weibull_scale, e.weibull_scale_se), "cycles"),
            ("cells failed, censored", f"{e.n_failed}, {e.n_censored}", ""),
        ]
        if e.cycles.size:
            rows.append(
                (
                    "window (LRS/HRS)",
                    f"{_f(e.window_median[0], 1, 3)} at cycle {_f(e.cycles[0])} -> "
                    f"{_f(e.window_median[-1], 1, 3)} at cycle {_f(e.cycles[-1])}",
                    "",
                )
            )
        lines += _rows(rows)
    s = p.spatial
    if s is not None:
        lines.append("  spatial")
        lines += _rows(
            [
                ("cells", f"{s.shape[0]} x {s.shape[1]}", ""),
                ("repeats", str(s.n_repeats), ""),
                ("eigenpairs", str(s.eigvals.size), ""),
                ("variance held", _f(100 * s.explained_fraction, 1, 3), "%"),
                ("full covariance", "stored" if s.full_cov is not None else "not stored", ""),
            ]
        )
    return "\n".join(lines)
