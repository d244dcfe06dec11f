"""Cell regions on the command line: 'R0:R1,C0:C1' (half-open ranges) or 'R,C' for one cell."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """A rectangle of cells [row0, row0 + nrows) x [col0, col0 + ncols)."""

    row0: int
    col0: int
    nrows: int
    ncols: int

    @property
    def n_cells(self) -> int:
        return self.nrows * self.ncols

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column index of every cell, row-major."""
        rr, cc = np.meshgrid(
            np.arange(self.row0, self.row0 + self.nrows), np.arange(self.col0, self.col0 + self.ncols), indexing="ij"
        )
        return rr.ravel(), cc.ravel()

    def __str__(self) -> str:
        return f"{self.row0}:{self.row0 + self.nrows},{self.col0}:{self.col0 + self.ncols}"


def _span(text: str, size: int, axis: str, spec: str) -> tuple[int, int]:
    text = text.strip()
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            lo = int(a) if a.strip() else 0
            hi = int(b) if b.strip() else size
        else:
            lo = int(text)
            hi = lo + 1
    except ValueError:
        raise ValueError(f"cell region {spec!r}: {axis} part {text!r} is not N or N:M") from None
    if not 0 <= lo < hi <= size:
        raise ValueError(f"cell region {spec!r}: {axis}s {lo}:{hi} are outside the array (0:{size})")
    return lo, hi


def parse_region(spec: str, rows: int, cols: int) -> Region:
    """Parse '0:32,0:32', '5,7' or ':,0:8' against an array of rows x cols."""
    parts = spec.split(",")
    if len(parts) != 2:
        raise ValueError(f"cell region {spec!r}: expected 'ROWS,COLS' such as 0:32,0:32")
    r0, r1 = _span(parts[0], rows, "row", spec)
    c0, c1 = _span(parts[1], cols, "column", spec)
    return Region(r0, c0, r1 - r0, c1 - c0)
