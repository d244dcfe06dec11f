"""Figure of a SWIM study, drawn on a bare matplotlib Figure: accuracy and write cost versus fraction verified."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from hil.figures.canvas import save_png

if TYPE_CHECKING:  # models.swim.planning imports torch; drawing the curve needs only the points' fields
    from models.swim.planning import PlanPoint

_DPI = 120


def plot_curve(points: list[PlanPoint], path: Path, title: str = "") -> Path:
    """Mean and 1% KPP accuracy versus fraction verified, one line per method; cost on a twin axis."""
    methods = list(dict.fromkeys(p.method for p in points))
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharex=True)
    for m in methods:
        pts = sorted((p for p in points if p.method == m), key=lambda p: p.fraction)
        x = [100 * p.fraction for p in pts]
        axes[0].plot(x, [100 * p.mean for p in pts], marker="o", label=m)
        axes[0].fill_between(x, [100 * p.ci95[0] for p in pts], [100 * p.ci95[1] for p in pts], alpha=0.15)
        axes[1].plot(x, [100 * p.kpp1 for p in pts], marker="o", label=m)
    for ax, what in zip(axes, ("mean accuracy (%)", "1% KPP accuracy (%)")):
        ax.set_xlabel("weights write-verified (%)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend()
    cost = sorted({(100 * p.fraction, p.cycles_norm) for p in points})
    twin = axes[1].twinx()
    twin.plot([c[0] for c in cost], [c[1] for c in cost], color="grey", ls=":", label="write cycles")
    twin.set_ylabel("write cycles / full write-verify", color="grey")
    fig.suptitle(title or "selective write-verify: accuracy vs fraction verified")
    return save_png(fig, path, _DPI)
