"""`rram sim`: run the simulated board where any serial program can reach it (a pseudo-terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError


@COMMANDS.register("sim")
@click.group("sim")
def sim() -> None:
    """The simulated RRAM test board (same wire protocol as the real one)."""


def _probability(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The --flip / --drop / --delay option: a probability per byte (or chunk) on the link."""
    return click.option(
        f"--{name}",
        type=click.FloatRange(0.0, 1.0),
        default=0.0,
        show_default=True,
        help={
            "flip": "probability that a byte on the link gets one bit flipped (both directions)",
            "drop": "probability that a byte on the link is lost (both directions)",
            "delay": "probability that a board->host chunk is held back up to --delay-max seconds",
        }[name],
    )


@sim.command("serve")
@click.option("--seed", type=int, default=0, show_default=True, help="chip and board seed (same seed, same chip)")
@click.option("--rows", type=click.IntRange(1, 4096), default=64, show_default=True, help="array rows")
@click.option("--cols", type=click.IntRange(1, 4096), default=64, show_default=True, help="array columns")
@click.option(
    "--board-id", default="SIM-RRAM", show_default=True, help="identity announced in HELLO (<= 16 ASCII characters)"
)
@_probability("flip")
@_probability("drop")
@_probability("delay")
@click.option(
    "--delay-max", type=click.FloatRange(0.0), default=0.05, show_default=True, help="longest hold-back of --delay (s)"
)
@click.option(
    "--reset-after",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="reboot the firmware once after this many host bytes (0 = never)",
)
@click.option(
    "--ground-truth",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="write the chip's ground truth (device draws, true ADC calibration) to this HDF5 file at start",
)
def serve(
    seed: int,
    rows: int,
    cols: int,
    board_id: str,
    flip: float,
    drop: float,
    delay: float,
    delay_max: float,
    reset_after: int,
    ground_truth: str | None,
) -> None:
    """Serve a simulated board on a pseudo-terminal until Ctrl-C.

    The first line on stdout is "serving simulated board on /dev/pts/N"; open that path with any
    serial program (baud rate is ignored).
    """
    from sim_backend.board_config import BoardConfig
    from sim_backend.faults import LinkFaults
    from sim_backend.firmware import FirmwareEngine
    from sim_backend.pty_server import PtyBoard

    try:
        config = BoardConfig(rows=rows, cols=cols, seed=seed, board_id=board_id)
        faults = LinkFaults(
            flip=flip, drop=drop, delay=delay, delay_max_s=delay_max, reset_after=reset_after, seed=seed
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not board_id.isascii():
        raise UserError(f"board id {board_id!r} must be ASCII")
    engine = FirmwareEngine(config)
    if ground_truth:
        try:
            engine.array.write_ground_truth(ground_truth, read_chain=engine.chain)
        except OSError as exc:
            raise UserError(f"cannot write ground truth to {ground_truth}: {exc}") from None
    board = PtyBoard(engine, faults)
    click.echo(f"serving simulated board on {board.path}")
    sys.stdout.flush()  # the path line must reach a pipe before serving blocks
    try:
        board.serve()
    except KeyboardInterrupt:
        pass
    finally:
        board.close()
    click.echo("stopped", err=True)
