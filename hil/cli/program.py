"""`rram program`: deploy a trained network onto the chip with selective write-verify, then read it back."""

from __future__ import annotations

from pathlib import Path

import click

from hil.cli.characterize import execute, params_option
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError, expected_error
from hil.cli.train import factory_option
from hil.deploy.defects import DefectMapError
from hil.deploy.plan import PlanError, load_plan
from hil.deploy.procedure import DeployParams, DeployRun
from hil.hardware.transport import DEFAULT_PORT

expected_error(PlanError)
expected_error(DefectMapError)


def _ages(text: str) -> tuple[float, ...]:
    """--ages '1h,1d,1y' -> seconds, sorted; a bad age is one line naming it."""
    from hil.deploy.reread import parse_age

    try:
        return tuple(sorted({parse_age(a) for a in text.split(",") if a.strip()}))
    except ValueError as exc:
        raise UserError(f"--ages: {exc}") from None


@COMMANDS.register("program")
@click.command()
@click.argument("model_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="board URL")
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="the chip's noise profile (needed unless --resume)",
)
@click.option(
    "--swim",
    "fraction",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="fraction of weights to write-verify",
)
@click.option(
    "--method",
    type=click.Choice(["swim", "magnitude", "random", "gradient"]),
    default="swim",
    show_default=True,
    help="how the weights to write-verify are chosen",
)
@click.option(
    "--granularity",
    type=click.Choice(["weight", "row", "column"]),
    default="weight",
    show_default=True,
    help="select single weights, or whole rows or columns",
)
@click.option(
    "--out", "-o", "out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="deployment run file"
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="plan file [default: OUT with .plan.h5]",
)
@click.option(
    "--defects",
    "defect_runs",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="form run (rram characterize form) or earlier deployment of this chip: its defective cells get no pulses "
    "and carry the least weight (repeatable; later runs add to earlier ones)",
)
@click.option(
    "--placement",
    type=click.Choice(["defect-aware", "naive"]),
    default="defect-aware",
    show_default=True,
    help="with --defects: lay tiles out around the defects, or keep them at (0, 0) (for comparison)",
)
@params_option(DeployParams, "tol")
@params_option(DeployParams, "max_pulses")
@params_option(DeployParams, "read_delay")
@params_option(DeployParams, "settle")
@params_option(DeployParams, "reverify")
@params_option(DeployParams, "ages")
@params_option(DeployParams, "reads")
@params_option(DeployParams, "plan_gates")
@click.option("--force", is_flag=True, help="overwrite existing output and plan")
@click.option("--resume", is_flag=True, help="continue an interrupted deployment (same plan)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars or stage lines")
@factory_option
def program(
    model_file: Path,
    port: str,
    profile_file: Path | None,
    fraction: float,
    method: str,
    granularity: str,
    out: Path,
    plan_path: Path | None,
    defect_runs: tuple[Path, ...],
    placement: str,
    tol: float,
    max_pulses: int,
    read_delay: float,
    settle: float,
    reverify: int,
    ages: str,
    reads: int,
    plan_gates: bool,
    force: bool,
    resume: bool,
    as_json: bool,
    quiet: bool,
    factory: str | None,
) -> None:
    """Program MODEL_FILE onto the array: one-shot pulses, WRITE_VERIFY for the SWIM-selected weights, read-back.

    Each weight becomes one analog conductance pair, as the model file's mapping must say (`rram train
    --mapping analog`, the automatic choice for a measured profile); write-cycle counts need the profile's
    pulses per write-verified device. With --defects (the chip's form run, or an earlier deployment of
    it) the plan holds the chip's defect map: its defective cells get no pulses, tiles are laid out so
    they carry the least weight, stuck devices' partners cancel them, and the plan reports what it avoided.
    With --reverify N (program-settle-verify) each tile waits --settle seconds after write-verify, is read,
    and its verified devices that relaxed out of --tol are write-verified again, up to N rounds; their pulses
    count in the write cycles and the plan's budget expects them.

    Time budget: `--swim 0.1` with the other defaults deploys the demo model (`rram demo`'s MLP, 1776 weights,
    2 tiles) on a simulated 64x64 chip within 90 s on 2 CPU cores (planning, forming every used cell, one-shot
    and write-verify programming, re-verify, read-back); a real board adds its own pulse and link times.
    Progress: a bar with ETA on a terminal, otherwise one line per stage on stderr (planning, forming, gate
    calibration, each tile), none with --quiet or --json.
    """
    from hil.deploy import DeploySettings, default_plan_path, plan_model, program_params
    from hil.hardware.board import Board

    plan_path = plan_path or default_plan_path(out)
    settings = DeploySettings(
        fraction,
        method,
        granularity,
        tol,
        max_pulses,
        read_delay,
        defect_aware=placement == "defect-aware",
        settle_s=settle,
        reverify=reverify,
        ages_s=_ages(ages),
        reads=reads,
        plan_gates=plan_gates,
    )
    if not resume:
        if profile_file is None:
            raise UserError("--profile is required to plan a deployment")
        if out.exists() and not force:
            raise UserError(f"{out} already exists (use --force to overwrite or --resume to continue it)")
        if plan_path.exists() and not force:
            raise UserError(f"{plan_path} already exists (use --force to overwrite it)")
        with Board.open(port) as board:
            rows, cols = board.rows, board.cols
        plan_model(
            model_file,
            profile_file,
            plan_path,
            rows,
            cols,
            settings,
            force=force,
            quiet=quiet or as_json,
            factory=factory,
            defect_runs=defect_runs,
        )
    load_plan(plan_path)  # a damaged plan is refused here, before the board is opened (validate_plan)
    execute(DeployRun, port, out, force, resume, as_json, quiet, None, program_params(plan_path, settings))
