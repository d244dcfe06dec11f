"""`rram characterize PROCEDURE`: one subcommand per procedure, options generated from its parameters."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from firmware_protocol import BoardError, LimitError, VersionError
from firmware_protocol.fileformat import json_text
from hil.characterize import PROCEDURES
from hil.characterize.procedure import ParamSpec, Procedure, ProcedureParams, option_name, param_spec, run_procedure
from hil.characterize.runfile import RunFileError
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError, expected_error
from hil.cli.report import summary_lines
from hil.cli.stopping import STOP, stop_on_signals
from hil.hardware.board import Board, BoardResetError, BoardTimeoutError
from hil.hardware.transport import DEFAULT_PORT, BoardConnectionError

FC = TypeVar("FC", bound=Callable[..., Any])
COMMON_UNITS = {"board_resets": ""}  # summary keys every procedure has (run_procedure adds them)
expected_error(
    BoardConnectionError, BoardTimeoutError, VersionError, LimitError, RunFileError, BoardError, BoardResetError
)


class _DeclaredRange(click.ParamType):
    """A number option's type that refuses a value outside the parameter's declared range in one line (before
    the board is opened), with the same message a procedure gives."""

    spec: ParamSpec
    what = "a number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        option = param.opts[0] if param is not None and param.opts else "value"
        procedure = ctx.command.name if ctx is not None and ctx.command.name else "this command"
        try:
            number = super().convert(value, param, ctx)
        except click.BadParameter:
            outside = _as_number(value)
            if outside is None or self.spec.contains(outside):  # not a number (of this kind) at all
                raise UserError(f"Invalid value for '{option}': {value!r} is not {self.what}") from None
            number = outside
        if not self.spec.contains(number):  # out of range, or NaN (which compares false with any bound)
            raise UserError(self.spec.refusal(procedure, option, value))
        return number

    def _describe_range(self) -> str:  # click's range hint for --help: ours is in the help text ("... [V] (> 0)")
        return ""


class _DeclaredFloat(_DeclaredRange, click.FloatRange):
    name = "float"

    def __init__(self, spec: ParamSpec) -> None:
        super().__init__(spec.min, spec.max, min_open=spec.min_open, max_open=spec.max_open)
        self.spec = spec


class _DeclaredInt(_DeclaredRange, click.IntRange):
    name, what = "integer", "an integer"

    def __init__(self, spec: ParamSpec) -> None:
        low = None if spec.min is None else int(spec.min)
        high = None if spec.max is None else int(spec.max)
        super().__init__(low, high, min_open=spec.min_open, max_open=spec.max_open)
        self.spec = spec


def _as_number(value: object) -> float | None:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None


def param_option(f: dataclasses.Field) -> tuple[list[str], dict[str, Any]]:
    """Declarations and settings of the click option for a Params field, from its ParamSpec."""
    spec = param_spec(f)
    name = option_name(f.name)
    kind = {"bool": bool, "int": int, "float": float, "str": str}.get(str(f.type), type(f.default))
    settings: dict[str, Any] = {"default": f.default, "show_default": True, "help": spec.help_text()}
    if kind is bool:
        return [f"{name}/--no-{name[2:]}", f.name], settings
    if kind is float and spec.bounded:
        settings["type"] = _DeclaredFloat(spec)
    elif kind is int and spec.bounded:
        settings["type"] = _DeclaredInt(spec)
    else:
        settings["type"] = kind
    return [name, f.name], settings


def params_option(params: type[ProcedureParams], field_name: str) -> Callable[[FC], FC]:
    """`@click.option` for one field of a Params class (for commands that take a few of them, like `rram program`)."""
    f = next(f for f in dataclasses.fields(params) if f.name == field_name)
    decls, settings = param_option(f)
    return click.option(*decls, **settings)


def execute(
    proc_cls: type[Procedure[Any]],
    port: str,
    out: Path,
    force: bool,
    resume: bool,
    as_json: bool,
    quiet: bool,
    calibration: Path | None,
    params: dict,
    flush_s: float = 2.0,
) -> dict:
    """Open the board, run the procedure into `out`, print a summary; returns the summary."""
    if resume and force:
        raise UserError("--resume and --force exclude each other")
    if out.exists() and not (force or resume):
        raise UserError(f"{out} already exists (use --force to overwrite or --resume to continue it)")
    cal = None
    if calibration is not None:
        from hil.hardware.readpath import ReadPathCalibration

        cal = ReadPathCalibration.load(calibration)
    p = proc_cls.Params(**params)
    with Board.open(port, calibration=cal) as board:
        proc = proc_cls(p, board)
        try:
            outcome = run_procedure(
                proc,
                out,
                force=force,
                resume=resume,
                quiet=quiet,
                flush_s=flush_s,
                calibration=cal.to_dict() if cal else None,
                stop=STOP.is_set,
            )
        except KeyboardInterrupt:
            raise UserError(f"interrupted: data up to the last flush are in {out}; continue with --resume") from None
        except (BoardConnectionError, BoardTimeoutError) as exc:
            raise UserError(f"{exc}; data up to the last flush are in {out}; continue with --resume") from None
    summary = {"procedure": proc_cls.name, "out": str(out), **outcome.summary}
    if as_json:
        click.echo(json_text(summary))
    else:
        click.echo(f"{proc_cls.name}: wrote {out}")
        for line in summary_lines(outcome.summary, {**COMMON_UNITS, **proc_cls.summary_units}):
            click.echo(line)
    return summary


def _make_command(name: str, proc_cls: type[Procedure[Any]]) -> click.Command:
    def callback(
        port: str,
        out: Path,
        force: bool,
        resume: bool,
        as_json: bool,
        quiet: bool,
        calibration: Path | None,
        flush_s: float,
        **params: object,
    ) -> None:
        stop_on_signals()
        execute(proc_cls, port, out, force, resume, as_json, quiet, calibration, params, flush_s)

    doc = (sys.modules[proc_cls.__module__].__doc__ or name).strip().splitlines()[0]
    cmd = click.Command(name, callback=callback, help=doc)
    options: list[click.Parameter] = [
        click.Option(
            ["--port"],
            default=DEFAULT_PORT,
            show_default=True,
            help="board URL: /dev/ttyUSB0, COM3, socket://h:p, sim://?seed=1",
        ),
        click.Option(
            ["--out", "-o", "out"],
            type=click.Path(path_type=Path, dir_okay=False),
            required=True,
            help="run file (HDF5)",
        ),
        click.Option(["--force"], is_flag=True, help="overwrite an existing run file"),
        click.Option(["--resume"], is_flag=True, help="continue an interrupted run file"),
        click.Option(["--json", "as_json"], is_flag=True, help="print the summary as JSON"),
        click.Option(
            ["--quiet", "-q"],
            is_flag=True,
            help="no progress: neither the bar (on a terminal) nor the plain progress lines (elsewhere)",
        ),
        click.Option(
            ["--flush-s", "flush_s"],
            type=click.FloatRange(min=0.0),
            default=2.0,
            show_default=True,
            help="longest time (s) recorded data may wait before reaching the disk",
        ),
        click.Option(
            ["--calibration"],
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="read-path calibration from `rram board calibrate`",
        ),
    ]
    for f in dataclasses.fields(proc_cls.Params):
        decls, settings = param_option(f)
        options.append(click.Option(decls, **settings))
    cmd.params = options
    return cmd


@COMMANDS.register("characterize")
@click.group()
def characterize() -> None:
    """Characterize a chip: forming, I-V, endurance, retention, multi-level statistics, read noise."""


for _name, _cls in PROCEDURES.items():
    if _cls.characterization:
        characterize.add_command(_make_command(_name, _cls))
