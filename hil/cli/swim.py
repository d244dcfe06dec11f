"""`rram swim`: plan selective write-verify (SWIM) with the chip's noise profile."""

from __future__ import annotations

from pathlib import Path

import click

from firmware_protocol.fileformat import json_text
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError
from hil.cli.train import factory_option


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r}: give comma-separated numbers") from None
    if not vals:
        raise UserError(f"--{what} is empty")
    return vals


@COMMANDS.register("swim")
@click.group()
def swim() -> None:
    """Selective write-verify: rank weights by the loss their programming error costs."""


@swim.command("curve")
@click.argument("model_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--profile",
    "profile_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="noise profile (.h5)",
)
@click.option(
    "--fractions", default="0,0.01,0.02,0.05,0.1,0.2,0.5,1", show_default=True, help="fractions of weights verified"
)
@click.option("--methods", default="swim,magnitude,random,gradient", show_default=True)
@click.option("--granularity", type=click.Choice(["weight", "row", "column"]), default="weight", show_default=True)
@click.option(
    "--mc",
    "mc",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Monte Carlo draws per point (the 1% KPP's two-sided 95% interval needs >= 368)",
)
@click.option("--t-s", "t_s", default=0.0, show_default=True, help="seconds after programming (relaxation)")
@click.option("--noise-scale", default=1.0, show_default=True, help="scale the chip's errors (stress study)")
@click.option("--sens-samples", default=2000, show_default=True, help="training samples for the sensitivity pass")
@click.option(
    "--reverify",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="re-verify rounds of the deployment (rram program --reverify), priced in the write cycles; 0: none",
)
@click.option("--settle", default=1.0, show_default=True, help="seconds between write-verify and each re-verify check")
@click.option("--seed", default=0, show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="PNG of the curve")
@click.option("--json", "as_json", is_flag=True)
@factory_option
def curve(
    model_file: Path,
    profile_path: Path,
    fractions: str,
    methods: str,
    granularity: str,
    mc: int,
    t_s: float,
    noise_scale: float,
    sens_samples: int,
    reverify: int,
    settle: float,
    seed: int,
    out: Path | None,
    as_json: bool,
    factory: str | None,
) -> None:
    """Accuracy (mean, 1% KPP with its 95% interval) and write cycles versus fraction verified, for SWIM and baselines.

    The weights are mapped as the model file records (analog pairs, or bit-sliced on the profile's devices).
    The write cycles count the touch-ups that `rram program --reverify N --settle S` is expected to give the
    verified devices, as `rram program`'s plan does.

    Time budget: the defaults (32 points, 1000 draws each) finish within 2 minutes on 2 CPU cores for the
    demo model (`rram demo`'s MLP on its profile); points with the same verify mask (every method at 0 and 1)
    share one Monte Carlo run, so the cost is about 26 runs of --mc draws. Progress: a bar with ETA on a
    terminal, one line per stage on stderr otherwise (never on stdout, which --json keeps to itself).
    """
    from calibration.profile import load_profile
    from firmware_protocol.progress import Progress
    from hil.deploy.swim_report import curve_table
    from hil.figures.swim import plot_curve
    from models.checkpoint import load_model, model_mapping
    from models.data.datasets import load_dataset
    from models.noise.factory import MappingChoice, mapping_for_model
    from models.swim.planning import METHODS, MissingPulses, Reverify, SwimPlanner

    fr = _floats(fractions, "fractions")
    if any(not 0 <= f <= 1 for f in fr):
        raise UserError("--fractions must lie in [0, 1]")
    meths = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in meths if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    try:
        touchup = Reverify(reverify, settle)
    except ValueError as exc:
        raise UserError(f"--reverify/--settle: {exc}") from None
    model, ckpt = load_model(model_file, factory=factory)
    profile = load_profile(profile_path)
    recorded = model_mapping(ckpt) or MappingChoice("analog")  # not trained on a profile: deployed as analog pairs
    choice = mapping_for_model(recorded, profile, model_name=str(model_file), profile_name=str(profile_path))
    ds = load_dataset(ckpt["data"]["name"], ckpt["data"].get("root"))
    quiet = as_json
    with Progress(None, "swim curve", "stages", enabled=not quiet, final_line=False) as stages:
        try:
            planner = SwimPlanner(
                model,
                profile,
                ds.x_test,
                ds.y_test,
                mapping=choice.name,
                bits=choice.bits or 8,
                t_s=t_s,
                granularity=granularity,
                mc_draws=mc,
                seed=seed,
                noise_scale=noise_scale,
                reverify=touchup,
            )
        except MissingPulses as exc:
            raise UserError(f"{profile_path}: {exc}") from None
        stages.stage(f"{choice.describe(int(profile.bits_per_device))}; sensitivity over {sens_samples} samples")
        planner.sensitivity([(ds.x_train, ds.y_train)], max_samples=sens_samples)
    points = []
    with Progress(len(fr) * len(meths), "swim curve", "points", enabled=not quiet) as bar:
        for m in meths:
            bar.stage(f"{m}: {len(fr)} fractions x {mc} draws")
            points += planner.curve(fr, [m], progress=bar.advance)
    if out is not None:
        plot_curve(points, out, f"{model_file.name} on {profile_path.name}")
    if as_json:
        click.echo(json_text({"points": [p.to_dict() for p in points], "figure": str(out) if out else None}))
        return
    click.echo(curve_table(points))
    if out is not None:
        click.echo(f"figure: {out}")
