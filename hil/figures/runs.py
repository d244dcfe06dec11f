"""PNG figures of characterization run files, drawn on bare matplotlib Figures: one registered plotter per procedure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from matplotlib.typing import ColorType

from firmware_protocol.constants import CellResult
from firmware_protocol.registry import Registry
from hil.characterize.runfile import RunData, read_run
from hil.figures.canvas import colormap, save_png

_US = 1e6  # S -> uS for axes
_DPI = 120
_G_FLOOR_US = 1e-2  # uS: conductances below this (noise around zero) are drawn at the floor on log axes

Plotter = Callable[[RunData, Path], list[Path]]

# Procedure name -> the function writing that run file's figures (each plotter registers below, where it is defined).
PLOTTERS: Registry[Plotter] = Registry("plotter")


# ---------------------------------------------------------------------------------------------- helpers


def _title(run: RunData, what: str) -> str:
    """Figure title: procedure, what it shows, the run file, and "(incomplete)" for a run not marked complete."""
    tail = "" if run.complete else " (incomplete)"
    return f"{run.procedure}: {what} - {run.path.name}{tail}"


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG at the run figures' resolution."""
    return save_png(fig, path, _DPI)


def _out(run: RunData, outdir: Path, kind: str) -> Path:
    """PNG path `<run stem>_<kind>.png`: figures of several runs can share one folder."""
    return outdir / f"{run.path.stem}_{kind}.png"


def _require(run: RunData, table: str) -> np.ndarray:
    """The records of `table`, or a one-line ValueError when the run holds none (yet)."""
    d = run.data.get(table)
    if d is None:
        raise ValueError(f"{run.path}: {run.procedure} run has no table {table!r} (file written by other software?)")
    if len(d) == 0:
        state = "complete" if run.complete else "incomplete"
        raise ValueError(f"{run.path}: {state} {run.procedure} run has no records in table {table!r}; nothing to plot")
    return d


def _band(ax: Axes, x: np.ndarray, y: np.ndarray, color: ColorType, label: str, floor: float | None = None) -> None:
    """Median line (labelled) and 10-90 % percentile band of y (records x cells) along x."""
    lo, med, hi = np.nanpercentile(y, [10, 50, 90], axis=1)
    if floor is not None:
        lo, med, hi = (np.maximum(a, floor) for a in (lo, med, hi))
    ax.plot(x, med, color=color, label=label)
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)


