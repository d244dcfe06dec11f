"""`rram fit RUN.h5 ... -o profile.h5`: fit a noise profile from characterization runs."""

from __future__ import annotations

from pathlib import Path

import click

from calibration.errors import ProfileError
from firmware_protocol.fileformat import json_text
from hil.characterize.runfile import RunFileError
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError, expected_error
from hil.cli.profile import CONDUCTANCE
from hil.cli.report import aligned

expected_error(RunFileError, ProfileError)


@COMMANDS.register("fit")
@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="profile file to write (.h5)",
)
@click.option(
    "--g-min", type=CONDUCTANCE, default=None, help="mapping window low end [default: lowest programmed level]"
)
@click.option(
    "--g-max", type=CONDUCTANCE, default=None, help="mapping window high end [default: highest programmed level]"
)
@click.option(
    "--levels",
    "n_levels",
    type=click.IntRange(2, 1 << 16),
    default=None,
    help="levels per device [default: levels programmed]",
)
@click.option(
    "--bits", "bits", type=click.IntRange(1, 16), default=None, help="bits per device [default: floor(log2(levels))]"
)
@click.option("--force", is_flag=True, help="replace an existing profile file")
@click.option("--json", "as_json", is_flag=True, help="print the fitted summary as JSON")
def fit(
    runs: tuple[Path, ...],
    output: Path,
    g_min: float | None,
    g_max: float | None,
    n_levels: int | None,
    bits: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Fit device noise models (programming, relaxation, read noise, endurance, spatial) from RUNS."""
    from calibration.profile import save_profile
    from calibration.summary import format_summary, profile_summary
    from hil.pipeline.run_datasets import fit_runs

    if output.exists() and not force:
        raise UserError(f"{output} already exists (use --force to replace it)")
    click.echo(f"fitting {len(runs)} run file(s) ...", err=True)
    profile, datasets = fit_runs(runs, g_min=g_min, g_max=g_max, n_levels=n_levels, bits_per_device=bits)
    save_profile(profile, output, overwrite=force)
    if as_json:
        click.echo(json_text({"profile": str(output), "datasets": datasets.used, **profile_summary(profile)}))
        return
    click.echo(f"wrote {output} from {len(runs)} run file(s); datasets fitted, from:")
    rows = [(0, name, ", ".join(Path(f).name for f in files), "") for name, files in datasets.used.items()]
    for line in aligned(rows):
        click.echo(line)
    click.echo(format_summary(profile))
