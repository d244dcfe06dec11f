"""`rram reread`: read a deployed chip again at a later age (1 h, 1 day, 1 year), for `rram evaluate --deployed`."""

from __future__ import annotations

from pathlib import Path

import click

from hil.cli.characterize import execute, params_option
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError
from hil.deploy.reread import RereadParams, RereadRun, parse_age
from hil.hardware.transport import DEFAULT_PORT


@COMMANDS.register("reread")
@click.command()
@click.argument("deploy_run", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="board URL (the chip that was deployed)")
@click.option("--at", "age", default="1d", show_default=True, help="age: time after programming (s, min, h, d, y)")
@params_option(RereadParams, "reads")
@click.option(
    "--out", "-o", "out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="reread run file"
)
@click.option("--force", is_flag=True, help="overwrite existing output")
@click.option("--resume", is_flag=True, help="continue an interrupted reread")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def reread(
    deploy_run: Path, port: str, age: str, reads: int, out: Path, force: bool, resume: bool, as_json: bool, quiet: bool
) -> None:
    """Read the cells DEPLOY_RUN programmed again, --at after its programming ended (--reads times in a row).

    A simulator's clock jumps there; a real board waits. Judge the network at that age with
    `rram evaluate --deployed DEPLOY_RUN --reread OUT`.
    """
    try:
        at = parse_age(age)
    except ValueError as exc:
        raise UserError(f"--at {exc}") from None
    params = {"deploy": str(deploy_run.resolve()), "at": at, "reads": reads}
    execute(RereadRun, port, out, force, resume, as_json, quiet, None, params)
