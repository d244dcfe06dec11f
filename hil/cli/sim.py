"""`rram sim`: serve the simulated board on a pseudo-terminal, and show or reset the stored simulated chips.

A simulated chip persists between processes like a real one (sim_backend/SIM.md); `status`, `list`
and `reset` manage the stored chips. Every import of sim_backend happens inside the commands (fast start).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from firmware_protocol.fileformat import json_text
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError
from hil.cli.stopping import STOP, restore_signals, stop_on_signals

if TYPE_CHECKING:
    from sim_backend.chip_store import ChipId, ChipReport, ChipStore

DEFAULT_SEED, DEFAULT_ROWS, DEFAULT_COLS = 0, 64, 64  # the chip of the default port sim://?seed=0


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


def _spatial_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--spatial SIGMA / --spatial-len L: the chip's spatial gain field, as the sim:// URL's spatial= options."""
    func = click.option(
        "--spatial-len",
        "spatial_len",
        type=float,
        default=None,
        help="correlation length of the spatial gain field, in cells [8]",
    )(func)
    return click.option(
        "--spatial",
        type=float,
        default=None,
        help="sd of the ln gain of a spatially correlated device-to-device field (0.05: 5 %% of g) [0: none]",
    )(func)


@sim.command("serve")
@click.option("--seed", type=int, default=0, show_default=True, help="chip and board seed (same seed, same chip)")
@click.option("--rows", type=click.IntRange(1, 4096), default=64, show_default=True, help="array rows")
@click.option("--cols", type=click.IntRange(1, 4096), default=64, show_default=True, help="array columns")
@click.option(
    "--board-id",
    default=None,
    help="identity announced in HELLO (<= 16 ASCII characters); default SIM-S<seed>, so that a run "
    "file's --resume can tell the served chips apart",
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
    "--persist/--no-persist",
    default=True,
    show_default=True,
    help="keep the chip between runs in the state folder (--no-persist: a throwaway chip, pristine, never saved)",
)
@click.option(
    "--state-dir", default=None, help="folder of the stored chips (default: $RRAM_SIM_STATE_DIR or ~/.local/state)"
)
@_spatial_options
@click.option(
    "--firmware",
    type=click.Choice(["python", "c"]),
    default="python",
    show_default=True,
    help="the board firmware behind the pty: the Python one, or the C core of firmware_protocol/c/ (built with cc)",
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
    board_id: str | None,
    flip: float,
    drop: float,
    delay: float,
    delay_max: float,
    reset_after: int,
    persist: bool,
    state_dir: str | None,
    spatial: float | None,
    spatial_len: float | None,
    firmware: str,
    ground_truth: str | None,
) -> None:
    """Serve a simulated board on a pseudo-terminal until Ctrl-C or SIGTERM.

    The first line on stdout is "serving simulated board on /dev/pts/N"; open that path with any
    serial program (baud rate is ignored). The chip is the stored one (`rram sim status`), locked
    while serving and saved as it changes and when the server stops. --spatial gives the chip a spatially
    correlated device-to-device gain field (as sim://?spatial=); a chip with another field is another chip.
    --firmware c serves the C firmware core (firmware_protocol/c/) on the same chip: same protocol, same bytes.
    """
    from sim_backend.board_config import BoardConfig
    from sim_backend.c_firmware import make_engine
    from sim_backend.chip_store import ChipStore, ChipStoreError, PersistentChip
    from sim_backend.faults import LinkFaults
    from sim_backend.pty_server import PtyBoard
    from sim_backend.sim_url import with_spatial

    if board_id is None:
        board_id = f"SIM-S{seed}"[:16]  # the array size is compared on its own
    try:
        device = with_spatial(BoardConfig().device, spatial, spatial_len)
        config = BoardConfig(rows=rows, cols=cols, seed=seed, board_id=board_id, device=device)
        faults = LinkFaults(
            flip=flip, drop=drop, delay=delay, delay_max_s=delay_max, reset_after=reset_after, seed=seed
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not board_id.isascii():
        raise UserError(f"board id {board_id!r} must be ASCII")
    try:
        engine = make_engine(firmware, config)
    except ValueError as exc:  # no C compiler, or a board the C buffers cannot hold
        raise UserError(str(exc)) from None
    try:
        chip = PersistentChip.open(engine, ChipStore(state_dir)) if persist else None
    except ChipStoreError as exc:
        raise UserError(str(exc)) from None
    try:
        if ground_truth:
            try:
                engine.array.write_ground_truth(ground_truth, read_chain=engine.chain)
            except OSError as exc:
                raise UserError(f"cannot write ground truth to {ground_truth}: {exc}") from None
        board = PtyBoard(engine, faults, chip=chip)
    except BaseException:
        if chip is not None:
            chip.close()
        raise
    previous = stop_on_signals()  # SIGTERM stops like Ctrl-C: the chip is saved
    click.echo(f"serving simulated board on {board.path}")
    sys.stdout.flush()  # the path line must reach a pipe before serving blocks
    try:
        board.serve(stop=STOP.is_set)
    except KeyboardInterrupt:
        pass
    finally:
        board.close()  # saves and releases the chip
        restore_signals(previous)
    saved = f" (chip {chip.chip.name} saved in {chip.path})" if chip is not None and chip.path.exists() else ""
    click.echo(f"stopped{saved}", err=True)


# ------------------------------------------------------------------------------------------ stored chips
def _chip_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """CHIP (a name like seed0_64x64 or a sim:// URL) or --seed/--rows/--cols, and --state-dir, --json."""
    func = click.option("--json", "as_json", is_flag=True, help="print JSON (SI units)")(func)
    func = click.option(
        "--state-dir", default=None, help="folder of the stored chips (default: $RRAM_SIM_STATE_DIR or ~/.local/state)"
    )(func)
    func = click.option("--cols", type=click.IntRange(1, 4096), default=None, help=f"array columns [{DEFAULT_COLS}]")(
        func
    )
    func = click.option("--rows", type=click.IntRange(1, 4096), default=None, help=f"array rows [{DEFAULT_ROWS}]")(func)
    func = click.option("--seed", type=int, default=None, help=f"chip seed [{DEFAULT_SEED}]")(func)
    return click.argument("chip", required=False)(func)


def _resolve(
    chip: str | None,
    seed: int | None,
    rows: int | None,
    cols: int | None,
    state_dir: str | None,
    spatial: tuple[float | None, float | None] = (None, None),
) -> tuple[ChipId, ChipStore]:
    """The chip named on the command line (default: the default port's chip) and its store.

    A sim:// URL brings its spatial field; ``spatial`` (--spatial, --spatial-len) gives one to a named chip.
    """
    from sim_backend.board_config import BoardConfig
    from sim_backend.chip_store import ChipId, ChipStore, parse_chip_name
    from sim_backend.sim_url import parse_sim_options, with_spatial

    url_dir: str | None = None
    device = BoardConfig().device
    if chip is not None and chip.startswith("sim://") and spatial != (None, None):
        raise UserError("give the spatial field either in the sim:// URL or with --spatial/--spatial-len, not both")
    if chip is not None:
        if (seed, rows, cols) != (None, None, None):
            raise UserError("give the chip either as CHIP or with --seed/--rows/--cols, not both")
        if chip.startswith("sim://"):
            try:
                opts = parse_sim_options(chip)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            seed, rows, cols, url_dir = opts.config.seed, opts.config.rows, opts.config.cols, opts.state_dir
            device = opts.config.device
        else:
            named = parse_chip_name(chip)
            if named is None:
                raise UserError(f"{chip!r} is not a chip: give a name like seed0_64x64 or a URL like sim://?seed=0")
            seed, rows, cols = named
    if state_dir is not None and url_dir is not None and state_dir != url_dir:
        raise UserError("the URL's state_dir and --state-dir differ: give the folder once")
    try:
        config = BoardConfig(
            rows=DEFAULT_ROWS if rows is None else rows,
            cols=DEFAULT_COLS if cols is None else cols,
            seed=DEFAULT_SEED if seed is None else seed,
            device=with_spatial(device, *spatial),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return ChipId.of(config), ChipStore(state_dir or url_dir)


def _rows(table: Sequence[tuple[str, str]]) -> str:
    """Aligned `name  value` lines."""
    width = max(len(name) for name, _ in table)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in table)


def _lock_text(r: ChipReport) -> str:
    if not r.lock.held:
        return "free"
    return f"held by process {r.lock.pid}" if r.lock.pid else "held by another process"


def _spatial_text(sigma: float, length: float) -> str:
    return f"sd {sigma:g} of ln g, correlation length {length:g} cells"


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


@sim.command("status")
@_chip_options
@_spatial_options
def status(
    chip: str | None,
    seed: int | None,
    rows: int | None,
    cols: int | None,
    state_dir: str | None,
    as_json: bool,
    spatial: float | None,
    spatial_len: float | None,
) -> None:
    """Show one stored simulated chip: formed and stuck cells, virtual clock, pulse counters, file, lock.

    CHIP is a name like seed0_64x64 or a sim:// URL; without it, --seed/--rows/--cols (default: the
    chip of the default port, sim://?seed=0, 64x64).
    """
    from sim_backend.chip_store import ChipStoreError, report

    chip_id, store = _resolve(chip, seed, rows, cols, state_dir, (spatial, spatial_len))
    try:
        r = report(store, chip_id)
    except ChipStoreError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json_text(r.to_dict(), indent=2))
        return
    c = r.counters
    saved = f"{r.saved_at} (by process {r.saved_by_pid}, save {r.generation})" if r.stored else "never"
    table = [
        ("chip", chip_id.name),
        ("state", "stored" if r.stored else "pristine (nothing stored yet)"),
        ("file", str(r.path)),
        ("last saved", saved),
        ("spatial field", "none" if chip_id.spatial is None else _spatial_text(*chip_id.spatial)),
        ("formed", f"{r.formed} of {r.cells} cells ({_percent(r.formed, r.cells)})"),
        ("stuck", f"{_cells(r.stuck_lrs + r.stuck_hrs)} ({r.stuck_lrs} at LRS, {r.stuck_hrs} at HRS)"),
        ("virtual clock", f"{r.clock_s:.6f} s"),
        ("form pulses", f"{c.get('form', 0)}"),
        ("set pulses", f"{c.get('set', 0)}"),
        ("reset pulses", f"{c.get('reset', 0)}"),
        ("cell reads", f"{c.get('reads', 0)}"),
        ("firmware boots", f"{r.boots}"),
        ("lock", _lock_text(r)),
    ]
    click.echo(_rows(table))


