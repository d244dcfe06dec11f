"""The registry of top-level `rram` commands: each CLI module registers its click command or group here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from firmware_protocol.registry import Registry

C = TypeVar("C", bound=click.Command)


class CommandRegistry(Registry[click.Command]):
    """A `Registry` of click commands whose decorator keeps the decorated type (a group stays a `click.Group`)."""

    def register(self, name: str) -> Callable[[C], C]:
        def add(command: C) -> C:
            self.add(name, command)
            return command

        return add


COMMANDS = CommandRegistry("command")
