"""The procedure framework: declared parameters, run-file columns, resumable execution, progress and summary."""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from firmware_protocol.limits import BoardLimits
from firmware_protocol.progress import Progress
from firmware_protocol.registry import Registry
from hil.characterize.ledger import LEDGER, LEDGER_STATE, LEDGER_TABLE, Cause, PulseLedger
from hil.characterize.region import Region, parse_region
from hil.characterize.runfile import RunWriter, Table, create_run, read_run, refuse_if_written, resume_run
from hil.hardware.board import Board, BoardResetError, _mv

log = logging.getLogger(__name__)
MAX_RESETS = 3
# The BoardLimits ranges a parameter can be bound by: voltages (V) and the pulse width (ns).
VOLTAGE_LIMITS = ("set_v", "reset_v", "form_v", "read_v", "gate_v")
LIMITS = (*VOLTAGE_LIMITS, "width")


@dataclass(frozen=True)
class ParamSpec:
    """What one procedure parameter means: help, unit, declared range, and the board limit that also bounds it.

    The CLI builds each option from it (help text, range-checked type); `Procedure` checks the declared
    range and, on the connected board, the range clipped to the board's declared limit.
    """

    help: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself is outside the range
    max_open: bool = False
    limit: str | None = None  # BoardLimits range: set_v, reset_v, form_v, read_v, gate_v or width
    label: str = ""  # what board-limit messages call the value ("FORM stop voltage"); default: help

    def __post_init__(self) -> None:
        if not self.help.strip():
            raise ValueError("a procedure parameter needs a help text")
        if self.limit is not None and self.limit not in LIMITS:
            raise ValueError(f"unknown board limit {self.limit!r} (known: {', '.join(LIMITS)})")

    @property
    def what(self) -> str:
        return self.label or self.help

    @property
    def bounded(self) -> bool:
        return self.min is not None or self.max is not None

    def contains(self, value: float) -> bool:
        """Whether `value` is inside the declared range (a bounded parameter is never NaN or infinite)."""
        if not self.bounded:
            return True
        if not math.isfinite(value):
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return not (self.max is not None and (value >= self.max if self.max_open else value > self.max))

    def range_text(self, subject: str = "", *, unit: bool = True) -> str:
        """The declared range in words: '--tol > 0 S', '1 <= --max-pulses <= 65535', or '0 to 1' without a subject."""
        lo_op, hi_op = ("<" if self.min_open else "<="), ("<" if self.max_open else "<=")
        suffix = f" {self.unit}" if unit and self.unit else ""
        if self.min is not None and self.max is not None:
            if not subject and not (self.min_open or self.max_open):
                return f"{self.min:g} to {self.max:g}{suffix}"
            return f"{self.min:g} {lo_op} {subject or 'x'} {hi_op} {self.max:g}{suffix}"
        if self.min is not None:
            return f"{subject} {'>' if self.min_open else '>='} {self.min:g}{suffix}".lstrip()
        if self.max is not None:
            return f"{subject} {hi_op} {self.max:g}{suffix}".lstrip()
        return ""

    def help_text(self) -> str:
        """Option help: 'SET pulse voltage [V] (> 0)'."""
        unit = f" [{self.unit}]" if self.unit else ""
        rng = f" ({self.range_text(unit=False)})" if self.bounded else ""
        return f"{self.help}{unit}{rng}"

    def refusal(self, procedure: str, option: str, value: object) -> str:
        """The one-line message for a value outside the declared range (the same from the CLI and from code)."""
        return f"{procedure} needs {self.range_text(option)} (got {value})"

    def on_board(self, limits: BoardLimits) -> tuple[int, int]:
        """The range this parameter has on a board, in the board's units (mV or ns): the board's declared limit
        clipped to the declared range (their intersection; open ends are left to `contains`)."""
        if self.limit is None:
            raise ValueError(f"{self.what} is not bound by a board limit")
        if self.limit == "width":
            (lo, hi), per_unit = (limits.width_min_ns, limits.width_max_ns), 1
        else:
            (lo, hi), per_unit = getattr(limits, self.limit), 1000
        if self.min is not None:
            lo = max(lo, round(self.min * per_unit))
        if self.max is not None:
            hi = min(hi, round(self.max * per_unit))
        return lo, hi


