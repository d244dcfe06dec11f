"""PNG figures of a noise profile, drawn on bare matplotlib Figures: whichever of the models the profile holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from calibration.noise_terms import PIT_PROBS
from calibration.profile import NoiseProfile
from hil.figures.canvas import colormap, save_png

_US = 1e6  # S -> uS for axes
_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG at the profile figures' resolution."""
    return save_png(fig, path, _DPI)


def plot_sigma(p: NoiseProfile, out: Path) -> Path:
    """Programming sigma (open-loop, verified) and read sigma versus conductance, data points and fits."""
    g = np.linspace(p.g_min, p.g_max, 200)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for verified, name, color in ((False, "open-loop", "C0"), (True, "verified", "C1")):
        model = p.verified if verified else p.open_loop
        if p.family in ("gaussian", "additive", "lognormal", "state_dependent"):
            if verified:
                continue
            ax.plot(g * _US, p.programming_sigma(g) * _US, color=color, label=f"{p.family} (paper)")
            continue
        if model is None:
            continue
        ax.plot(g * _US, model.sigma(g) * _US, color=color, label=f"{name} fit")
        t = model.table
        if t.levels_g.size:
            ax.errorbar(
                t.levels_g * _US,
                t.sigma * _US,
                yerr=t.sigma_se * _US,
                fmt="o",
                ms=3,
                color=color,
                label=f"{name} per level",
            )
    if p.read_noise is not None:
        ax.plot(g * _US, p.read_noise.sigma(g) * _US, color="C2", ls="--", label="read noise fit")
        t = p.read_noise.table
        if t.levels_g.size:
            ax.errorbar(t.levels_g * _US, t.sigma * _US, yerr=t.sigma_se * _US, fmt="s", ms=3, color="C2")
    ax.set_xlabel("target conductance (uS)")
    ax.set_ylabel("sigma (uS)")
    ax.set_title("noise versus conductance")
    ax.legend(fontsize=8)
    return _save(fig, out / "sigma_vs_g.png")


def plot_relaxation(p: NoiseProfile, out: Path) -> Path:
    """Mean shift and extra sigma versus log time after programming, per level."""
    rm = p.relaxation_model
    if rm is None:
        raise ValueError("profile has no relaxation model to plot")
    t_end = rm.t_max_s if np.isfinite(rm.t_max_s) and rm.t_max_s > rm.t0_s else rm.t0_s * 1e5
    t = np.logspace(np.log10(rm.t0_s), np.log10(max(t_end, 3.2e7)), 60)
    levels = rm.levels_g if rm.levels_g.size else np.linspace(p.g_min, p.g_max, 5)
    fig = Figure(figsize=(9.6, 4.0))
    a1, a2 = fig.subplots(1, 2)
    cmap = colormap("viridis")
    for i, gl in enumerate(levels):
        c = cmap(i / max(len(levels) - 1, 1))
        shift = np.array([rm.shift(np.array([gl]), ti)[0] for ti in t])
        extra = np.array([rm.extra_sigma(np.array([gl]), ti)[0] for ti in t])
        a1.semilogx(t, shift * _US, color=c, label=f"{gl * _US:.3g} uS")
        a2.semilogx(t, extra * _US, color=c)
        if rm.levels_g.size and np.isfinite(rm.b[i]):
            L = np.log10(t / rm.t0_s)
            a1.fill_between(t, (rm.b[i] - rm.b_se[i]) * L * _US, (rm.b[i] + rm.b_se[i]) * L * _US, color=c, alpha=0.15)
    for ax in (a1, a2):
        ax.axvline(rm.t_max_s if np.isfinite(rm.t_max_s) else rm.t0_s, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("time after programming (s)")
    a1.set_ylabel("mean shift since t0 (uS)")
    a2.set_ylabel("extra sigma since t0 (uS)")
    a1.set_title("relaxation: mean (bands: per-level b +- 1 SE)", fontsize=10)
    a2.set_title("relaxation: spread")
    a1.legend(fontsize=7, ncol=2)
    return _save(fig, out / "relaxation.png")


def plot_families(p: NoiseProfile, out: Path) -> Path:
    """P-P plot: CDF of F_family(g) against U(0,1) for each fitted family (on the diagonal = perfect fit)."""
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, label="perfect fit")
    for name, fit in p.families.items():
        if fit.pit_quantiles.size:
            ax.plot(fit.pit_quantiles, PIT_PROBS, label=f"{name}: KS {fit.ks:.3f}, AIC {fit.aic:.4g}")
    ax.set_xlabel("fitted CDF F(g | target)")
    ax.set_ylabel("empirical CDF")
    ax.set_title("paper noise families against the data")
    ax.legend(fontsize=7)
    return _save(fig, out / "families_cdf.png")


def plot_endurance(p: NoiseProfile, out: Path) -> Path:
    """Window versus cycles, and the Weibull plot of cycles to failure."""
    e = p.endurance
    if e is None:
        raise ValueError("profile has no endurance model to plot")
    fig = Figure(figsize=(9.6, 4.0))
    a1, a2 = fig.subplots(1, 2)
    a1.semilogx(e.cycles, e.window_median, "o-", ms=3)
    a1.set_xlabel("cycle")
    a1.set_ylabel("median LRS/HRS ratio")
    a1.set_title("memory window")
    if e.km_t.size and np.isfinite(e.weibull_shape):
        ok = (e.km_f > 0) & (e.km_f < 1)
        a2.plot(np.log(e.km_t[ok]), np.log(-np.log1p(-e.km_f[ok])), "o", ms=3, label="Kaplan-Meier")
        x = np.linspace(np.log(e.km_t.min()), np.log(e.km_t.max()), 50)
        a2.plot(
            x,
            e.weibull_shape * (x - np.log(e.weibull_scale)),
            label=(f"Weibull k={e.weibull_shape:.3g}, scale={e.weibull_scale:.3g}"),
        )
        a2.legend(fontsize=8)
    a2.set_xlabel("ln(cycles to failure)")
    a2.set_ylabel("ln(-ln(1-F))")
    a2.set_title(f"Weibull plot ({e.n_failed} failed, {e.n_censored} censored)")
    return _save(fig, out / "endurance.png")


def plot_spatial(p: NoiseProfile, out: Path) -> Path:
    """Eigenvalue spectrum and the leading eigenvector as an array map."""
    s = p.spatial
    if s is None:
        raise ValueError("profile has no spatial model to plot")
    fig = Figure(figsize=(9.6, 4.0))
    a1, a2 = fig.subplots(1, 2)
    a1.semilogy(np.arange(1, s.eigvals.size + 1), np.clip(s.eigvals, 1e-40, None) * _US**2, "o-")
    a1.set_xlabel("component")
    a1.set_ylabel("eigenvalue (uS^2)")
    a1.set_title(f"covariance spectrum ({100 * s.explained_fraction:.1f}% in top {s.eigvals.size})")
    im = a2.imshow(s.eigvecs[:, 0].reshape(s.shape), cmap="RdBu_r")
    fig.colorbar(im, ax=a2)
    a2.set_title("leading eigenvector")
    return _save(fig, out / "spatial.png")


def plot_profile(p: NoiseProfile, out_dir: str | Path) -> list[Path]:
    """Write every figure the profile supports into out_dir (created if needed); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_sigma(p, out)]
    if p.relaxation_model is not None:
        paths.append(plot_relaxation(p, out))
    if p.families:
        paths.append(plot_families(p, out))
    if p.endurance is not None:
        paths.append(plot_endurance(p, out))
    if p.spatial is not None:
        paths.append(plot_spatial(p, out))
    return paths
