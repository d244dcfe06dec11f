"""The chip's defect map: per cell healthy, unformable, stuck-on or stuck-off, from what a host can measure.

Sources (`defect_map_from_runs`, in the order given; a later source adds defects and updates their
conductance, a defect once seen stays, so a map only grows; start again from a new form run to clear it):
- a form run (`rram characterize form`) or the form table of a deployment (`rram program`): a cell not
  formed after its ramp is UNFORMABLE (never formed, or stuck open: no pulse can change it); a cell
  that conducted before any forming pulse (pulses = 0) is STUCK_ON (a short) when the run formed most of
  its cells (a pristine chip: a pristine cell reads tens of nS, so only a short conducts at once), and
  otherwise (an already formed chip) when it reads above STUCK_ON_FACTOR x g_max;
- the tiles of a deployment (`rram program`): write-verify NOT_FORMED is UNFORMABLE, write-verify STUCK
  is STUCK_ON when its last read is above mid-window and STUCK_OFF below; a programmed cell that reads
  back above STUCK_ON_FACTOR x g_max is STUCK_ON, one that reads below g_min although its target lies in
  the upper three quarters of the window is STUCK_OFF (it cannot be SET above g_min).
`g` holds the latest read of each defective cell: the value it will keep, which placement gives it as its target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEALTHY, UNFORMABLE, STUCK_ON, STUCK_OFF = 0, 1, 2, 3
STATE_NAMES = {HEALTHY: "healthy", UNFORMABLE: "unformable", STUCK_ON: "stuck_on", STUCK_OFF: "stuck_off"}
# A healthy cell programmed to at most g_max reads back within a few uS of it (open-loop sigma at the top of
# the window is 2-5 uS, so 1.2 x 40 uS = 48 uS is more than 2 sigma above the highest target); the shorts of
# a real or simulated chip read 30-110 uS.
STUCK_ON_FACTOR = 1.2
_NOT_FORMED, _STUCK = 2, 3  # firmware_protocol.constants.CellResult values in a deployment's status column


class DefectMapError(ValueError):
    """A run given as a defect source cannot supply one (wrong kind of run, other array size)."""


@dataclass
class DefectMap:
    """Per-cell defect state (uint8 codes above) and the latest read of each defective cell (S, NaN if none)."""

    state: np.ndarray  # (rows, cols) uint8
    g: np.ndarray  # (rows, cols) float64
    sources: list[str] = field(default_factory=list)

    @classmethod
    def healthy(cls, rows: int, cols: int) -> DefectMap:
        return cls(np.zeros((rows, cols), np.uint8), np.full((rows, cols), np.nan))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.state.shape[0]), int(self.state.shape[1]))

    @property
    def defective(self) -> np.ndarray:
        return self.state != HEALTHY

    def counts(self) -> dict[str, int]:
        """Cells of each state, by name."""
        return {name: int(np.sum(self.state == code)) for code, name in STATE_NAMES.items()}

    def unknown_stuck_fractions(self, expected: tuple[float, float]) -> tuple[float, float]:
        """Stuck-on and stuck-off fractions left to chance once this map's defects are known: the `expected` ones
        (a profile's, per device) less this map's share of shorts and of unformable or stuck-off cells, >= 0."""
        n = max(1, self.state.size)
        on = float(np.sum(self.state == STUCK_ON)) / n
        off = float(np.sum((self.state == UNFORMABLE) | (self.state == STUCK_OFF))) / n
        return max(0.0, float(expected[0]) - on), max(0.0, float(expected[1]) - off)

    def held(self, g_max: float) -> np.ndarray:
        """The conductance each cell is taken to keep: its latest read, else 0 S (off) or 1.5 x g_max (a short)."""
        unread = np.where(self.state == STUCK_ON, 1.5 * g_max, 0.0)
        return np.where(np.isnan(self.g), unread, self.g)

    def mark(self, rows: np.ndarray, cols: np.ndarray, state: int, g: np.ndarray) -> None:
        """Record `state` (and its read `g`) at the given cells: a defect replaces healthy, a newer read the older."""
        self.state[rows, cols] = state
        self.g[rows, cols] = g


def from_form_table(d: np.ndarray, rows: int, cols: int, g_max: float, g_key: str) -> DefectMap:
    """Defects seen by a form table (fields cell, formed, pulses and `g_key`, the read after forming)."""
    m = DefectMap.healthy(rows, cols)
    if len(d) == 0:
        return m
    r, c = d["cell"][:, 0].astype(int), d["cell"][:, 1].astype(int)
    formed = d["formed"].astype(bool)
    g = d[g_key].astype(float)
    bad = ~formed
    m.mark(r[bad], c[bad], UNFORMABLE, g[bad])
    at_once = formed & (d["pulses"] == 0)
    pristine_chip = np.sum(formed & (d["pulses"] > 0)) > np.sum(at_once)
    short = at_once & (pristine_chip | (g > STUCK_ON_FACTOR * g_max))
    m.mark(r[short], c[short], STUCK_ON, g[short])
    return m


def from_tiles(tiles: np.ndarray, rows: int, cols: int, g_min: float, g_max: float) -> DefectMap:
    """Defects seen by a deployment's tile records (cells row-major over the array, NaN targets where unused)."""
    m = DefectMap.healthy(rows, cols)
    for rec in tiles:
        tgt = rec["target"].astype(float)
        used = ~np.isnan(tgt)
        status, g_prog, g_read = rec["status"], rec["g_prog"].astype(float), rec["g_read"].astype(float)
        verified = used & (rec["verify"] > 0)
        hi = (g_prog > (g_min + g_max) / 2) | (g_read > (g_min + g_max) / 2)
        found = [
            (verified & (status == _NOT_FORMED), UNFORMABLE),
            (verified & (status == _STUCK) & ~hi, STUCK_OFF),
            (used & (g_read < g_min) & (tgt >= g_min + 0.25 * (g_max - g_min)), STUCK_OFF),
            (verified & (status == _STUCK) & hi, STUCK_ON),
            (used & (g_read > STUCK_ON_FACTOR * g_max), STUCK_ON),
        ]
        for sel, code in found:
            idx = np.flatnonzero(sel)
            m.mark(idx // cols, idx % cols, code, g_read[idx])
    return m


def merge(into: DefectMap, new: DefectMap) -> None:
    """Add `new`'s defects to `into` (a defect stays; a newer read of a defective cell replaces the older)."""
    sel = new.defective
    into.state[sel] = new.state[sel]
    into.g[sel] = new.g[sel]


def defect_map_from_runs(paths: Sequence[str | Path], rows: int, cols: int, g_min: float, g_max: float) -> DefectMap:
    """The defect map of a rows x cols chip from its form and deployment runs, in the order given (module doc)."""
    from hil.characterize.runfile import read_run

    out = DefectMap.healthy(rows, cols)
    for path in paths:
        run = read_run(path)
        if run.procedure not in ("form", "program"):
            raise DefectMapError(
                f"{path} is a {run.procedure!r} run: a defect map comes from a form run (rram characterize form) "
                f"or a deployment (rram program)"
            )
        cells = run.data["form"]["cell"] if len(run.data["form"]) else np.zeros((0, 2), int)
        if run.procedure == "program" and len(run.data["tiles"]):
            n = run.data["tiles"]["target"].shape[1]
            if n != rows * cols:
                raise DefectMapError(f"{path} is a deployment on an array of {n} cells, not this {rows}x{cols} chip")
        if cells.size and (cells[:, 0].max() >= rows or cells[:, 1].max() >= cols):
            raise DefectMapError(f"{path} holds cells outside this {rows}x{cols} chip: give a run of this chip")
        g_key = "g_after" if run.procedure == "form" else "g"
        found = from_form_table(run.data["form"], rows, cols, g_max, g_key)
        if run.procedure == "program":
            merge(found, from_tiles(run.data["tiles"], rows, cols, g_min, g_max))
        merge(out, found)
        out.sources.append(str(Path(path).resolve()))
    return out