_T = TypeVar("_T")


def param(
    default: _T,
    *,
    help: str,
    unit: str = "",
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    limit: str | None = None,
    label: str = "",
) -> _T:
    """A Params field with its ParamSpec: `v_stop: float = param(4.5, unit="V", help="last forming pulse", min=0)`."""
    spec = ParamSpec(help, unit, min, max, min_open, max_open, limit, label)
    return dataclasses.field(default=default, metadata={"spec": spec})


def param_spec(f: dataclasses.Field) -> ParamSpec:
    """The ParamSpec of a Params field (TypeError for a field declared without `param`)."""
    spec = f.metadata.get("spec")
    if not isinstance(spec, ParamSpec):
        raise TypeError(f"procedure parameter {f.name!r} is declared without param(...): it needs a help text")
    return spec


def param_specs(params: type[ProcedureParams] | ProcedureParams) -> dict[str, ParamSpec]:
    """Field name -> ParamSpec of a Params class, in declaration order."""
    return {f.name: param_spec(f) for f in dataclasses.fields(params)}


def option_name(field_name: str) -> str:
    """The command-line option of a parameter: v_stop -> --v-stop."""
    return "--" + field_name.replace("_", "-")


CELLS_HELP = "cell region 'R0:R1,C0:C1' (half-open) or 'R,C'"


@dataclass
class ProcedureParams:
    """Parameters common to every procedure (subclasses add their own fields, each declared with `param`)."""

    cells: str = param("0:8,0:8", help=CELLS_HELP)
    v_read: float = param(0.1, unit="V", help="read voltage", min=0, min_open=True, limit="read_v")


P = TypeVar("P", bound=ProcedureParams)


class Procedure(abc.ABC, Generic[P]):
    """One characterization procedure. `run` must be resumable from what the run file already holds.

    Register a concrete one with `@PROCEDURES.register(name)` (the same `name` as its ClassVar).
    """

    name: ClassVar[str]
    Params: ClassVar[type[ProcedureParams]]
    state_keys: ClassVar[tuple[str, ...]] = ()
    characterization: ClassVar[bool] = True  # listed under `rram characterize` (deployment is not)
    # Unit of each summary value, by key (nested groups use the keys inside them): "S" conductance, "V",
    # "s" seconds, "ns", "%" a fraction shown in percent, "x" a ratio, "cycles", "of cells" a count of the
    # summary's `cells`, "cells" a list of [row, col]; see hil/cli/report.py. Keys not listed are plain numbers.
    summary_units: ClassVar[dict[str, str]] = {}

    def __init__(self, params: P, board: Board):
        self.p: P = params
        self.board = board
        self.ledger: PulseLedger  # set by `run_procedure` once the run file is open
        self.region: Region = parse_region(params.cells, board.rows, board.cols)
        self.check_declared_ranges()
        self.check_board_limits()
        self.validate()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "Params" in cls.__dict__:
            param_specs(cls.Params)  # every parameter declared with help (and unit, range) metadata

    def validate(self) -> None:
        """Refuse impossible combinations of parameters with a one-line ValueError (before any pulse)."""

    def check_declared_ranges(self) -> None:
        """ValueError for a parameter outside its declared range (the CLI refuses these before opening the board)."""
        for name, spec in param_specs(self.p).items():
            value = getattr(self.p, name)
            if spec.bounded and not spec.contains(value):
                raise ValueError(spec.refusal(self.name, option_name(name), value))

    def board_limited(self) -> dict[str, ParamSpec]:
        """The parameters bound by a board limit in this run (a procedure drops those it does not send as such)."""
        return {name: spec for name, spec in param_specs(self.p).items() if spec.limit is not None}

    def check_board_limits(self) -> None:
        """LimitError now, before a run file exists or a byte is sent, for a parameter outside its range on the
        connected board (the board's declared limit clipped to the parameter's declared range)."""
        limits = self.board.limits
        for name, spec in self.board_limited().items():
            value = getattr(self.p, name)
            lo, hi = spec.on_board(limits)
            if spec.limit == "width":  # the board's own check, so the step grid is checked too
                dataclasses.replace(limits, width_min_ns=lo, width_max_ns=hi).check_width(int(value))
            else:
                BoardLimits.check_voltage(spec.what, _mv(value, spec.what), (lo, hi))

    def before_run(self) -> None:
        """Checks on the board before the run file exists (reads only, never a pulse); raise a one-line
        ValueError to refuse the run. Not called on a resume: `begin` sees the file then."""

    def begin(self, w: RunWriter) -> None:
        """First step inside the run file, before any pulse and before the progress bar: record what
        `before_run` found (or, on a resume, restore it from the file)."""

    @abc.abstractmethod
    def tables(self) -> dict[str, Table]:
        """Every dataset this procedure writes (declared up front for crash safety)."""

    def run_tables(self) -> dict[str, Table]:
        """What a new run file declares: the procedure's tables and the pulse ledger's."""
        return {**self.tables(), LEDGER_TABLE: LEDGER}

    def run_state_keys(self) -> list[str]:
        """What a new run file's `state` holds: the procedure's keys and the pulse ledger's."""
        return [*self.state_keys, *LEDGER_STATE]

    @abc.abstractmethod
    def run(self, w: RunWriter, bar: Progress) -> None:
        """Do the work not yet recorded in `w`; append results as they come."""

    @abc.abstractmethod
    def summary(self, data: dict) -> dict:
        """Short numbers for the end-of-run report, from the finished data."""

    def total_units(self) -> int:
        """Units of work for the progress bar."""
        return 1


