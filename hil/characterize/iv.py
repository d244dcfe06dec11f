"""Bipolar I-V sweeps: 0 -> +V_max -> 0 -> V_min -> 0, pulsed or DC, several cycles per cell."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hil.characterize.procedure import Procedure, ProcedureParams, Progress
from hil.characterize.runfile import RunWriter, Table


@dataclass
class IvParams(ProcedureParams):
    cells: str = "0:1,0:2"
    v_max: float = 1.5  # V, top of the SET branch
    v_min: float = -1.6  # V, bottom of the RESET branch
    points: int = 31  # points per branch (4 branches per sweep)
    width_ns: int = 1000  # pulse width (pulsed) or dwell (DC) per point
    v_gate: float = 1.0  # V, SET compliance
    cycles: int = 3
    dc: bool = False


class Iv(Procedure):
    name = "iv"
    Params = IvParams

    def validate(self) -> None:
        if self.p.points < 2 or self.p.cycles < 1:
            raise ValueError("iv needs --points >= 2 and --cycles >= 1")
        self.check_voltage("sweep maximum", self.p.v_max, "set_v")
        self.check_voltage("sweep minimum", self.p.v_min, "reset_v")
        if self.p.dc:  # a DC sweep's dwell is not a pulse width
            self.check_voltage("gate voltage", self.p.v_gate, "gate_v")
        else:
            self.check_pulse(self.p.width_ns, self.p.v_gate)

    def tables(self) -> dict[str, Table]:
        n = 4 * self.p.points
        return {"iv": Table({"cell": ("i4", (2,)), "cycle": ("i4", ()), "v": ("f4", (n,)), "i": ("f8", (n,)), "t": ("f8", ())},
                            "one record per sweep: applied voltage (V) and current (A) of the 4 branches")}  # fmt: skip

    def total_units(self) -> int:
        return self.region.n_cells * self.p.cycles

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        rows, cols = self.region.cells()
        done = w.count("iv")
        bar.set(done)
        branches = [(0.0, p.v_max), (p.v_max, 0.0), (0.0, p.v_min), (p.v_min, 0.0)]
        for k in range(done, self.total_units()):
            r, c = int(rows[k // p.cycles]), int(cols[k // p.cycles])
            sweeps = [self.board.iv_sweep(r, c, a, b, p.points, p.width_ns, p.v_gate, dc=p.dc) for a, b in branches]
            w.append("iv", cell=[r, c], cycle=k % p.cycles, v=np.concatenate([s.voltage_v for s in sweeps]),
                     i=np.concatenate([s.current_a for s in sweeps]), t=sweeps[-1].timestamp_s)  # fmt: skip
            bar.advance()

    def summary(self, data: dict) -> dict:
        d = data["iv"]
        n = self.p.points
        up = d["i"][:, :n]
        set_idx = np.argmax(up > 0.5 * up.max(axis=1, keepdims=True), axis=1)
        back = d["i"][:, n : 2 * n]  # SET branch coming down: the cell is ON
        mid = n // 2
        g_on = np.abs(back[:, mid]) / np.maximum(np.abs(d["v"][:, n + mid]), 1e-3)
        return {"sweeps": int(len(d)), "v_set_median": float(np.median(d["v"][np.arange(len(d)), set_idx])),
                "g_on_median": float(np.median(g_on))}  # fmt: skip
