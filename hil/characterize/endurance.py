"""Endurance: N SET/RESET cycles on a region, LRS and HRS read every k cycles, streamed from the board."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_protocol.progress import Progress
from hil.characterize import stats
from hil.characterize.formed import FormedCellsParams, FormedCellsProcedure
from hil.characterize.ledger import LEDGER_TABLE, Counts, unrecorded
from hil.characterize.procedure import PROCEDURES, param
from hil.characterize.runfile import RunWriter, Table


@dataclass
class EnduranceParams(FormedCellsParams):
    cycles: int = param(10_000, unit="cycles", help="SET/RESET cycles per cell", min=1)
    read_every: int = param(100, unit="cycles", help="cycles between two reads of LRS and HRS (1 to --cycles)")
    set_v: float = param(
        1.5, unit="V", help="SET pulse voltage", min=0, min_open=True, limit="set_v", label="SET voltage"
    )
    set_width_ns: int = param(200, unit="ns", help="SET pulse width", min=1, limit="width")
    set_gate: float = param(
        1.1,
        unit="V",
        help="NMOS gate voltage on SET: the compliance (~31 uA at 1.1 V, LRS ~30 uS)",
        min=0,
        limit="gate_v",
        label="gate voltage",
    )
    reset_v: float = param(
        -1.5, unit="V", help="RESET pulse voltage", max=0, max_open=True, limit="reset_v", label="RESET voltage"
    )
    reset_width_ns: int = param(200, unit="ns", help="RESET pulse width", min=1, limit="width")
    reset_gate: float = param(
        3.0,
        unit="V",
        help="NMOS gate voltage on RESET (fully on: no compliance)",
        min=0,
        limit="gate_v",
        label="gate voltage",
    )
    cells_per_event: int = param(
        0, help="cells per streamed event (0: as many as fit one frame; small values help on a noisy link)", min=0
    )


@PROCEDURES.register("endurance")
class Endurance(FormedCellsProcedure[EnduranceParams]):
    """The board cycles the whole rectangle (its command takes a rectangle); cells the formed check left out
    are cycled too, harmlessly (SET and RESET pulses cannot form a cell), and left out of the summary."""

    name = "endurance"
    Params = EnduranceParams
    summary_units = {
        "skipped_unformed": "of cells",
        "cycles": "cycles",
        "lrs_median_first_s": "S",
        "hrs_median_first_s": "S",
        "window_first": "x",
        "window_last": "x",
        "cells_closed_last": "of cells",
    }

    def validate(self) -> None:
        p = self.p
        if p.cycles < 1 or not 1 <= p.read_every <= p.cycles:
            raise ValueError(
                f"endurance needs cycles >= 1 and 1 <= read_every <= cycles (got {p.cycles}, {p.read_every})"
            )

    def tables(self) -> dict[str, Table]:
        n = self.region.n_cells
        return {
            **self.check_tables(),
            "endurance": Table(
                {
                    "cycle": ("i8", ()),
                    "t": ("f8", ()),
                    "lrs": ("f8", (n,)),
                    "hrs": ("f8", (n,)),
                    "lrs_code": ("u2", (n,)),
                    "hrs_code": ("u2", (n,)),
                },
                "one record per read point: conductance (S) after SET (lrs) and after RESET (hrs) of every cell, row-major",
            ),
        }

    def total_units(self) -> int:
        return self.p.cycles // self.p.read_every

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        if not self.formed.any():
            return  # every cell left out: nothing to cycle
        n = self.region.n_cells
        bar.set(w.count("endurance"))
        # The cycles the cells already got: those of the last record plus any the run file's pulse ledger booked
        # after it (a stream cut by a reset or a kill ran ahead of its last read point; a complete one ran a tail).
        offset = self.cycles_applied(w.count("endurance"), self._last_cycle(w), self.ledger.rows())
        remaining = p.cycles - offset
        if remaining < 1:
            return
        read_every = min(p.read_every, remaining)  # a stream cut short is finished with one last read point
        tail = remaining % read_every
        reg = self.region
        per_record = Counts(set=read_every * n, reset=read_every * n, reads=2 * n)
        with self.ledger.stream("endurance", per_record, Counts(set=tail * n, reset=tail * n)):
            for chunk in self.board.endurance(
                reg.row0,
                reg.col0,
                reg.nrows,
                reg.ncols,
                remaining,
                read_every,
                p.set_v,
                p.set_width_ns,
                p.set_gate,
                p.reset_v,
                p.reset_width_ns,
                p.reset_gate,
                p.v_read,
                p.cells_per_event,
            ):
                w.append(
                    "endurance",
                    cycle=offset + chunk.cycle,
                    t=chunk.timestamp_s,
                    lrs=chunk.lrs_s,
                    hrs=chunk.hrs_s,
                    lrs_code=chunk.lrs_codes,
                    hrs_code=chunk.hrs_codes,
                )
                bar.advance()

    def _last_cycle(self, w: RunWriter) -> int:
        k = w.count("endurance")
        return int(w.read_record("endurance", k - 1)["cycle"]) if k else 0

    def cycles_applied(self, records: int, last_cycle: int, ledger: np.ndarray | None) -> int:
        """Cycles every cell of the region got: the last record's cycle and the ledger's gaps after it."""
        return last_cycle + unrecorded(ledger, "endurance", after=records).set // self.region.n_cells

    def summary(self, data: dict) -> dict:
        d = data["endurance"]
        use = self.summary_check(data).formed
        out: dict = {
            "cells": self.region.n_cells,
            "skipped_unformed": self.skipped(data),
            "read_points": int(len(d)),
        }
        if not len(d) or not use.any():
            return out
        lrs, hrs = d["lrs"][:, use], d["hrs"][:, use]
        floor = 1e-8  # reads of an open or HRS cell scatter around 0 S: the window is floored there
        window = np.median(np.maximum(lrs, floor) / np.maximum(hrs, floor), axis=1)
        out.update(
            cycles=self.cycles_applied(len(d), int(d["cycle"][-1]), data.get(LEDGER_TABLE)),
            lrs_median_first_s=stats.median(lrs[0]),
            hrs_median_first_s=stats.median(hrs[0]),
            window_first=float(window[0]),
            window_last=float(window[-1]),
            cells_closed_last=int(np.sum(lrs[-1] < 2 * np.maximum(hrs[-1], floor))),
        )
        return out