PROCEDURES: Registry[type[Procedure[Any]]] = Registry("procedure")


def get_procedure(name: str) -> type[Procedure[Any]]:
    """The procedure class registered as `name`, or a one-line ValueError listing the known ones."""
    return PROCEDURES.get(name)


def params_dict(p: ProcedureParams) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(p).items()}


@dataclass
class RunOutcome:
    path: Path
    summary: dict
    resets: int


def run_procedure(
    proc: Procedure[Any],
    out: str | Path,
    *,
    force: bool = False,
    resume: bool = False,
    calibration: dict | None = None,
    quiet: bool = False,
    flush_s: float = 2.0,
    stop: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Create (or resume) the run file and execute the procedure into it, surviving board resets.

    `stop` is asked after every record: when it says True the run stops there with KeyboardInterrupt, as if
    Ctrl-C had arrived between two records (the CLI's signal handlers set it).
    """
    params = params_dict(proc.p)
    resets = 0

    def reset_survived(exc: BoardResetError) -> None:
        nonlocal resets
        resets += 1
        log.warning("%s; re-reading state and continuing (%d/%d)", exc, resets, MAX_RESETS)
        if resets > MAX_RESETS:
            raise exc

    refuse_if_written(Path(out))  # another live writer of `out`: refused before the board is read
    if resume:
        run = resume_run(
            out,
            proc.name,
            params,
            flush_s=flush_s,
            board=proc.board.describe(),
            tables=proc.run_tables(),
            state_keys=proc.run_state_keys(),
        )
    else:
        while True:
            try:
                proc.before_run()  # reads only: after a reset they are simply taken again
                break
            except BoardResetError as exc:
                reset_survived(exc)
        run = create_run(
            out,
            proc.name,
            params,
            proc.board.describe(),
            proc.run_tables(),
            proc.run_state_keys(),
            calibration=calibration,
            force=force,
            flush_s=flush_s,
        )
    bar: Progress | None = None
    try:
        with run as w:
            proc.ledger = ledger = PulseLedger(proc.board, w, w.tables())

            def after_record(table: str) -> None:
                ledger.after_append(table)
                if stop is not None and stop():
                    raise KeyboardInterrupt

            w.on_append = after_record
            cause = Cause.INTERRUPTED if resume else None
            while True:
                try:
                    if cause is None:
                        ledger.start()
                    else:
                        ledger.reconcile(cause)  # book what the interruption left without a record
                    cause = None
                    if bar is None:
                        proc.begin(w)
                        bar = Progress(proc.total_units(), proc.name, "op", enabled=not quiet, tenths=True)
                    proc.run(w, bar)
                    break
                except BoardResetError as exc:
                    reset_survived(exc)
                    w.flush()
                    cause = Cause.BOARD_RESET
    finally:
        if bar is not None:
            bar.close()
    data = read_run(out).data
    summary = proc.summary(data)
    summary["board_resets"] = resets
    run.complete(summary)
    return RunOutcome(Path(out), summary, resets)