@sim.command("list")
@click.option(
    "--state-dir", default=None, help="folder of the stored chips (default: $RRAM_SIM_STATE_DIR or ~/.local/state)"
)
@click.option("--json", "as_json", is_flag=True, help="print JSON (SI units)")
def list_chips(state_dir: str | None, as_json: bool) -> None:
    """List every stored simulated chip, one line each."""
    from sim_backend.chip_store import ChipStore, ChipStoreError, report

    store = ChipStore(state_dir)
    reports: list[ChipReport] = []
    unreadable: list[str] = []
    for path in store.files():
        try:
            stored = store.read(path)
        except ChipStoreError as exc:
            unreadable.append(str(exc))
            continue
        reports.append(report(store, stored.chip, stored))
    if as_json:
        payload = {"folder": str(store.folder), "chips": [r.to_dict() for r in reports], "unreadable": unreadable}
        click.echo(json_text(payload, indent=2))
        return
    if not reports and not unreadable:
        click.echo(f"no stored chips in {store.folder}")
        return
    click.echo(f"stored chips in {store.folder}")
    header = ("chip", "formed", "stuck", "clock (s)", "form", "set", "reset", "reads", "saved", "lock", "physics")
    lines = [header] + [
        (
            r.chip.name,
            f"{r.formed}/{r.cells}",
            str(r.stuck_lrs + r.stuck_hrs),
            f"{r.clock_s:.3f}",
            str(r.counters.get("form", 0)),
            str(r.counters.get("set", 0)),
            str(r.counters.get("reset", 0)),
            str(r.counters.get("reads", 0)),
            r.saved_at or "",
            _lock_text(r),
            "current" if r.current_physics else f"other ({r.chip.physics}, never loaded)",
        )
        for r in reports
    ]
    right = {1, 2, 3, 4, 5, 6, 7}  # numbers align right
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        cells = [f"{v:>{w}}" if i in right else f"{v:<{w}}" for i, (v, w) in enumerate(zip(row, widths, strict=True))]
        click.echo("  ".join(cells).rstrip())
    for line in unreadable:
        click.echo(f"unreadable: {line}")


