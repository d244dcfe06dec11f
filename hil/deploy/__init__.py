"""Deployment: a trained network planned onto cells, programmed with selective write-verify, read back, judged.

`deploy_model` is the one entry point (used by `rram program` and `rram demo`); the rooms behind it are
`plan` (the plan file, torch-free), `placement` (network -> device targets and tiles), `defects` (the
chip's defect map from its form and deployment runs), `layout` (tiles placed around the defects),
`procedure` (the programming run on the board), `readback` (measured vs predicted accuracy) and `swim_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hil.deploy.plan import Plan


@dataclass(frozen=True)
class DeploySettings:
    """How a model is deployed: which weights are write-verified, and the write-verify and read-back knobs."""

    fraction: float = 0.1  # fraction of the weights write-verified
    method: str = "swim"  # swim | magnitude | random | gradient
    granularity: str = "weight"  # weight | row | column
    tol_s: float = 0.8e-6  # write-verify tolerance (S)
    max_pulses: int = 100
    read_delay_s: float = 1.0  # between programming a tile and reading it back
    defect_aware: bool = True  # lay tiles out around the defect map's cells (when runs supply one)
    # Program-settle-verify (hil.deploy.procedure): after write-verify, `reverify` rounds of waiting settle_s,
    # re-reading and touching up verified devices out of tolerance; the plan's write-cycle budget counts them.
    # The defaults are DeployParams' and models.swim.planning.Reverify's (tests/hil/deploy/test_reverify.py).
    settle_s: float = 1.0
    reverify: int = 2
    ages_s: tuple[float, ...] = ()  # each tile read again at these ages after its programming (before the next)
    reads: int = 1  # reads of a tile at each age
    plan_gates: bool = True  # one-shot gates from the profile's gate map (carried in the plan), not calibrated anew


def default_plan_path(out: Path) -> Path:
    """Where the plan file of deployment run OUT lives unless told otherwise."""
    return out.with_name(out.stem + ".plan.h5")


def plan_model(
    model_file: Path,
    profile_file: Path,
    plan_path: Path,
    rows: int,
    cols: int,
    settings: DeploySettings = DeploySettings(),
    *,
    force: bool = False,
    quiet: bool = False,
    factory: str | None = None,
    defect_runs: Sequence[Path] = (),
) -> Path:
    """Plan MODEL_FILE for a rows x cols array with the chip's profile and write the plan file (stages unless quiet).

    ``factory``: the model file's own "pkg.mod:factory" architecture, when it names one. ``defect_runs``:
    form and deployment runs of this chip, whose defect map the plan holds and its layout avoids.
    """
    from hil.deploy.placement import plan_deployment
    from hil.deploy.plan import save_plan
    from models.swim.planning import Reverify

    plan = plan_deployment(
        model_file,
        profile_file,
        settings.fraction,
        settings.method,
        settings.granularity,
        rows,
        cols,
        settings.read_delay_s,
        quiet=quiet,
        factory=factory,
        defect_runs=defect_runs,
        defect_aware=settings.defect_aware,
        reverify=Reverify(settings.reverify, settings.settle_s, settings.tol_s),
    )
    plan.meta.update(planned_cost(plan, profile_file, settings))
    return save_plan(plan, plan_path, force=force)


def planned_cost(plan: Plan, profile_file: Path, settings: DeploySettings) -> dict:
    """The plan's write-cycle budget for these settings: its devices' pulses, touch-ups and settle time included.

    Devices on the defect map's cells get no pulses and are not counted. `planned_touchups` is what the
    profile expects (models.swim.planning.touchups_per_device);
    `planned_settle_s` is the most the re-verify rounds can add to the board's time (every tile, every round).
    """
    import numpy as np

    from calibration.profile import load_profile
    from models.swim.planning import Reverify, write_cycles

    reverify = Reverify(settings.reverify, settings.settle_s, settings.tol_s)
    targets, verify = [], []
    for i, t in enumerate(plan.tiles):  # the devices that get pulses: those on the defect map's cells get none
        lp = plan.layers[int(t["layer"])]
        at = (slice(int(t["r0"]), int(t["r0"] + t["nr"])), slice(int(t["c0"]), int(t["c0"] + t["nc"])))
        keep = (
            np.ones(lp.targets[at].shape, bool)
            if plan.defects is None
            else ~plan.defects.defective[np.ix_(*plan.tile_cells(i))]
        )
        targets.append(lp.targets[at][keep])
        verify.append(lp.verify[at][keep])
    cost = write_cycles(load_profile(profile_file), np.concatenate(targets), np.concatenate(verify), reverify)
    return {
        "planned_cycles": cost.cycles,
        "planned_cycles_norm": cost.cycles_norm,
        "planned_touchups": cost.touchups,
        "planned_settle_s": len(plan.tiles) * reverify.rounds * reverify.settle_s,
        "reverify": {"rounds": reverify.rounds, "settle_s": reverify.settle_s, "tol_s": reverify.tol_s},
    }


def program_params(plan_path: Path, settings: DeploySettings = DeploySettings()) -> dict:
    """Parameters of the programming run (`hil.deploy.procedure.DeployRun`) for a plan file."""
    return {
        "plan": str(plan_path.resolve()),
        "tol": settings.tol_s,
        "max_pulses": settings.max_pulses,
        "read_delay": settings.read_delay_s,
        "settle": settings.settle_s,
        "reverify": settings.reverify,
        "ages": ",".join(f"{a!r}" for a in settings.ages_s),
        "reads": settings.reads,
        "plan_gates": settings.plan_gates,
    }


def deploy_model(
    model_file: Path,
    profile_file: Path,
    port: str,
    out: Path,
    settings: DeploySettings = DeploySettings(),
    *,
    plan_path: Path | None = None,
    force: bool = False,
    quiet: bool = False,
    defect_runs: Sequence[Path] = (),
) -> dict:
    """Plan, program and read back MODEL_FILE on the board at PORT; returns the programming run's summary.

    ``defect_runs``: form (and earlier deployment) runs of this chip; without any, tiles sit at (0, 0).
    """
    from hil.characterize.procedure import run_procedure
    from hil.deploy.procedure import DeployRun
    from hil.hardware.board import Board

    plan_path = plan_path or default_plan_path(out)
    with Board.open(port) as board:
        plan_model(
            model_file,
            profile_file,
            plan_path,
            board.rows,
            board.cols,
            settings,
            force=force,
            quiet=quiet,
            defect_runs=defect_runs,
        )
        proc = DeployRun(DeployRun.Params(**program_params(plan_path, settings)), board)
        return run_procedure(proc, out, force=force, quiet=quiet).summary
