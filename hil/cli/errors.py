"""One-line errors for the CLI: expected failures never show a traceback."""

from __future__ import annotations

import sys
import warnings
from typing import TextIO

import click


class UserError(click.ClickException):
    """A problem with what the user asked for (bad file, out-of-range value, unknown cell)."""


# Exception types (besides click's) that are the user's or the environment's fault, not a bug.
# Modules register theirs with `expected_error(...)` so the CLI prints them as one line.
_EXPECTED: list[type[BaseException]] = [FileNotFoundError, FileExistsError, PermissionError, ValueError]


def expected_error(*types: type[BaseException]) -> None:
    """Declare exception types that the CLI reports as a one-line error."""
    for t in types:
        if t not in _EXPECTED:
            _EXPECTED.append(t)


_OURS = ("firmware_protocol", "sim_backend", "hil", "calibration", "models")


def run_cli(group: click.Group) -> None:
    """Run the group; expected errors become one `Error: ...` line, our warnings one `warning: ...` line."""
    with warnings.catch_warnings():
        others = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if category.__module__.split(".")[0] in _OURS:  # e.g. models.checkpoint.UnfinishedTraining
                click.echo(f"warning: {message}", err=True)
            else:
                others(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        _run(group)


def _run(group: click.Group) -> None:
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except tuple(_EXPECTED) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
