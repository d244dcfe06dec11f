"""The `rram` command line: one click group, each command group in its own module."""
from __future__ import annotations

import importlib

import click

from hil.cli.errors import run_cli

# Each entry is "module:attribute" of a click command or group; a module adds itself here
# when it has something real behind it (no stubs).
_COMMANDS: list[str] = [
    "hil.cli.characterize:characterize",
    "hil.cli.demo:demo",
    "hil.cli.fit:fit",
    "hil.cli.swim:swim",
    "hil.cli.program:program",
    "hil.cli.train:train",
    "hil.cli.evaluate:evaluate",
    "hil.cli.profile:profile",
    "hil.cli.sim:sim",
    "hil.cli.board:board",
    "hil.cli.plot:plot",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rram-hil", prog_name="rram")
def cli() -> None:
    """rram-hil: characterize RRAM chips, fit noise profiles, train robust networks, deploy them."""


def _register() -> None:
    for spec in _COMMANDS:
        module_name, attr = spec.split(":")
        cli.add_command(getattr(importlib.import_module(module_name), attr))


_register()


def main() -> None:
    """Console-script entry point: turns expected errors into one-line messages."""
    run_cli(cli)