def _plain_log_y(ax: Axes) -> None:
    """Log y axis labelled 1, 2, 5, 10, 20, ... in plain numbers (easier to read than powers of ten)."""
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _level_colors(n: int) -> list[tuple[float, float, float, float]]:
    """One viridis colour per level index, low conductance dark."""
    cmap = colormap("viridis")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _no_data(ax: Axes, text: str) -> None:
    """Panel of a phase an incomplete run has not reached: a grey note instead of axes."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_axis_off()  # not set_*ticks([]): that would clear the ticks of axes sharing this one


# ---------------------------------------------------------------------------------------------- form


@PLOTTERS.register("form")
def plot_form(run: RunData, outdir: Path) -> list[Path]:
    """Forming-voltage histogram, map of formed/failed cells (colour: forming voltage), conductance after forming.

    A cell recorded as formed after 0 pulses already conducted before forming (a short or pre-formed cell);
    it has no forming voltage and is drawn as its own category.
    """
    d = _require(run, "form")
    p = run.params
    ok = d["formed"].astype(bool)
    pre = ok & (d["pulses"] == 0)
    formed, failed = ok & ~pre, ~ok
    groups = ((formed, "formed", "C0"), (failed, "failed", "C3"), (pre, "conducting before forming", "C7"))
    fig = Figure(figsize=(14, 4.2))
    a1, a2, a3 = fig.subplots(1, 3)

    step = float(p.get("v_step", 0.1)) or 0.1
    lo, hi = float(p.get("v_start", d["v_form"].min())), float(p.get("v_stop", d["v_form"].max()))
    edges = np.arange(lo - step / 2, hi + step, step)
    for sel, name, color in groups[:2]:
        if sel.any():
            a1.hist(d["v_form"][sel], bins=edges, color=color, label=f"{name} ({sel.sum()})")
    if formed.any():
        a1.axvline(np.median(d["v_form"][formed]), color="k", ls="--", lw=1, label="median (formed)")
    a1.set_xlabel("last forming voltage (V)")
    a1.set_ylabel("cells")
    a1.set_title("forming voltage" + (f" ({pre.sum()} cells needed no pulse)" if pre.any() else ""))
    a1.legend(fontsize=8)

    rows, cols = d["cell"][:, 0], d["cell"][:, 1]
    r0, c0 = rows.min(), cols.min()
    vmap = np.full((rows.max() - r0 + 1, cols.max() - c0 + 1), np.nan)
    vmap[rows - r0, cols - c0] = np.where(formed, d["v_form"], np.nan)
    extent = (c0 - 0.5, cols.max() + 0.5, rows.max() + 0.5, r0 - 0.5)
    im = a2.imshow(vmap, cmap="viridis", extent=extent, interpolation="nearest")
    fig.colorbar(im, ax=a2, label="forming voltage (V)")
    for sel, name, color, marker in ((failed, "failed", "C3", "x"), (pre, "conducting before forming", "C7", "s")):
        if sel.any():
            a2.scatter(cols[sel], rows[sel], marker=marker, color=color, s=40, label=name)
    if failed.any() or pre.any():
        a2.legend(fontsize=7, loc="upper right", framealpha=0.8)
    a2.set_xlabel("column")
    a2.set_ylabel("row")
    a2.set_title(f"formed {ok.sum()}/{ok.size} cells")

    g = d["g_after"] * _US
    gedges = np.histogram_bin_edges(g, bins=40)
    for sel, name, color in groups:
        if sel.any():
            a3.hist(g[sel], bins=gedges, color=color, label=f"{name} ({sel.sum()})")
    if "g_formed" in p:
        a3.axvline(p["g_formed"] * _US, color="k", ls=":", lw=1, label="formed threshold")
    a3.set_xlabel("read conductance after forming (uS)")
    a3.set_ylabel("cells")
    a3.set_title("conductance after forming")
    a3.legend(fontsize=8)

    fig.suptitle(_title(run, "forming"))
    return [_save(fig, _out(run, outdir, "form"))]


# ---------------------------------------------------------------------------------------------- iv


@PLOTTERS.register("iv")
def plot_iv(run: RunData, outdir: Path) -> list[Path]:
    """I-V curves on linear and log |I| axes, one colour per cell, one shade per cycle; a per-cell grid."""
    d = _require(run, "iv")
    cells = [tuple(c) for c in d["cell"]]
    uniq = list(dict.fromkeys(cells))
    cmap = colormap("tab10" if len(uniq) <= 10 else "viridis")
    color = {c: cmap(k if len(uniq) <= 10 else k / max(len(uniq) - 1, 1)) for k, c in enumerate(uniq)}
    n_cycles = int(d["cycle"].max()) + 1
    fig = Figure(figsize=(11, 4.4))
    a1, a2 = fig.subplots(1, 2)
    labelled: set = set()
    for rec, cell in zip(d, cells):
        alpha = 0.35 + 0.65 * (rec["cycle"] + 1) / n_cycles
        label = f"cell {cell[0]},{cell[1]}" if cell not in labelled and len(uniq) <= 10 else None
        labelled.add(cell)
        a1.plot(rec["v"], rec["i"] * _US, color=color[cell], alpha=alpha, lw=1, label=label)
        a2.semilogy(rec["v"], _abs_positive(rec["i"]), color=color[cell], alpha=alpha, lw=1)
    a1.set_ylabel("current (uA)")
    a2.set_ylabel("|current| (A)")
    for ax in (a1, a2):
        ax.set_xlabel("voltage (V)")
        ax.axvline(0, color="grey", lw=0.5)
    a1.axhline(0, color="grey", lw=0.5)
    if labelled and len(uniq) <= 10:
        a1.legend(fontsize=8, title=f"{n_cycles} cycles (darker = later)", title_fontsize=8)
    a1.set_title("I-V, linear")
    a2.set_title("I-V, log |I|")
    fig.suptitle(_title(run, f"{len(d)} sweeps on {len(uniq)} cells"))
    paths = [_save(fig, _out(run, outdir, "iv"))]

    shown = uniq[:16]
    n = len(shown)
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig = Figure(figsize=(3.4 * ncol, 2.8 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    ccol = colormap("plasma")
    for ax, cell in zip(axes.ravel(), shown):
        for rec, c in zip(d, cells):
            if c == cell:
                k = int(rec["cycle"])
                ax.semilogy(
                    rec["v"], _abs_positive(rec["i"]), color=ccol(k / max(n_cycles, 2)), lw=1, label=f"cycle {k}"
                )
        ax.set_title(f"cell {cell[0]},{cell[1]}", fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("voltage (V)")
    for ax in axes[:, 0]:
        ax.set_ylabel("|current| (A)")
    if n_cycles <= 10:
        axes[0, 0].legend(fontsize=7)
    more = f" (first 16 of {len(uniq)} cells)" if len(uniq) > 16 else ""
    fig.suptitle(_title(run, "I-V per cell" + more))
    paths.append(_save(fig, _out(run, outdir, "iv_cells")))
    return paths


def _abs_positive(i: np.ndarray) -> np.ndarray:
    """|I| with exact zeros (below one ADC step) blanked so a log axis skips them."""
    a = np.abs(np.asarray(i, dtype=float))
    return np.where(a > 0, a, np.nan)


# ---------------------------------------------------------------------------------------------- endurance


@PLOTTERS.register("endurance")
def plot_endurance(run: RunData, outdir: Path) -> list[Path]:
    """LRS and HRS (median and 10-90 % band) versus cycle, and the window LRS/HRS versus cycle, log-log."""
    d = _require(run, "endurance")
    cyc = d["cycle"].astype(float)
    lrs, hrs = d["lrs"] * _US, d["hrs"] * _US
    fig = Figure(figsize=(11, 4.4))
    a1, a2 = fig.subplots(1, 2)
    _band(a1, cyc, lrs, "C0", "LRS", floor=_G_FLOOR_US)
    _band(a1, cyc, hrs, "C3", "HRS", floor=_G_FLOOR_US)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("cycle")
    a1.set_ylabel("read conductance (uS)")
    a1.set_title(f"LRS / HRS of {lrs.shape[1]} cells (median, 10-90 % band)")
    a1.legend(fontsize=8)

    floor = _G_FLOOR_US
    window = np.maximum(lrs, floor) / np.maximum(hrs, floor)
    _band(a2, cyc, window, "C2", "LRS/HRS per cell")
    a2.axhline(2, color="grey", ls=":", lw=1, label="window 2 (closed below)")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("cycle")
    a2.set_ylabel("memory window LRS/HRS")
    a2.set_title("memory window (median, 10-90 % band)")
    for ax in (a1, a2):
        _plain_log_y(ax)
    a2.legend(fontsize=8)
    fig.suptitle(_title(run, f"endurance to {int(cyc[-1])} cycles"))
    return [_save(fig, _out(run, outdir, "endurance"))]


# ---------------------------------------------------------------------------------------------- retention


def _converged(prog: np.ndarray) -> np.ndarray:
    """Cells that write-verify brought within tolerance (all cells if none did, so there is something to show)."""
    ok = prog["status"] == CellResult.CONVERGED
    return ok if ok.any() else np.ones(len(prog), dtype=bool)


@PLOTTERS.register("retention")
def plot_retention(run: RunData, outdir: Path) -> list[Path]:
    """Conductance versus log time per level (median, 10-90 % band, target) and error sigma versus log time."""
    prog = _require(run, "program")
    reads = _require(run, "reads")
    t = reads["t"] - prog["t"].max()
    ok = _converged(prog)
    g = reads["g"][:, : len(prog)][:, ok] * _US
    lv, tgt = prog["level"][ok], prog["target"][ok] * _US
    err = g - tgt[None, :]
    levels = np.unique(prog["level"])
    colors = _level_colors(int(levels.max()) + 1)
    fig = Figure(figsize=(11, 4.4))
    a1, a2 = fig.subplots(1, 2)
    for L in levels:
        sel = lv == L
        if not sel.any():
            continue
        target = float(tgt[sel][0])
        _band(a1, t, g[:, sel], colors[L], f"{target:.3g} uS")
        a1.axhline(target, color=colors[L], ls=":", lw=0.8)
        a2.plot(t, err[:, sel].std(axis=1), color=colors[L], marker="o", ms=3, label=f"{target:.3g} uS")
    a2.plot(t, err.std(axis=1), color="k", marker="s", ms=3, lw=1.5, label="all levels")
    prog_err = (prog["g"][ok] - prog["target"][ok]) * _US
    a2.axhline(prog_err.std(), color="k", ls="--", lw=0.8, label="right after write-verify")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("time after programming (s)")
    a1.set_ylabel("conductance (uS)")
    a1.set_title("per level: median, 10-90 % band, target dotted", fontsize=10)
    a2.set_ylabel("sigma of G - target (uS)")
    a2.set_title("spread versus time")
    a1.legend(fontsize=7, ncol=2, title="target", title_fontsize=7)
    a2.legend(fontsize=7)
    excl = f", {np.sum(~ok)} unconverged cells left out" if (~ok).any() else ""
    fig.suptitle(_title(run, f"retention of {ok.sum()} cells{excl}"))
    return [_save(fig, _out(run, outdir, "retention"))]


# ---------------------------------------------------------------------------------------------- levels


_PHASES = (("open_loop", "open loop", "C0"), ("verified", "write-verify", "C1"))


@PLOTTERS.register("levels")
def plot_levels(run: RunData, outdir: Path) -> list[Path]:
    """Gate calibration, per-level CDFs (open loop, write-verify), errors and pulses, relaxation per level."""
    cal = _require(run, "gate_cal")
    tol = float(run.params.get("tol", 0.0)) * _US
    paths = [_plot_gate_cal(run, cal, outdir)]
    phases = {k: run.data.get(k, np.zeros(0)) for k, _, _ in _PHASES}
    if not any(len(v) for v in phases.values()):
        return paths

    fig = Figure(figsize=(11, 4.4))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    targets = _targets(run, phases)
    colors = _level_colors(len(targets))
    for ax, (key, name, _) in zip(axes, _PHASES):
        d = phases[key]
        if not len(d):
            _no_data(ax, f"no {name} data yet")
            continue
        for L, target in enumerate(targets):
            g = np.sort(d["g"][d["level"] == L]) * _US
            if g.size:
                frac = np.arange(g.size + 1) / g.size  # empirical CDF from 0 to 1
                ax.step(np.r_[g[0], g], frac, where="post", color=colors[L], label=f"{target:.3g} uS")
            ax.axvline(target, color=colors[L], ls=":", lw=0.8)
            if tol and key == "verified":
                ax.axvspan(target - tol, target + tol, color=colors[L], alpha=0.12, lw=0)
        ax.set_title(f"{name}: {len(d)} cells")
        ax.set_xlabel("conductance right after programming (uS)")
        ax.set_ylabel("cumulative fraction")
        ax.legend(fontsize=7, title="target (dotted)", title_fontsize=7)
    fig.suptitle(_title(run, "conductance CDF per level"))
    paths.append(_save(fig, _out(run, outdir, "levels_cdf")))

    fig = Figure(figsize=(11, 4.2))
    a1, a2 = fig.subplots(1, 2)
    errs = {k: (phases[k]["g"] - phases[k]["target"]) * _US for k, _, _ in _PHASES if len(phases[k])}
    span = max(float(np.percentile(np.abs(np.concatenate(list(errs.values()))), 99)), tol, 1e-3)
    edges = np.linspace(-span, span, 81)
    for key, name, color in _PHASES:
        if key in errs:
            e = errs[key]
            within = f", {np.mean(np.abs(e) <= tol):.0%} within tol" if tol else ""
            a1.hist(
                np.clip(e, -span, span),
                bins=edges,
                color=color,
                alpha=0.55,
                label=f"{name}: sigma {e.std():.2f} uS, mean {e.mean():+.2f} uS{within}",
            )
    if tol:
        for s in (-tol, tol):
            a1.axvline(s, color="k", ls=":", lw=0.8)
    a1.set_ylim(top=a1.get_ylim()[1] * 1.3)  # room for the legend
    a1.set_xlabel("G - target right after programming (uS; tails clipped)")
    a1.set_ylabel("cells")
    a1.set_title("programming error" + (" (dotted: tolerance)" if tol else ""))
    a1.legend(fontsize=7)
    for key, name, color in _PHASES:
        d = phases[key]
        if len(d):
            pmax = int(d["pulses"].max())
            a2.hist(
                d["pulses"],
                bins=np.arange(-0.5, pmax + 1.5, max(1, (pmax + 1) // 40)),
                color=color,
                alpha=0.55,
                label=f"{name}: mean {d['pulses'].mean():.1f}",
            )
    a2.set_ylim(top=a2.get_ylim()[1] * 1.15)
    a2.set_xlabel("pulses per cell")
    a2.set_ylabel("cells")
    a2.set_title("programming cost")
    a2.legend(fontsize=7)
    fig.suptitle(_title(run, "error and pulses"))
    paths.append(_save(fig, _out(run, outdir, "levels_error")))

    reads = {k: run.data.get(f"{k}_reads", np.zeros(0)) for k, _, _ in _PHASES}
    if any(len(reads[k]) and len(phases[k]) for k in reads):
        fig = Figure(figsize=(11, 4.4))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (key, name, _) in zip(axes, _PHASES):
            r, d = reads[key], phases[key]
            if not (len(r) and len(d)):
                _no_data(ax, f"no {name} reads yet")
                continue
            t = r["t"] - d["t"].max()
            g = r["g"][:, : len(d)] * _US
            for L, target in enumerate(targets):
                sel = d["level"] == L
                if sel.any():
                    _band(ax, t, g[:, sel], colors[L], f"{target:.3g} uS")
                ax.axhline(target, color=colors[L], ls=":", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("time after programming (s)")
            ax.set_ylabel("conductance (uS)")
            ax.set_title(f"{name}: median, 10-90 % band, target dotted", fontsize=10)
        axes[0].legend(fontsize=7, ncol=2, title="target", title_fontsize=7)
        fig.suptitle(_title(run, "reads after programming per level"))
        paths.append(_save(fig, _out(run, outdir, "levels_relaxation")))
    return paths


def _targets(run: RunData, phases: dict[str, np.ndarray]) -> list[float]:
    """Target conductance (uS) of each level index, from the records (levels never programmed get the param grid)."""
    n = int(run.params.get("levels", 0))
    for d in phases.values():
        if len(d):
            n = max(n, int(d["level"].max()) + 1)
    g_lo, g_hi = float(run.params.get("g_lo", 0.0)), float(run.params.get("g_hi", 0.0))
    out = [float(x) for x in np.linspace(g_lo, g_hi, n) * _US] if n > 1 else [g_lo * _US] * n
    for d in phases.values():
        for L in np.unique(d["level"]) if len(d) else []:
            out[int(L)] = float(d["target"][d["level"] == L][0] * _US)
    return out


def _plot_gate_cal(run: RunData, cal: np.ndarray, outdir: Path) -> Path:
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    g = cal["g"] * _US
    for j in range(g.shape[1]):
        ax.plot(cal["gate"], g[:, j], color="grey", lw=0.6, alpha=0.6, label="cells" if j == 0 else None)
    ax.plot(cal["gate"], np.median(g, axis=1), color="C0", marker="o", ms=3, lw=2, label="median (used for open loop)")
    ax.set_xlabel("SET gate voltage (V)")
    ax.set_ylabel("conductance after SET (uS)")
    ax.set_title(_title(run, f"gate calibration, {g.shape[1]} cells"), fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, _out(run, outdir, "levels_gate"))


# ---------------------------------------------------------------------------------------------- read noise


@PLOTTERS.register("read-noise")
def plot_read_noise(run: RunData, outdir: Path) -> list[Path]:
    """Per-cell read sigma versus mean conductance, pooled deviations, and time traces of RTN-like cells."""
    reads = _require(run, "reads")
    if len(reads) < 2:
        raise ValueError(f"{run.path}: read-noise run has {len(reads)} read; need at least 2 to plot noise")
    g = reads["g"] * _US
    mean, sd = g.mean(axis=0), g.std(axis=0, ddof=1)
    dev = g - mean[None, :]
    prog = run.data.get("program", np.zeros(0))
    fig = Figure(figsize=(11, 4.4))
    a1, a2 = fig.subplots(1, 2)
    if len(prog) == g.shape[1]:
        levels = np.unique(prog["level"])
        colors = _level_colors(int(levels.max()) + 1)
        for L in levels:
            sel = prog["level"] == L
            a1.scatter(mean[sel], sd[sel], s=14, color=colors[L], label=f"target {prog['target'][sel][0] * _US:.3g} uS")
        a1.legend(fontsize=7)
    else:
        a1.scatter(mean, sd, s=14, color="C0")
    a1.set_xlabel("mean conductance (uS)")
    a1.set_ylabel("read sigma (uS)")
    a1.set_title(f"{g.shape[1]} cells, {g.shape[0]} reads each")
    span = max(float(np.abs(dev).max()), 1e-3)
    a2.hist(dev.ravel(), bins=np.linspace(-span, span, 61), color="C0")
    a2.set_yscale("log")
    a2.set_xlabel("G - cell mean (uS)")
    a2.set_ylabel("reads")
    a2.set_title(f"pooled deviations (median sigma {np.median(sd):.3g} uS)")
    fig.suptitle(_title(run, "read noise"))
    paths = [_save(fig, _out(run, outdir, "read_noise"))]

    rho = _lag1_autocorr(_detrend(g))
    pick = trace_cells(g)
    typical = pick[-1]
    t = reads["t"] - reads["t"][0]
    x, xlabel = (t * 1e3, "time since first read (ms)") if np.ptp(t) > 0 else (np.arange(len(t)), "read index")
    fig = Figure(figsize=(9, 1.7 * len(pick) + 0.8))
    axes = fig.subplots(len(pick), 1, sharex=True, squeeze=False)
    for ax, j in zip(axes[:, 0], pick):
        cell = _cell_of(run, int(j), g.shape[1])
        ax.plot(x, g[:, j], color="C0", lw=0.8, marker=".", ms=2)
        ax.axhline(mean[j], color="grey", ls=":", lw=0.8)
        ax.set_ylabel("G (uS)")
        kind = "typical" if j == typical else "most correlated"
        ax.set_title(
            f"cell {cell} ({kind}): mean {mean[j]:.3g} uS, sigma {sd[j]:.3g} uS, lag-1 r (detrended) {rho[j]:.2f}",
            fontsize=8,
        )
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(_title(run, "read traces (RTN shows as steps)"), fontsize=10)
    paths.append(_save(fig, _out(run, outdir, "read_noise_traces")))
    return paths


def trace_cells(g: np.ndarray, n: int = 4) -> list[int]:
    """Columns of g (reads x cells) worth showing as traces: up to n-1 RTN-like cells, then the median-sigma one.

    Telegraph noise makes successive reads alike, so after removing the slow relaxation trend (a quadratic
    in read index) the cells with the largest lag-1 autocorrelation show it best. Cells that read a
    constant (ADC saturated, stuck) are skipped.
    """
    mean, sd = g.mean(axis=0), g.std(axis=0)
    rho = _lag1_autocorr(_detrend(g))
    rho[sd <= 1e-6 * np.maximum(np.abs(mean), 1.0)] = np.nan
    typical = int(np.argsort(sd, kind="stable")[sd.size // 2])
    order = [
        int(j)
        for j in np.argsort(-np.nan_to_num(rho, nan=-np.inf), kind="stable")
        if j != typical and np.isfinite(rho[j])
    ]
    return order[: max(0, min(n - 1, g.shape[1] - 1))] + [typical]


def _detrend(g: np.ndarray) -> np.ndarray:
    """Residuals of each column (reads x cells) after a least-squares quadratic in read index."""
    x = np.linspace(-1.0, 1.0, g.shape[0])
    deg = min(2, g.shape[0] - 1)
    coef = np.polynomial.polynomial.polyfit(x, g, deg)
    return g - np.polynomial.polynomial.polyval(x, coef).T


def _lag1_autocorr(dev: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each column of zero-mean traces (reads x cells); NaN for a constant trace."""
    num = np.sum(dev[1:] * dev[:-1], axis=0)
    den = np.sum(dev * dev, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _cell_of(run: RunData, j: int, n: int) -> str:
    """'row,col' of the j-th cell of the read region (row-major), from the region parameter."""
    from hil.characterize.region import parse_region

    try:
        board = run.board
        reg = parse_region(str(run.params["cells"]), int(board["rows"]), int(board["cols"]))
    except (KeyError, ValueError, TypeError):
        return f"#{j}"
    if reg.n_cells != n:
        return f"#{j}"
    return f"{reg.row0 + j // reg.ncols},{reg.col0 + j % reg.ncols}"


# ---------------------------------------------------------------------------------------------- dispatch


def plotter_for(run: RunData) -> Plotter:
    """The plot function of the run's procedure, or a one-line ValueError."""
    if run.procedure not in PLOTTERS:
        known = ", ".join(PLOTTERS.names())
        raise ValueError(f"{run.path}: no plots for procedure {run.procedure!r} (plots exist for: {known})")
    return PLOTTERS.get(run.procedure)


def check_plottable(run: RunData) -> None:
    """Raise a one-line ValueError when the run cannot be plotted (unknown procedure, no data at all)."""
    plotter_for(run)
    if not any(len(d) for d in run.data.values()):
        state = "complete" if run.complete else "incomplete (status 'running')"
        raise ValueError(f"{run.path}: {state} {run.procedure} run holds no data; nothing to plot")


def plot_run(run: RunData | str | Path, outdir: str | Path | None = None) -> list[Path]:
    """Write the PNG figures of one run file into `outdir` (default: the run file's folder); returns their paths."""
    if not isinstance(run, RunData):
        run = read_run(run)
    check_plottable(run)
    out = Path(outdir) if outdir is not None else run.path.parent
    if not out.is_dir():
        raise FileNotFoundError(f"output folder {out} does not exist")
    return plotter_for(run)(run, out)
