"""Run files for tests: runs stopped part-way, as a killed `rram characterize` leaves them."""

from __future__ import annotations

from pathlib import Path

from hil.characterize import get_procedure
from hil.characterize.procedure import params_dict
from hil.characterize.runfile import create_run, read_run
from hil.hardware.board import Board


def form_run_stopped_after(board: Board, out: Path, cells: str, n: int) -> Path:
    """Write `out`: a form run over `cells` on `board` that stopped (still running) after its first `n` cells."""
    cls = get_procedure("form")
    proc = cls(cls.Params(cells=cells), board)
    rows, cols = proc.region.cells()
    with create_run(out, "form", params_dict(proc.p), board.describe(), proc.run_tables()) as w:
        for r, c in zip(rows[:n], cols[:n], strict=True):
            o = board.form(int(r), int(c))
            w.append(
                "form",
                cell=[int(r), int(c)],
                formed=o.formed,
                pulses=o.pulses,
                v_form=o.v_final,
                g_after=o.conductance_s,
                t=o.timestamp_s,
            )
    run = read_run(out)
    assert run.status == "running" and len(run.data["form"]) == n
    return out
