"""`rram profile`: write noise profiles by hand from paper values, show, plot and export them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from firmware_protocol.fileformat import json_text
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError

if TYPE_CHECKING:  # the profile module loads h5py; `rram --help` should not
    from calibration.profile import NoiseProfile

_DIVISOR = {"": 1.0, "m": 1e3, "u": 1e6, "µ": 1e6, "n": 1e9, "p": 1e12}


def parse_conductance(text: str) -> float:
    """'40e-6', '40u', '40uS' or '40 µS' -> siemens."""
    m = re.fullmatch(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([munpµ]?)\s*S?\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a conductance (e.g. 40e-6, 40u, 40uS)")
    return float(m.group(1)) / _DIVISOR[m.group(2)]


class _Conductance(click.ParamType):
    name = "SIEMENS"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_conductance(str(value))
        except click.BadParameter as exc:
            self.fail(str(exc.message), param, ctx)


CONDUCTANCE = _Conductance()


def _load(path: str) -> NoiseProfile:
    from calibration.profile import ProfileError, load_profile

    try:
        return load_profile(path)
    except ProfileError as exc:
        raise UserError(str(exc)) from None


@COMMANDS.register("profile")
@click.group("profile")
def profile() -> None:
    """Noise-profile files: write one from paper values, show, plot, export to aihwkit."""


@profile.command("new")
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="profile file to write (.h5)"
)
@click.option("--lognormal", type=float, metavar="S", help="log-normal W*exp(N(0,S^2)) (MTRD)")
@click.option("--additive", type=float, metavar="ETA", help="additive N(0,(ETA*g_max)^2) (MTRD)")
@click.option(
    "--sigma",
    type=float,
    metavar="SIGMA",
    help="Gaussian per-device sigma_d as a fraction of g_max (NeFT; with --g-min 0 the same as rram train --sigma)",
)
@click.option(
    "--state-dependent",
    "state_dependent",
    type=float,
    metavar="SIGMA",
    help="NeFT IV-F: end levels SIGMA, inner levels T*SIGMA (fractions of g_max)",
)
@click.option(
    "--t",
    "t_factor",
    type=float,
    default=4.0,
    show_default=True,
    help="inner-level factor for --state-dependent (RRAM2: 4)",
)
@click.option(
    "--ibm-reram", "ibm_reram", type=click.Choice(["1s", "1d"]), help="IBM HWA supplement B.2 ReRAM polynomials"
)
@click.option("--g-min", "g_min", type=CONDUCTANCE, default="1u", show_default=True, help="lowest level (S; 1u = 1 uS)")
@click.option("--g-max", "g_max", type=CONDUCTANCE, default="40u", show_default=True, help="highest level (S)")
@click.option(
    "--levels", "n_levels", type=click.IntRange(2, 1 << 16), default=4, show_default=True, help="levels per device"
)
@click.option(
    "--bits", "bits", type=click.IntRange(1, 16), default=None, help="bits per device [default: floor(log2(levels))]"
)
@click.option(
    "--read-noise", "read_noise", type=float, default=None, help="read sigma as a fraction of g_max [ibm-reram: 0.01]"
)
@click.option(
    "--stuck-lrs", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="fraction stuck at g_max"
)
@click.option(
    "--stuck-hrs", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="fraction stuck at g_min"
)
@click.option(
    "--pulses-verified",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="N",
    help="mean pulses per device under write-verify (write-cycle counts of `rram program` and `rram swim curve`)",
)
@click.option("--board-id", default="", help="provenance: board id")
@click.option("--notes", default="", help="provenance: free text")
@click.option("--force", is_flag=True, help="replace an existing file")
def new(
    output: str,
    lognormal: float | None,
    additive: float | None,
    sigma: float | None,
    state_dependent: float | None,
    t_factor: float,
    ibm_reram: str | None,
    g_min: float,
    g_max: float,
    n_levels: int,
    bits: int | None,
    read_noise: float | None,
    stuck_lrs: float,
    stuck_hrs: float,
    pulses_verified: float | None,
    board_id: str,
    notes: str,
    force: bool,
) -> None:
    """Write a hand-made profile from one paper noise family (training without a chip)."""
    from calibration.noise_terms import Provenance
    from calibration.profile import NoiseProfile, ProfileError, save_profile, software_version, utc_now

    chosen = {
        k: v
        for k, v in {
            "lognormal": lognormal,
            "additive": additive,
            "gaussian": sigma,
            "state_dependent": state_dependent,
            "ibm_reram": ibm_reram,
        }.items()
        if v is not None
    }
    if len(chosen) != 1:
        raise UserError("give exactly one of --lognormal, --additive, --sigma, --state-dependent, --ibm-reram")
    ((family, value),) = chosen.items()
    params = {
        "lognormal": {"s": value},
        "additive": {"eta": value},
        "gaussian": {"sigma": value},
        "state_dependent": {"sigma": value, "t": t_factor},
        "ibm_reram": {"time": value},
    }[family]
    prov = Provenance(
        board_id=board_id,
        created_utc=utc_now(),
        software_version=software_version(),
        notes=notes or f"hand-written {family} profile",
    )
    try:
        p = NoiseProfile.from_paper(
            family,
            g_min=g_min,
            g_max=g_max,
            n_levels=n_levels,
            bits_per_device=bits,
            read_noise=read_noise,
            stuck_lrs=stuck_lrs,
            stuck_hrs=stuck_hrs,
            pulses_verified=float("nan") if pulses_verified is None else pulses_verified,
            provenance=prov,
            **params,
        )
        path = save_profile(p, output, overwrite=force)
    except (ProfileError, FileExistsError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote {family} profile to {path}")
    if pulses_verified is None:
        click.echo(
            "note: no --pulses-verified N given, so `rram program` and `rram swim curve` cannot count write cycles"
        )


@profile.command("show")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON instead of the table")
def show(path: str, as_json: bool) -> None:
    """Print a profile's mapping, provenance and fitted models."""
    from calibration.summary import format_summary, profile_summary

    p = _load(path)
    if as_json:
        click.echo(json_text(profile_summary(p), indent=2))
    else:
        click.echo(format_summary(p))


@profile.command("plot")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="folder for the PNG files"
)
def plot(path: str, out_dir: str) -> None:
    """Write PNG figures of every model the profile holds."""
    from hil.figures.profiles import plot_profile

    p = _load(path)
    try:
        paths = plot_profile(p, out_dir)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise UserError(f"cannot write figures to {out_dir}: {exc.strerror or exc}") from None
    for f in paths:
        click.echo(str(f))


@profile.command("export-aihwkit")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="JSON file to write")
@click.option("--verified", is_flag=True, help="export the write-verify programming model instead of open-loop")
@click.option("--force", is_flag=True, help="replace an existing file")
def export_aihwkit_cmd(path: str, output: str, verified: bool, force: bool) -> None:
    """Write the profile as IBM aihwkit inference noise-model arguments (JSON, uS); list what aihwkit drops."""
    from calibration.aihwkit_export import write_aihwkit_json
    from calibration.profile import ProfileError

    p = _load(path)
    try:
        out, data = write_aihwkit_json(p, output, verified=verified, overwrite=force)
    except (ProfileError, FileExistsError, FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote aihwkit coefficients to {Path(out)} (usage: calibration/PROFILE.md, Export to IBM aihwkit)")
    for line in data["dropped"]:
        click.echo(f"dropped: {line}")
    if not data["dropped"]:
        click.echo("dropped: nothing (aihwkit carries every part of this profile)")
