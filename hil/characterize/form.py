"""Ramped forming of every cell in a region, with a formed/failed report."""

from __future__ import annotations

from dataclasses import dataclass

from firmware_protocol.progress import Progress
from hil.characterize import stats
from hil.characterize.procedure import PROCEDURES, Procedure, ProcedureParams, param
from hil.characterize.runfile import RunWriter, Table


@dataclass
class FormParams(ProcedureParams):
    v_start: float = param(
        2.0,
        unit="V",
        help="first forming pulse voltage",
        min=0,
        min_open=True,
        limit="form_v",
        label="FORM start voltage",
    )
    v_stop: float = param(
        4.5,
        unit="V",
        help="last forming pulse voltage (a cell not formed by then has failed)",
        min=0,
        min_open=True,
        limit="form_v",
        label="FORM stop voltage",
    )
    v_step: float = param(0.1, unit="V", help="forming ramp step per pulse", min=0, min_open=True)
    width_ns: int = param(1000, unit="ns", help="forming pulse width", min=1, limit="width")
    v_gate: float = param(
        1.0,
        unit="V",
        help="NMOS gate voltage while forming: sets the compliance (~20 uA at 1 V)",
        min=0,
        limit="gate_v",
        label="gate voltage",
    )
    g_formed: float = param(
        5e-6, unit="S", help="read conductance that counts as formed (ends the cell's ramp)", min=0, min_open=True
    )


@PROCEDURES.register("form")
class Form(Procedure[FormParams]):
    name = "form"
    Params = FormParams
    summary_units = {
        "formed": "of cells",
        "failed": "of cells",
        "conducting_before_forming": "of cells",
        "v_form_median_v": "V",
        "g_after_median_s": "S",
        "failed_cells": "cells",
    }

    def validate(self) -> None:
        p = self.p
        if p.v_start > p.v_stop:
            raise ValueError(f"form needs --v-start <= --v-stop (got {p.v_start}, {p.v_stop})")

    def tables(self) -> dict[str, Table]:
        return {
            "form": Table(
                {
                    "cell": ("i4", (2,)),
                    "formed": ("u1", ()),
                    "pulses": ("i4", ()),
                    "v_form": ("f4", ()),
                    "g_after": ("f8", ()),
                    "t": ("f8", ()),
                },
                "one record per cell: last forming voltage (V), read conductance after (S), board time (s)",
            ),
        }

    def total_units(self) -> int:
        return self.region.n_cells

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        rows, cols = self.region.cells()
        done = w.count("form")
        bar.set(done)
        for r, c in zip(rows[done:], cols[done:]):
            o = self.board.form(
                int(r), int(c), p.v_start, p.v_stop, p.v_step, p.width_ns, p.v_gate, p.v_read, p.g_formed
            )
            w.append(
                "form",
                cell=[r, c],
                formed=o.formed,
                pulses=o.pulses,
                v_form=o.v_final,
                g_after=o.conductance_s,
                t=o.timestamp_s,
            )
            bar.advance()

    def summary(self, data: dict) -> dict:
        d = data["form"]
        formed = d["formed"].astype(bool)
        pulsed = formed & (d["pulses"] > 0)  # cells conducting before any pulse (shorts) have no forming voltage
        return {
            "cells": int(formed.size),
            "formed": int(formed.sum()),
            "failed": int((~formed).sum()),
            "conducting_before_forming": int((formed & (d["pulses"] == 0)).sum()),
            "v_form_median_v": stats.median(d["v_form"][pulsed]),
            "g_after_median_s": stats.median(d["g_after"][formed]),
            "failed_cells": d["cell"][~formed].tolist()[:50],
        }
