"""Ramped forming of every cell in a region, with a formed/failed report."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hil.characterize.procedure import Procedure, ProcedureParams, Progress
from hil.characterize.runfile import RunWriter, Table


@dataclass
class FormParams(ProcedureParams):
    v_start: float = 2.0  # V, first forming pulse
    v_stop: float = 4.5  # V, last forming pulse
    v_step: float = 0.1  # V per pulse
    width_ns: int = 1000  # forming pulse width
    v_gate: float = 1.0  # V on the NMOS gate: sets the forming compliance (~20 uA here)
    g_formed: float = 5e-6  # S, read conductance that counts as formed


class Form(Procedure):
    name = "form"
    Params = FormParams

    def validate(self) -> None:
        p = self.p
        self.check_voltage("FORM start voltage", p.v_start, "form_v")
        self.check_voltage("FORM stop voltage", p.v_stop, "form_v")
        if not (p.v_step > 0 and p.v_start <= p.v_stop):
            raise ValueError(f"form needs --v-step > 0 and --v-start <= --v-stop (got {p.v_step}, {p.v_start}, {p.v_stop})")
        self.check_pulse(p.width_ns, p.v_gate)

    def tables(self) -> dict[str, Table]:
        return {
            "form": Table({"cell": ("i4", (2,)), "formed": ("u1", ()), "pulses": ("i4", ()), "v_form": ("f4", ()),
                           "g_after": ("f8", ()), "t": ("f8", ())},
                          "one record per cell: last forming voltage (V), read conductance after (S), board time (s)"),
        }  # fmt: skip

    def total_units(self) -> int:
        return self.region.n_cells

    def run(self, w: RunWriter, bar: Progress) -> None:
        p = self.p
        rows, cols = self.region.cells()
        done = w.count("form")
        bar.set(done)
        for r, c in zip(rows[done:], cols[done:]):
            o = self.board.form(int(r), int(c), p.v_start, p.v_stop, p.v_step, p.width_ns, p.v_gate, p.v_read, p.g_formed)
            w.append("form", cell=[r, c], formed=o.formed, pulses=o.pulses, v_form=o.v_final, g_after=o.conductance_s, t=o.timestamp_s)
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
            "v_form_median": float(np.median(d["v_form"][pulsed])) if pulsed.any() else None,
            "g_after_median": float(np.median(d["g_after"][formed])) if formed.any() else None,
            "failed_cells": d["cell"][~formed].tolist()[:50],
        }
