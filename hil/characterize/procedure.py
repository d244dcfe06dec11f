"""The procedure framework: parameters, run-file columns, resumable execution, progress and summary."""
from __future__ import annotations

import abc
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from hil.hardware.board import Board, BoardResetError, _mv
from hil.characterize.region import Region, parse_region
from hil.characterize.runfile import RunWriter, Table, create_run, read_run, resume_run

log = logging.getLogger(__name__)
PROCEDURES: dict[str, type["Procedure"]] = {}
MAX_RESETS = 3


@dataclass
class ProcedureParams:
    """Parameters common to every procedure (subclasses add their own fields)."""

    cells: str = "0:8,0:8"
    v_read: float = 0.1


class Procedure(abc.ABC):
    """One characterization procedure. `run` must be resumable from what the run file already holds."""

    name: ClassVar[str]
    Params: ClassVar[type[ProcedureParams]]
    state_keys: ClassVar[tuple[str, ...]] = ()
    characterization: ClassVar[bool] = True  # listed under `rram characterize` (deployment is not)

    def __init__(self, params: ProcedureParams, board: Board):
        self.p = params
        self.board = board
        self.region: Region = parse_region(params.cells, board.rows, board.cols)
        self.check_voltage("read voltage", params.v_read, "read_v")
        self.validate()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "name", None):
            PROCEDURES[cls.name] = cls

    def validate(self) -> None:
        """Refuse impossible parameters with a one-line ValueError (before any pulse)."""

    def check_voltage(self, what: str, volts: float, limit: str) -> None:
        """LimitError now, before a run file exists or a byte is sent, for a voltage outside the board's range."""
        lim = self.board.limits
        lim.check_voltage(what, _mv(volts, what), getattr(lim, limit))

    def check_pulse(self, width_ns: int, v_gate: float) -> None:
        """LimitError now for a pulse width or gate voltage the board refuses."""
        self.board.limits.check_width(int(width_ns))
        self.board.limits.check_gate(_mv(v_gate, "gate voltage"))

    @abc.abstractmethod
    def tables(self) -> dict[str, Table]:
        """Every dataset this procedure writes (declared up front for crash safety)."""

    @abc.abstractmethod
    def run(self, w: RunWriter, bar: "Progress") -> None:
        """Do the work not yet recorded in `w`; append results as they come."""

    @abc.abstractmethod
    def summary(self, data: dict) -> dict:
        """Short numbers for the end-of-run report, from the finished data."""

    def total_units(self) -> int:
        """Units of work for the progress bar."""
        return 1


class Progress:
    """Progress bar with rate and ETA (tqdm on stderr), silent in quiet mode."""

    def __init__(self, total: int, desc: str, quiet: bool, unit: str = "op"):
        # disable=None: no bar when stderr is not a terminal (logs, CI), so output lines stay clean
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=True if quiet else None, dynamic_ncols=True, leave=False)

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def set(self, n: int) -> None:
        self._bar.n = n
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def get_procedure(name: str) -> type[Procedure]:
    try:
        return PROCEDURES[name]
    except KeyError:
        raise ValueError(f"unknown procedure {name!r} (known: {', '.join(sorted(PROCEDURES))})") from None


def params_dict(p: ProcedureParams) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(p).items()}


@dataclass
class RunOutcome:
    path: Path
    summary: dict
    resets: int


def run_procedure(proc: Procedure, out: str | Path, *, force: bool = False, resume: bool = False,
                  calibration: dict | None = None, quiet: bool = False, flush_s: float = 2.0) -> RunOutcome:  # fmt: skip
    """Create (or resume) the run file and execute the procedure into it, surviving board resets."""
    params = params_dict(proc.p)
    if resume:
        run = resume_run(out, proc.name, params, flush_s=flush_s)
    else:
        run = create_run(out, proc.name, params, proc.board.describe(), proc.tables(), list(proc.state_keys),
                         calibration=calibration, force=force, flush_s=flush_s)  # fmt: skip
    resets = 0
    bar = Progress(proc.total_units(), proc.name, quiet)
    try:
        with run as w:
            while True:
                try:
                    proc.run(w, bar)
                    break
                except BoardResetError as exc:
                    resets += 1
                    log.warning("%s; re-reading state and continuing (%d/%d)", exc, resets, MAX_RESETS)
                    if resets > MAX_RESETS:
                        raise
                    w.flush()
    finally:
        bar.close()
    data = read_run(out).data
    summary = proc.summary(data)
    summary["board_resets"] = resets
    run.complete(summary)
    return RunOutcome(Path(out), summary, resets)
