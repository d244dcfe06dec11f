"""Retention: program cells to levels with write-verify, then read them on a log-spaced schedule."""

from __future__ import annotations

from dataclasses import dataclass

from firmware_protocol import CellResult
from firmware_protocol.progress import Progress
from hil.characterize import stats
from hil.characterize.formed import FormedCellsParams, FormedCellsProcedure
from hil.characterize.multilevel import (
    assign_levels,
    level_targets,
    log_times,
    max_pulses_param,
    program_table,
    program_verified,
    reads_table,
    timed_reads,
    tol_param,
)
from hil.characterize.procedure import PROCEDURES, param
from hil.characterize.runfile import RunWriter, Table


@dataclass
class RetentionParams(FormedCellsParams):
    levels: int = param(4, help="conductance levels, evenly spaced from --g-lo to --g-hi", min=1)
    g_lo: float = param(5e-6, unit="S", help="lowest target conductance", min=0, min_open=True)
    g_hi: float = param(35e-6, unit="S", help="highest target conductance", min=0, min_open=True)
    tol: float = tol_param()
    max_pulses: int = max_pulses_param()
    t_first: float = param(1.0, unit="s", help="first read, after programming", min=0, min_open=True)
    t_last: float = param(1e5, unit="s", help="last read, after programming", min=0, min_open=True)
    times: int = param(11, help="block reads, log-spaced from --t-first to --t-last", min=1)
    seed: int = param(0, help="seed of the shuffled level assignment (a resume assigns the same levels)", min=0)


@PROCEDURES.register("retention")
class Retention(FormedCellsProcedure[RetentionParams]):
    name = "retention"
    Params = RetentionParams
    summary_units = {
        "skipped_unformed": "of cells",
        "converged": "of cells",
        "stuck": "of cells",
        "times_s": "s",
        "sigma_first_s": "S",
        "sigma_last_s": "S",
    }

    def validate(self) -> None:
        level_targets(self.p.levels, self.p.g_lo, self.p.g_hi)
        log_times(self.p.t_first, self.p.t_last, self.p.times)

    def tables(self) -> dict[str, Table]:
        return {
            **self.check_tables(),
            "program": program_table("write-verify programming, one record per cell"),
            "reads": reads_table(self.region.n_cells, "block reads at log-spaced times after programming"),
        }

    def total_units(self) -> int:
        return self.region.n_cells + self.p.times

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        if not self.formed.any():
            return  # every cell left out: nothing to program
        targets = level_targets(p.levels, p.g_lo, p.g_hi)
        levels = assign_levels(self.region.n_cells, p.levels, p.seed)
        bar.set(w.count("program") + w.count("reads"))
        bar.stage("write-verify")
        program_verified(
            self.board, w, "program", self.region, levels, targets, p.tol, p.max_pulses, p.v_read, bar, check=self.check
        )
        t_ref = float(w.read("program")["t"].max())
        bar.stage("timed reads")
        timed_reads(self.board, w, "reads", self.region, t_ref, log_times(p.t_first, p.t_last, p.times), p.v_read, bar)

    def summary(self, data: dict) -> dict:
        prog, reads = data["program"], data["reads"]
        ok = prog["status"] == CellResult.CONVERGED  # healthy cells: write-verify converged
        out: dict = {
            "cells": self.region.n_cells,
            "skipped_unformed": self.skipped(data),
            "converged": int(ok.sum()),
            "stuck": int((prog["status"] == CellResult.STUCK).sum()),
        }
        if len(prog) and len(reads):
            err = reads["g"][:, : len(prog)][:, ok] - prog["target"][None, ok]
            out["times_s"] = [float(x) for x in reads["t"] - prog["t"].max()]
            out["sigma_first_s"] = stats.std(err[0])
            out["sigma_last_s"] = stats.std(err[-1])
        return out
