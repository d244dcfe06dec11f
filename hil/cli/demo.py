"""`rram demo`: the pipeline end to end on the embedded simulated board."""

from __future__ import annotations

from pathlib import Path

import click

from hil.cli.commands import COMMANDS


@COMMANDS.register("demo")
@click.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("rram-demo"),
    show_default=True,
    help="output folder for run files, figures and the summary",
)
@click.option("--seed", default=1, show_default=True, help="seed of the simulated chip")
@click.option("--quick", is_flag=True, help="smaller regions and budgets (about 35 s on 2 cores)")
@click.option("--no-plots", is_flag=True, help="skip the PNG figures")
@click.option("--force", is_flag=True, help="write into a non-empty folder not made by the demo")
def demo(out: Path, seed: int, quick: bool, no_plots: bool, force: bool) -> None:
    """Run the whole pipeline on a simulated chip: characterize, fit, train, deploy with SWIM, read back."""
    from hil.pipeline.demo import DemoConfig, run_demo  # the pipeline (and what it imports) only when it runs

    cfg = DemoConfig(out=out, seed=seed, quick=quick, plots=not no_plots)
    if quick:
        cfg.epochs, cfg.mc_draws = 8, 50
    from hil.cli.report import quantity_text

    report = run_demo(cfg, force=force, echo=click.echo, show=quantity_text)
    total = sum(t for _, t, _ in report.stages)
    click.echo(f"done in {total:.1f} s; summary in {out / 'summary.json'}")
