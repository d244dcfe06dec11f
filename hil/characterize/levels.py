"""Multi-level programming statistics: the same cells programmed open-loop (one shot) and with write-verify.

Open loop needs to know which SET gate voltage gives which conductance: the procedure first measures
that curve on a few cells (full RESET, then SET at each gate voltage), then programs every cell with
one RESET and one SET at the interpolated gate. Both phases are read right after programming and at
a few times after, so calibration can fit programming error, its spread, the pulses it cost, and
relaxation.

Write-verify is program-settle-verify, as `rram program` deploys (hil.deploy.procedure): after each batch's
WRITE_VERIFY, up to `reverify` rounds of a `settle` wait, a read, and a touch-up of the converged cells that
relaxed out of tolerance; so the profile's verified law is the one a deployment with the same settings meets,
and its pulses per device hold the touch-ups. `reverify` 0 writes the same records as write-verify once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_protocol import CellResult
from firmware_protocol.progress import Progress
from hil.characterize.formed import FormedCellsParams, FormedCellsProcedure
from hil.characterize.multilevel import (
    SET_WIDTH_NS,
    SettleVerify,
    assign_levels,
    calibrate_gate,
    check_rounds,
    gate_for,
    gate_param,
    gate_points_param,
    gate_table,
    level_targets,
    max_pulses_param,
    one_shot,
    program_table,
    program_verified,
    reads_table,
    reverify_param,
    reverify_table,
    settle_param,
    timed_reads,
    tol_param,
)
from hil.characterize.procedure import PROCEDURES, param
from hil.characterize.runfile import RunWriter, Table
from hil.characterize.stats import mean, phase_stats


@dataclass
class LevelsParams(FormedCellsParams):
    levels: int = param(8, help="conductance levels, evenly spaced from --g-lo to --g-hi", min=1)
    g_lo: float = param(4e-6, unit="S", help="lowest target conductance", min=0, min_open=True)
    g_hi: float = param(36e-6, unit="S", help="highest target conductance", min=0, min_open=True)
    tol: float = tol_param("write-verify tolerance (2% of g_max)")
    max_pulses: int = max_pulses_param()
    settle: float = settle_param()
    reverify: int = reverify_param()
    read_times: str = param(
        "1,10,100,1000", unit="s", help="block reads after programming: comma-separated, increasing"
    )
    gate_lo: float = gate_param(0.7, "lowest")
    gate_hi: float = gate_param(1.4, "highest")
    gate_points: int = gate_points_param()
    cal_cells: int = param(16, help="cells the gate calibration is measured on (the region's first formed ones)", min=1)
    seed: int = param(0, help="seed of the shuffled level assignment (a resume assigns the same levels)", min=0)


@PROCEDURES.register("levels")
class Levels(FormedCellsProcedure[LevelsParams]):
    name = "levels"
    Params = LevelsParams
    summary_units = {
        "healthy": "of cells",
        "skipped_unformed": "of cells",
        "stuck": "of cells",
        "sigma_s": "S",
        "mean_error_s": "S",
        "pulses_mean": "pulses",
        "within_tol": "%",
        "touchups_mean": "touch-ups",
        "touchup_pulses_mean": "pulses",
    }

    def validate(self) -> None:
        p = self.p
        level_targets(p.levels, p.g_lo, p.g_hi)
        check_rounds(self.name, p.reverify)
        self.times = self._times()
        self.board.limits.check_width(SET_WIDTH_NS)  # the one-shot SET pulse of the gate calibration

    def _times(self) -> np.ndarray:
        try:
            t = np.array([float(x) for x in self.p.read_times.split(",")])
        except ValueError:
            raise ValueError(
                f"--read-times {self.p.read_times!r}: give comma-separated seconds, e.g. 1,10,100"
            ) from None
        if t.size < 1 or np.any(t <= 0) or np.any(np.diff(t) <= 0):
            raise ValueError(f"--read-times {self.p.read_times!r}: times must be positive and increasing")
        return t

    def _cal_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The gate calibration's cells: the region's first `cal_cells` formed ones."""
        rows, cols = self.region.cells()
        formed = self._check.formed if self._check is not None else np.ones(rows.size, dtype=bool)  # before the check
        use = np.flatnonzero(formed)[: self.p.cal_cells]
        return rows[use], cols[use]

    def tables(self) -> dict[str, Table]:
        n = self.region.n_cells
        return {
            **self.check_tables(),
            "gate_cal": gate_table(max(1, self._cal_cells()[0].size)),
            "open_loop": program_table("one RESET + one SET at the calibrated gate per cell (status 0; pulses 2)"),
            "open_loop_reads": reads_table(n, "block reads at read_times after open-loop programming"),
            "verified": reverify_table(
                "on-board write-verify to the same targets, then up to `reverify` settle-read-touch-up rounds"
            ),
            "verified_reads": reads_table(n, "block reads at read_times after write-verify (its last touch-up)"),
        }

    def total_units(self) -> int:
        return self.p.gate_points + 2 * self.region.n_cells + 2 * self.times.size

    def _calibrate_gate(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        rows, cols = self._cal_cells()
        calibrate_gate(self.board, w, rows, cols, np.linspace(p.gate_lo, p.gate_hi, p.gate_points), p.v_read, bar)

    def _program_open_loop(self, w: RunWriter, bar: Progress, levels: np.ndarray, targets: np.ndarray) -> None:
        p = self.p
        cal = w.read("gate_cal")
        gates = gate_for(targets, cal["gate"], cal["g"])
        rows, cols = self.region.cells()
        check = self.check
        for i in range(w.count("open_loop"), rows.size):
            r, c, lv = int(rows[i]), int(cols[i]), int(levels[i])
            if check.formed[i]:
                m = one_shot(self.board, r, c, float(gates[lv]), p.v_read)
                g, pulses, status, t = m.conductance_s, 2, CellResult.CONVERGED, m.timestamp_s
            else:  # left out by the formed check: no pulse
                g, pulses, status, t = float(check.g[i]), 0, CellResult.NOT_FORMED, check.t
            w.append("open_loop", cell=[r, c], level=lv, target=targets[lv], g=g, pulses=pulses, status=status, t=t)
            bar.advance()

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        if not self.formed.any():
            return  # every cell left out: nothing to program
        targets = level_targets(p.levels, p.g_lo, p.g_hi)
        levels = assign_levels(self.region.n_cells, p.levels, p.seed)
        bar.set(
            sum(w.count(t) for t in ("gate_cal", "open_loop", "verified"))
            + w.count("open_loop_reads")
            + w.count("verified_reads")
        )
        bar.stage("gate calibration")
        self._calibrate_gate(w, bar)
        bar.stage("open-loop programming")
        self._program_open_loop(w, bar, levels, targets)
        bar.stage("reads after open loop")
        timed_reads(
            self.board,
            w,
            "open_loop_reads",
            self.region,
            float(w.read("open_loop")["t"].max()),
            self.times,
            p.v_read,
            bar,
        )
        bar.stage("write-verify")
        program_verified(
            self.board,
            w,
            "verified",
            self.region,
            levels,
            targets,
            p.tol,
            p.max_pulses,
            p.v_read,
            bar,
            check=self.check,
            settle_verify=SettleVerify(int(p.reverify), p.settle),
        )
        bar.stage("reads after write-verify")
        timed_reads(
            self.board,
            w,
            "verified_reads",
            self.region,
            float(w.read("verified")["t"].max()),
            self.times,
            p.v_read,
            bar,
        )

    def summary(self, data: dict) -> dict:
        verified = data["verified"]
        healthy = verified["status"] == CellResult.CONVERGED  # cells write-verify could program: formed, not stuck
        out: dict = {
            "cells": self.region.n_cells,
            "skipped_unformed": self.skipped(data),
            "healthy": int(healthy.sum()),
            "stuck": int((verified["status"] == CellResult.STUCK).sum()),
            "levels": self.p.levels,
        }
        for phase in ("open_loop", "verified"):
            d = data[phase]
            out[phase] = phase_stats(d[healthy[: len(d)]] if len(d) else d, self.p.tol)
        if "touchups" in (verified.dtype.names or ()):  # a run file written before program-settle-verify lacks them
            ok = verified[healthy]
            out["verified"]["touchups_mean"] = mean(ok["touchups"])
            out["verified"]["touchup_pulses_mean"] = mean(ok["pulses_touchup"])
        return out