@sim.command("reset")
@_chip_options
@click.option("--all", "everything", is_flag=True, help="reset every stored chip")
def reset(
    chip: str | None,
    seed: int | None,
    rows: int | None,
    cols: int | None,
    state_dir: str | None,
    as_json: bool,
    everything: bool,
) -> None:
    """Delete a simulated chip's stored state: the next open gives the pristine chip of its seed.

    CHIP is a name like seed0_64x64 or a sim:// URL (default: the chip of the default port); --all
    resets every stored chip. Refused while a program has the chip open.
    """
    from sim_backend.chip_store import ChipStore, ChipStoreError

    if everything:
        if chip is not None or (seed, rows, cols) != (None, None, None):
            raise UserError("give either a chip or --all, not both")
        store = ChipStore(state_dir)
        paths, what = store.known(), "every stored chip"
    else:
        chip_id, store = _resolve(chip, seed, rows, cols, state_dir)
        paths, what = store.variants(chip_id.seed, chip_id.rows, chip_id.cols), chip_id.name
    try:
        deleted = store.delete(paths)
    except ChipStoreError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json_text({"folder": str(store.folder), "deleted": [str(p) for p in deleted]}, indent=2))
    elif deleted:
        for path in deleted:
            click.echo(f"deleted {path}")
        click.echo(f"reset {what}: the next open gives a pristine chip")
    else:
        click.echo(f"nothing stored for {what} in {store.folder} (already pristine)")
