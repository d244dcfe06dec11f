"""`rram characterize PROCEDURE`: one subcommand per procedure, options generated from its parameters."""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
from pathlib import Path

import click

from firmware_protocol import BoardError, LimitError, VersionError
from hil.hardware.board import Board, BoardResetError, BoardTimeoutError
from hil.cli.errors import UserError, expected_error
from hil.characterize import PROCEDURES
from hil.characterize.procedure import Procedure, run_procedure
from hil.characterize.runfile import RunFileError
from hil.hardware.transport import DEFAULT_PORT, BoardConnectionError

expected_error(BoardConnectionError, BoardTimeoutError, VersionError, LimitError, RunFileError, BoardError, BoardResetError)

_HELP = {
    "cells": "cell region 'R0:R1,C0:C1' (half-open) or 'R,C'",
    "v_read": "read voltage (V)",
}


def _option_for(f: dataclasses.Field) -> click.Option:
    name = "--" + f.name.replace("_", "-")
    default = f.default
    help_text = _HELP.get(f.name, f.name.replace("_", " "))
    if f.type in ("bool", bool):
        return click.Option([f"{name}/--no-{f.name.replace('_', '-')}"], default=default, show_default=True, help=help_text)
    py_type = {"int": int, "float": float, "str": str}.get(str(f.type), type(default))
    return click.Option([name, f.name], type=py_type, default=default, show_default=True, help=help_text)


def _sigterm_as_interrupt() -> None:
    """A killed-by-TERM run flushes and closes like Ctrl-C (SIGKILL cannot be caught; SWMR covers it)."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def execute(proc_cls: type[Procedure], port: str, out: Path, force: bool, resume: bool, as_json: bool,
            quiet: bool, calibration: Path | None, params: dict, flush_s: float = 2.0) -> dict:  # fmt: skip
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
            outcome = run_procedure(proc, out, force=force, resume=resume, quiet=quiet, flush_s=flush_s,
                                    calibration=cal.to_dict() if cal else None)  # fmt: skip
        except KeyboardInterrupt:
            raise UserError(f"interrupted: data up to the last flush are in {out}; continue with --resume") from None
        except (BoardConnectionError, BoardTimeoutError) as exc:
            raise UserError(f"{exc}; data up to the last flush are in {out}; continue with --resume") from None
    summary = {"procedure": proc_cls.name, "out": str(out), **outcome.summary}
    if as_json:
        click.echo(json.dumps(summary, default=float))
    else:
        click.echo(f"{proc_cls.name}: wrote {out}")
        for k, v in outcome.summary.items():
            click.echo(f"  {k}: {v}")
    return summary


def _make_command(name: str, proc_cls: type[Procedure]) -> click.Command:
    def callback(port: str, out: Path, force: bool, resume: bool, as_json: bool, quiet: bool,
                 calibration: Path | None, flush_s: float, **params: object) -> None:  # fmt: skip
        _sigterm_as_interrupt()
        execute(proc_cls, port, out, force, resume, as_json, quiet, calibration, params, flush_s)

    doc = (sys.modules[proc_cls.__module__].__doc__ or name).strip().splitlines()[0]
    cmd = click.Command(name, callback=callback, help=doc)
    cmd.params = [
        click.Option(["--port"], default=DEFAULT_PORT, show_default=True, help="board URL: /dev/ttyUSB0, COM3, socket://h:p, sim://?seed=1"),
        click.Option(["--out", "-o", "out"], type=click.Path(path_type=Path, dir_okay=False), required=True, help="run file (HDF5)"),
        click.Option(["--force"], is_flag=True, help="overwrite an existing run file"),
        click.Option(["--resume"], is_flag=True, help="continue an interrupted run file"),
        click.Option(["--json", "as_json"], is_flag=True, help="print the summary as JSON"),
        click.Option(["--quiet", "-q"], is_flag=True, help="no progress bar"),
        click.Option(["--flush-s", "flush_s"], type=click.FloatRange(min=0.0), default=2.0, show_default=True,
                     help="longest time (s) recorded data may wait before reaching the disk"),
        click.Option(["--calibration"], type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="read-path calibration from `rram board calibrate`"),
    ] + [_option_for(f) for f in dataclasses.fields(proc_cls.Params)]  # fmt: skip
    return cmd


@click.group()
def characterize() -> None:
    """Characterize a chip: forming, I-V, endurance, retention, multi-level statistics, read noise."""


for _name, _cls in sorted(PROCEDURES.items()):
    if _cls.characterization:
        characterize.add_command(_make_command(_name, _cls))
