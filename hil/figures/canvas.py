"""Figures without pyplot: bare `Figure` objects written as PNG, so no import here picks or switches a backend.

A `Figure` made directly is held by nothing but its caller (no pyplot figure manager), so it needs no
closing, and `savefig` renders PNG through Agg for that one call whatever backend the program uses.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.colors import Colormap
from matplotlib.figure import Figure


def save_png(fig: Figure, path: Path, dpi: int) -> Path:
    """Lay the figure out tightly and write it at `dpi` (PNG for a .png path, the format its suffix names); returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def colormap(name: str) -> Colormap:
    """The registered matplotlib colour map `name` (what `pyplot.get_cmap` would give, without pyplot)."""
    return matplotlib.colormaps[name]
