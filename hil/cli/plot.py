"""`rram plot RUN.h5 ...`: PNG figures of characterization run files."""

from __future__ import annotations

from pathlib import Path

import click

from firmware_protocol.fileformat import json_text
from hil.characterize.runfile import RunFileError, read_run
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError, expected_error

expected_error(RunFileError)


@COMMANDS.register("plot")
@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "-o",
    "outdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="folder for the PNG files (created if missing) [default: each run file's folder]",
)
@click.option("--json", "as_json", is_flag=True, help="print the written paths as a JSON list")
def plot(runs: tuple[Path, ...], outdir: Path | None, as_json: bool) -> None:
    """Plot run files from `rram characterize` (forming, I-V, endurance, retention, levels, read noise)."""
    from hil.figures.runs import check_plottable, plot_run  # matplotlib only when plotting

    try:
        loaded = [read_run(p) for p in runs]  # every file checked before any figure is written
        for run in loaded:
            check_plottable(run)
        if outdir is not None:
            outdir.mkdir(parents=True, exist_ok=True)
        written = [str(path) for run in loaded for path in plot_run(run, outdir)]
    except (RunFileError, FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json_text(written))
    else:
        for path in written:
            click.echo(path)
