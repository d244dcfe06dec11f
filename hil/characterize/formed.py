"""The formed check: before its first pulse, a procedure that needs formed cells reads its region and finds
the cells that are not formed (pristine, or stuck in a high-resistance state).

A pristine cell leaks like a thin dielectric (tens of nS at 0.1 V); a formed cell in its high-resistance
state reads about 2 uS after a -1.5 V RESET, rarely below 0.2 uS. `--g-formed-min` (0.2 uS) lies between.
One read cannot tell them apart on a board whose read noise is a sizeable fraction of a uS (the simulated
board: 1 % of g_max = 0.4 uS per read, plus a read-path offset of a few 10 nS), so the check averages
`--check-reads` block reads: 128 give 0.4 / sqrt(128) = 0.035 uS, which puts the threshold 5 noise sigmas
above a pristine cell. A formed cell reset unusually deep (a few per thousand on the simulated chip) can
read below it and is left out like a dead one.

Too many cells that are not formed (more than `--max-unformed` percent of the region) refuse the run in one line
that says what to do next; fewer (cells that died forming, on a formed chip) are left out, and so are any
number with `--skip-unformed`. The reads are the run's `formed_check` table, so the run file shows what was
checked, and the summary counts the cells left out (`skipped_unformed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from hil.characterize.procedure import Procedure, ProcedureParams, param
from hil.characterize.region import Region
from hil.characterize.runfile import RunWriter, Table
from hil.hardware.board import Board

CHECK_TABLE = "formed_check"
G_FORMED_MIN = 0.2e-6  # S: between a pristine cell (~10 nS) and a formed one in HRS (~2 uS)


@dataclass
class FormedCellsParams(ProcedureParams):
    """Parameters of a procedure that needs formed cells: the formed check before its first pulse."""

    g_formed_min: float = param(
        G_FORMED_MIN,
        unit="S",
        help="formed check: a cell whose mean check read is below this is not formed (pristine or stuck in HRS)",
        min=0,
        min_open=True,
    )
    check_reads: int = param(128, help="formed check: block reads of the region, averaged, before any pulse", min=1)
    max_unformed: int = param(
        10,
        unit="%",
        help="formed check: share of the region's cells that may be not formed (dead after forming) and are left "
        "out; more refuse the run",
        min=0,
        max=100,
    )
    skip_unformed: bool = param(False, help="leave out every cell that is not formed instead of refusing the run")


class NotFormedError(ValueError):
    """Too many cells of the region are not formed for the run to start (no pulse was applied)."""


def check_table(n_cells: int) -> Table:
    return Table(
        {"t": ("f8", ()), "g": ("f8", (n_cells,))},
        "formed check before the first pulse: block reads of the region at v_read (S), row-major",
    )


def read_check(board: Board, region: Region, v_read: float, reads: int) -> np.ndarray:
    """`reads` block reads of the region (records of the check table)."""
    rec = np.zeros(reads, dtype=check_table(region.n_cells).dtype)
    for k in range(reads):
        m = board.read_block(region.row0, region.col0, region.nrows, region.ncols, v_read)
        rec["t"][k], rec["g"][k] = m.timestamp_s, m.conductance_s.ravel()
    return rec


@dataclass(frozen=True)
class FormedCheck:
    """What the check found: each cell's mean read (S), whether it counts as formed, the last read's board time."""

    g: np.ndarray
    formed: np.ndarray
    t: float = 0.0

    @classmethod
    def judge(cls, records: np.ndarray, g_formed_min: float, n_cells: int) -> FormedCheck:
        """From the check reads; a run file without them (made before the check existed) counts all as formed."""
        if len(records) == 0:
            return cls(np.zeros(n_cells), np.ones(n_cells, dtype=bool))
        g = records["g"].mean(axis=0)
        return cls(g, g >= g_formed_min, float(records["t"].max()))

    @property
    def n_unformed(self) -> int:
        return int((~self.formed).sum())

    def refusal(self, region: Region, p: FormedCellsParams, procedure: str) -> str | None:
        """The one-line refusal, or None when the run may go on (leaving the not-formed cells out)."""
        n = self.n_unformed
        if n == 0 or p.skip_unformed or 100 * n <= p.max_unformed * region.n_cells:
            return None
        return (
            f"{procedure}: {n} of {region.n_cells} cells in {region} are not formed (mean read below "
            f"{p.g_formed_min * 1e6:g} µS): run `rram characterize form --cells {region}` first "
            "(or --skip-unformed to leave them out)"
        )


FP = TypeVar("FP", bound=FormedCellsParams)


class FormedCellsProcedure(Procedure[FP]):
    """A procedure that needs formed cells: the formed check runs before its first pulse.

    Subclasses declare `check_table` among their tables (`self.check_tables()`), leave out the cells
    `self.formed` marks False, and report `self.skipped(data)` in their summary.
    """

    _pending: np.ndarray | None = None
    _check: FormedCheck | None = None

    def check_tables(self) -> dict[str, Table]:
        return {CHECK_TABLE: check_table(self.region.n_cells)}

    def _judge(self, records: np.ndarray) -> FormedCheck:
        check = FormedCheck.judge(records, self.p.g_formed_min, self.region.n_cells)
        refusal = check.refusal(self.region, self.p, self.name)
        if refusal is not None:
            raise NotFormedError(refusal)
        return check

    def before_run(self) -> None:
        self._pending = read_check(self.board, self.region, self.p.v_read, self.p.check_reads)
        self._check = self._judge(self._pending)

    def begin(self, w: RunWriter) -> None:
        if w.count(CHECK_TABLE) == 0:  # a new run, or a resume of one whose check never reached the disk
            if self._pending is None:
                self._pending = read_check(self.board, self.region, self.p.v_read, self.p.check_reads)
            w.append(CHECK_TABLE, self._pending)
            w.flush()  # on disk before the first pulse: a resume leaves out the same cells
        self._check = self._judge(w.read(CHECK_TABLE))
        self._pending = None

    @property
    def check(self) -> FormedCheck:
        if self._check is None:
            raise RuntimeError(f"{self.name}: the formed check has not run (run_procedure runs it)")
        return self._check

    @property
    def formed(self) -> np.ndarray:
        """Per cell of the region (row-major): True where the cell is formed and the procedure uses it."""
        return self.check.formed

    def summary_check(self, data: dict) -> FormedCheck:
        """The check as recorded in a finished run's data."""
        records = data.get(CHECK_TABLE, np.zeros(0, dtype=check_table(self.region.n_cells).dtype))
        return FormedCheck.judge(records, self.p.g_formed_min, self.region.n_cells)

    def skipped(self, data: dict) -> int:
        """Cells the run left out as not formed."""
        return self.summary_check(data).n_unformed
