"""Read noise: optionally program cells to levels, then read the region many times in a row."""

from __future__ import annotations

from dataclasses import dataclass

from firmware_protocol import CellResult
from firmware_protocol.progress import Progress
from hil.characterize import stats
from hil.characterize.formed import FormedCellsParams, FormedCellsProcedure
from hil.characterize.multilevel import (
    assign_levels,
    level_targets,
    max_pulses_param,
    program_table,
    program_verified,
    tol_param,
)
from hil.characterize.procedure import PROCEDURES, param
from hil.characterize.runfile import RunWriter, Table


@dataclass
class ReadNoiseParams(FormedCellsParams):
    reads: int = param(100, help="block reads of the region, back to back", min=3)
    program: bool = param(True, help="write-verify the cells to levels before the reads")
    levels: int = param(4, help="conductance levels, evenly spaced from --g-lo to --g-hi", min=1)
    g_lo: float = param(5e-6, unit="S", help="lowest target conductance", min=0, min_open=True)
    g_hi: float = param(35e-6, unit="S", help="highest target conductance", min=0, min_open=True)
    tol: float = tol_param()
    max_pulses: int = max_pulses_param()
    seed: int = param(0, help="seed of the shuffled level assignment (a resume assigns the same levels)", min=0)
    settle: float = param(
        100.0, unit="s", help="wait after programming, so relaxation does not pass for read noise", min=0
    )


@PROCEDURES.register("read-noise")
class ReadNoise(FormedCellsProcedure[ReadNoiseParams]):
    name = "read-noise"
    Params = ReadNoiseParams
    summary_units = {
        "skipped_unformed": "of cells",
        "used": "of cells",
        "sigma_median_s": "S",
        "g_mean_median_s": "S",
    }

    def validate(self) -> None:
        level_targets(self.p.levels, self.p.g_lo, self.p.g_hi)

    def tables(self) -> dict[str, Table]:
        n = self.region.n_cells
        return {
            **self.check_tables(),
            "program": program_table("write-verify programming before the reads (empty with --no-program)"),
            "reads": Table(
                {"t": ("f8", ()), "g": ("f8", (n,)), "code": ("u2", (n,))}, "one record per block read of the region"
            ),
        }

    def total_units(self) -> int:
        return (self.region.n_cells if self.p.program else 0) + self.p.reads

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        if p.program:
            targets = level_targets(p.levels, p.g_lo, p.g_hi)
            levels = assign_levels(self.region.n_cells, p.levels, p.seed)
            bar.stage("write-verify")
            program_verified(
                self.board,
                w,
                "program",
                self.region,
                levels,
                targets,
                p.tol,
                p.max_pulses,
                p.v_read,
                bar,
                check=self.check,
            )
        reg = self.region
        if p.program and p.settle > 0 and w.count("reads") == 0:
            bar.stage(f"settling {p.settle:g} s")
            self.board.wait(p.settle)
        bar.stage("reads")
        for _ in range(w.count("reads"), p.reads):
            m = self.board.read_block(reg.row0, reg.col0, reg.nrows, reg.ncols, p.v_read)
            w.append("reads", t=m.timestamp_s, g=m.conductance_s.ravel(), code=m.codes.ravel())
            bar.advance()

    def summary(self, data: dict) -> dict:
        g, prog = data["reads"]["g"], data["program"]
        use = self.summary_check(data).formed.copy()
        if len(prog) == use.size:  # programmed first: the cells write-verify could program
            use &= prog["status"] == CellResult.CONVERGED
        out: dict = {
            "reads": int(g.shape[0]),
            "cells": self.region.n_cells,
            "skipped_unformed": self.skipped(data),
            "used": int(use.sum()) if len(g) else 0,
        }
        if len(g) >= 2 and use.any():
            out["sigma_median_s"] = stats.median(g[:, use].std(axis=0, ddof=1))
            out["g_mean_median_s"] = stats.median(g[:, use].mean(axis=0))
        return out
