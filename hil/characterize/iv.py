"""Bipolar I-V sweeps: 0 -> +V_max -> 0 -> V_min -> 0, pulsed or DC, several cycles per cell."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_protocol.progress import Progress
from hil.characterize import stats
from hil.characterize.formed import FormedCellsParams, FormedCellsProcedure
from hil.characterize.procedure import CELLS_HELP, PROCEDURES, ParamSpec, param
from hil.characterize.runfile import RunWriter, Table


@dataclass
class IvParams(FormedCellsParams):
    cells: str = param("0:1,0:2", help=CELLS_HELP)
    v_max: float = param(
        1.5,
        unit="V",
        help="top of the SET branch (0 -> V -> 0)",
        min=0,
        min_open=True,
        limit="set_v",
        label="sweep maximum",
    )
    v_min: float = param(
        -1.6,
        unit="V",
        help="bottom of the RESET branch (0 -> V -> 0)",
        max=0,
        max_open=True,
        limit="reset_v",
        label="sweep minimum",
    )
    points: int = param(31, help="points per branch (4 branches per sweep)", min=2, max=1024)
    width_ns: int = param(
        1000, unit="ns", help="pulse width per point, or dwell per point with --dc", min=1, limit="width"
    )
    v_gate: float = param(
        1.0, unit="V", help="NMOS gate voltage: the SET compliance", min=0, limit="gate_v", label="gate voltage"
    )
    cycles: int = param(3, help="sweeps per cell", min=1)
    dc: bool = param(False, help="DC sweep (each point held for --width-ns) instead of pulses")


@PROCEDURES.register("iv")
class Iv(FormedCellsProcedure[IvParams]):
    name = "iv"
    Params = IvParams
    summary_units = {"skipped_unformed": "of cells", "v_set_median_v": "V", "g_on_median_s": "S"}

    def board_limited(self) -> dict[str, ParamSpec]:
        limited = super().board_limited()
        if self.p.dc:  # a DC sweep's dwell is not a pulse width
            del limited["width_ns"]
        return limited

    def tables(self) -> dict[str, Table]:
        n = 4 * self.p.points
        return {
            **self.check_tables(),
            "iv": Table(
                {"cell": ("i4", (2,)), "cycle": ("i4", ()), "v": ("f4", (n,)), "i": ("f8", (n,)), "t": ("f8", ())},
                "one record per sweep of a formed cell: applied voltage (V) and current (A) of the 4 branches",
            ),
        }

    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The cells swept: the formed ones, row-major."""
        rows, cols = self.region.cells()
        return rows[self.formed], cols[self.formed]

    def total_units(self) -> int:
        return self._cells()[0].size * self.p.cycles

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        rows, cols = self._cells()
        done = w.count("iv")
        bar.set(done)
        branches = [(0.0, p.v_max), (p.v_max, 0.0), (0.0, p.v_min), (p.v_min, 0.0)]
        for k in range(done, self.total_units()):
            r, c = int(rows[k // p.cycles]), int(cols[k // p.cycles])
            sweeps = [self.board.iv_sweep(r, c, a, b, p.points, p.width_ns, p.v_gate, dc=p.dc) for a, b in branches]
            w.append(
                "iv",
                cell=[r, c],
                cycle=k % p.cycles,
                v=np.concatenate([s.voltage_v for s in sweeps]),
                i=np.concatenate([s.current_a for s in sweeps]),
                t=sweeps[-1].timestamp_s,
            )
            bar.advance()

    def summary(self, data: dict) -> dict:
        d = data["iv"]
        n = self.p.points
        out: dict = {
            "cells": self.region.n_cells,
            "skipped_unformed": self.skipped(data),
            "sweeps": int(len(d)),
        }
        if not len(d):
            return out
        up = d["i"][:, :n]
        set_idx = np.argmax(up > 0.5 * up.max(axis=1, keepdims=True), axis=1)
        back = d["i"][:, n : 2 * n]  # SET branch coming down: the cell is ON
        mid = n // 2
        g_on = np.abs(back[:, mid]) / np.maximum(np.abs(d["v"][:, n + mid]), 1e-3)
        out["v_set_median_v"] = stats.median(d["v"][np.arange(len(d)), set_idx])
        out["g_on_median_s"] = stats.median(g_on)
        return out
