"""The command registry: the `rram` group is built from it, and its decorator keeps a group a group."""

from __future__ import annotations

import click
import pytest

from hil.cli import cli
from hil.cli.commands import COMMANDS, CommandRegistry


def test_the_rram_group_is_the_registry() -> None:
    assert sorted(cli.commands) == COMMANDS.names()
    assert {
        "board",
        "characterize",
        "demo",
        "evaluate",
        "fit",
        "plot",
        "profile",
        "program",
        "sim",
        "swim",
        "train",
    } <= set(COMMANDS.names())
    for name, command in COMMANDS.items():
        assert cli.commands[name] is command


def test_register_keeps_the_decorated_object_and_refuses_a_second_one() -> None:
    reg = CommandRegistry("command")

    @reg.register("tools")
    @click.group("tools")
    def tools() -> None:
        """Tools."""

    @tools.command("hello")  # still a click.Group after registering
    def hello() -> None:
        """Hello."""

    assert reg.get("tools") is tools and isinstance(tools, click.Group) and "hello" in tools.commands
    reg.add("tools", tools)  # the same object again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("tools", click.Command("tools"))
    with pytest.raises(ValueError, match="unknown command 'nope'"):
        reg.get("nope")
