"""The `rram` command line: one click group built from the command registry (`hil.cli.commands.COMMANDS`).

Each CLI module registers its command or group with `@COMMANDS.register(name)`; this package imports
every CLI module, so the registry (and `rram --help`) is complete. Heavy libraries (torch, matplotlib,
scipy.stats, tqdm) are imported inside the commands that use them, so `rram --help` and
`rram board info` start fast.
"""

from __future__ import annotations

import click

from hil.cli import (  # noqa: F401  (registration: importing a CLI module registers its command)
    board,
    characterize,
    demo,
    evaluate,
    fit,
    plot,
    profile,
    program,
    reread,
    sim,
    swim,
    train,
)
from hil.cli.commands import COMMANDS
from hil.cli.errors import run_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rram-hil", prog_name="rram")
def cli() -> None:
    """rram-hil: characterize RRAM chips, fit noise profiles, train robust networks, deploy them."""


def _add_registered_commands(group: click.Group) -> None:
    for name, command in COMMANDS.items():
        group.add_command(command, name)


_add_registered_commands(cli)


def main() -> None:
    """Console-script entry point: turns expected errors into one-line messages."""
    run_cli(cli)
