"""Retention: program cells to levels with write-verify, then read them on a log-spaced schedule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hil.characterize.multilevel import (
    assign_levels,
    level_targets,
    log_times,
    program_table,
    program_verified,
    reads_table,
    timed_reads,
)
from hil.characterize.procedure import PROCEDURES, Procedure, ProcedureParams, Progress, param
from hil.characterize.runfile import RunWriter, Table


@dataclass
class RetentionParams(ProcedureParams):
    levels: int = param(4, help="conductance levels, evenly spaced from --g-lo to --g-hi", min=1)
    g_lo: float = param(5e-6, unit="S", help="lowest target conductance", min=0, min_open=True)
    g_hi: float = param(35e-6, unit="S", help="highest target conductance", min=0, min_open=True)
    tol: float = param(0.8e-6, unit="S", help="write-verify tolerance", min=0, min_open=True)
    max_pulses: int = param(100, help="write-verify pulse budget per cell", min=1, max=0xFFFF)
    t_first: float = param(1.0, unit="s", help="first read, after programming", min=0, min_open=True)
    t_last: float = param(1e5, unit="s", help="last read, after programming", min=0, min_open=True)
    times: int = param(11, help="block reads, log-spaced from --t-first to --t-last", min=1)
    seed: int = param(0, help="seed of the shuffled level assignment (a resume assigns the same levels)", min=0)


@PROCEDURES.register("retention")
class Retention(Procedure[RetentionParams]):
    name = "retention"
    Params = RetentionParams

    def validate(self) -> None:
        level_targets(self.p.levels, self.p.g_lo, self.p.g_hi)
        log_times(self.p.t_first, self.p.t_last, self.p.times)

    def tables(self) -> dict[str, Table]:
        return {
            "program": program_table("write-verify programming, one record per cell"),
            "reads": reads_table(self.region.n_cells, "block reads at log-spaced times after programming"),
        }

    def total_units(self) -> int:
        return self.region.n_cells + self.p.times

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        targets = level_targets(p.levels, p.g_lo, p.g_hi)
        levels = assign_levels(self.region.n_cells, p.levels, p.seed)
        bar.set(w.count("program") + w.count("reads"))
        program_verified(self.board, w, "program", self.region, levels, targets, p.tol, p.max_pulses, p.v_read, bar)
        t_ref = float(w.read("program")["t"].max())
        timed_reads(self.board, w, "reads", self.region, t_ref, log_times(p.t_first, p.t_last, p.times), p.v_read, bar)

    def summary(self, data: dict) -> dict:
        prog, reads = data["program"], data["reads"]
        t_since = reads["t"] - prog["t"].max()
        ok = prog["status"] == 0  # healthy cells: write-verify converged
        err = reads["g"][:, ok] - prog["target"][None, ok]
        return {
            "cells": int(len(prog)),
            "converged": int(ok.sum()),
            "times_s": [float(x) for x in t_since],
            "sigma_first_uS": float(np.std(err[0]) * 1e6) if len(reads) else None,
            "sigma_last_uS": float(np.std(err[-1]) * 1e6) if len(reads) else None,
        }
