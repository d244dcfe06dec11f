"""`rram program`: deploy a trained network onto the chip with selective write-verify, then read it back."""
from __future__ import annotations

from pathlib import Path

import click

from hil.cli.characterize import execute
from hil.cli.errors import UserError, expected_error
from hil.deploy_plan import PlanError
from hil.transport import DEFAULT_PORT

expected_error(PlanError)


def make_plan(model_file: Path, profile_file: Path, fraction: float, method: str, granularity: str, rows: int,
              cols: int, read_delay: float, sens_samples: int = 2000, seed: int = 0):  # fmt: skip
    """SWIM (or baseline) verify marks for `fraction` of the weights, mapped and tiled for a rows x cols array."""
    from calibration.profile import load_profile
    from hil.deploy_plan import build_plan, file_sha256
    from models.checkpoint import load_model
    from models.data.datasets import load_dataset
    from models.swim.planning import SwimPlanner

    model, ckpt = load_model(model_file)
    ds = load_dataset(ckpt["data"]["name"], ckpt["data"].get("root"))
    profile = load_profile(profile_file)
    planner = SwimPlanner(model, profile, ds.x_test, ds.y_test, t_s=read_delay, granularity=granularity, seed=seed)
    if method in ("swim", "gradient"):
        planner.sensitivity([(ds.x_train, ds.y_train)], max_samples=sens_samples)
    mask = planner.mask(method, fraction)
    cycles, norm = planner.cycles(mask)
    meta = {"model_file": str(model_file.resolve()), "model_sha256": file_sha256(model_file),
            "profile_file": str(profile_file.resolve()), "method": method, "fraction": fraction,
            "granularity": granularity, "planned_cycles": cycles, "planned_cycles_norm": norm}  # fmt: skip
    return build_plan(model, float(profile.g_min), float(profile.g_max), mask, rows, cols, meta)


@click.command()
@click.argument("model_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="board URL")
@click.option("--profile", "profile_file", type=click.Path(path_type=Path, dir_okay=False), help="the chip's noise profile (needed unless --resume)")
@click.option("--swim", "fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="fraction of weights to write-verify")
@click.option("--method", type=click.Choice(["swim", "magnitude", "random", "gradient"]), default="swim", show_default=True)
@click.option("--granularity", type=click.Choice(["weight", "row", "column"]), default="weight", show_default=True)
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="deployment run file")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path, dir_okay=False), default=None, help="plan file [default: OUT with .plan.h5]")
@click.option("--tol", default=0.8e-6, show_default=True, help="write-verify tolerance (S)")
@click.option("--max-pulses", default=100, show_default=True)
@click.option("--read-delay", default=1.0, show_default=True, help="seconds between programming a tile and reading it back")
@click.option("--force", is_flag=True, help="overwrite existing output and plan")
@click.option("--resume", is_flag=True, help="continue an interrupted deployment (same plan)")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def program(model_file: Path, port: str, profile_file: Path | None, fraction: float, method: str, granularity: str,
            out: Path, plan_path: Path | None, tol: float, max_pulses: int, read_delay: float, force: bool,
            resume: bool, as_json: bool, quiet: bool) -> None:  # fmt: skip
    """Program MODEL_FILE onto the array: one-shot pulses, WRITE_VERIFY for the SWIM-selected weights, read-back."""
    from hil.board import Board
    from hil.deploy_plan import save_plan
    from hil.procedures.program import Program

    plan_path = plan_path or out.with_name(out.stem + ".plan.h5")
    if not resume:
        if profile_file is None:
            raise UserError("--profile is required to plan a deployment")
        if out.exists() and not force:
            raise UserError(f"{out} already exists (use --force to overwrite or --resume to continue it)")
        if plan_path.exists() and not force:
            raise UserError(f"{plan_path} already exists (use --force to overwrite it)")
        with Board.open(port) as board:
            rows, cols = board.rows, board.cols
        plan = make_plan(model_file, profile_file, fraction, method, granularity, rows, cols, read_delay)
        save_plan(plan, plan_path, force=force)
    params = {"plan": str(plan_path.resolve()), "tol": tol, "max_pulses": max_pulses, "read_delay": read_delay}
    execute(Program, port, out, force, resume, as_json, quiet, None, params)
