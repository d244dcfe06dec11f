"""`rram board info|calibrate|release`: a board's identity and limits, its read-path calibration against an SMU,
and freeing a board whose session a vanished host still holds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from firmware_protocol import BoardError, LimitError, VersionError
from firmware_protocol.constants import SessionEnd
from firmware_protocol.fileformat import json_text
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError, expected_error
from hil.cli.report import aligned, quantity
from hil.hardware.board import Board, BoardResetError, BoardTimeoutError
from hil.hardware.session import BoardSession
from hil.hardware.transport import DEFAULT_PORT, BoardConnectionError, open_link

if TYPE_CHECKING:
    from hil.hardware.readpath import RefCell

# The read-path fit (scipy) and the SMU driver (pyvisa) are imported by `calibrate` only, so that
# `rram board info` and `rram --help` start fast; their errors join the expected ones there.
_BOARD_ERRORS: tuple[type[BaseException], ...] = (
    BoardConnectionError,
    BoardTimeoutError,
    VersionError,
    LimitError,
    BoardError,
    BoardResetError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)
expected_error(*_BOARD_ERRORS)

_PORT_HELP = (
    "board URL: /dev/ttyUSB0, COM3, socket://h:p, sim://?seed=1 (sim://...&ref=0:63:50k wires reference resistors)"
)
_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


@contextmanager
def _one_line_errors(*more: type[BaseException]) -> Iterator[None]:
    """Expected failures (bad port, wrong protocol, bad input, and `more`) become one-line click errors."""
    try:
        yield
    except (*_BOARD_ERRORS, *more) as exc:
        raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def parse_ohms(text: str) -> list[float]:
    """'50k,100k,1M' or '5e4,1e5' -> ohms; ValueError names a bad entry."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        m = re.fullmatch(r"([0-9.eE+-]+)\s*([kKMG]?)\s*(?:ohms?|Ω)?", item)
        try:
            if m is None:
                raise ValueError
            ohms = float(m.group(1)) * _SI[m.group(2)]
        except ValueError:
            raise click.BadParameter(f"{item!r} is not a resistance (e.g. 50k, 1M, 2.2e5)") from None
        if not ohms > 0:
            raise click.BadParameter(f"resistance {item!r} must be positive")
        out.append(ohms)
    return out


def parse_cell(text: str) -> tuple[int, int]:
    """'ROW,COL' -> (row, col)."""
    m = re.fullmatch(r"\s*(\d+)\s*[,:]\s*(\d+)\s*", text)
    if m is None:
        raise click.BadParameter(f"{text!r} is not a cell ROW,COL (e.g. 0,63)")
    return int(m.group(1)), int(m.group(2))


def parse_voltages(text: str) -> list[float]:
    """'0.05,0.1,0.2' -> volts."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of voltages") from None


def _callback(fn: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def cb(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, tuple):
            return [fn(v) for v in value]
        return fn(value)

    return cb


@COMMANDS.register("board")
@click.group("board")
def board() -> None:
    """The test board: identity and limits, read-path calibration, releasing a held session."""


def _span(bounds: list[float], unit: str) -> tuple[str, str]:
    """'-3.3 .. 3.3' and its unit, from [low, high]."""
    lo, hi = bounds
    (a, shown), (b, _) = quantity(float(lo), unit), quantity(float(hi), unit)
    return f"{a} .. {b}", shown


def _format_info(d: dict[str, Any]) -> str:
    w_lo, w_hi, w_step = d["pulse_width_ns"]
    items: list[tuple[str, str, str]] = [
        ("board id", d["board_id"], ""),
        ("port", d["port"], ""),
        ("protocol", d["protocol"], ""),
        ("firmware", d["firmware"], ""),
        ("session", f"{d['session_id']:08x}", ""),
        ("array", f"{d['rows']} x {d['cols']}", "cells"),
        ("capabilities", ", ".join(d["capabilities"]) or "none", ""),
        ("DAC / ADC bits", f"{d['dac_bits']} / {d['adc_bits']}", ""),
        ("SET voltage", *_span(d["set_v"], "V")),
        ("RESET voltage", *_span(d["reset_v"], "V")),
        ("FORM voltage", *_span(d["form_v"], "V")),
        ("read voltage", *_span(d["read_v"], "V")),
        ("gate voltage", *_span(d["gate_v"], "V")),
        ("pulse width", f"{w_lo} .. {w_hi}, step {w_step}", "ns"),
        ("max compliance", *quantity(d["max_compliance_a"], "A")),
        ("max payload", str(d["max_payload"]), "bytes"),
        ("watchdog", str(d["watchdog_ms"]), "ms"),
        ("stream window", str(d["stream_window"]), "events"),
        ("write-verify batch", str(d["max_wv_batch"]), "cells"),
        ("longest request", f"{d['max_request_s']:g}", "s"),
        ("longest DC hold", f"{d['max_hold_ns'] / 1e6:g}", "ms"),
    ]
    return "\n".join(aligned([(0, name, value, unit) for name, value, unit in items], indent=0, right=False))


@board.command("info")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help=_PORT_HELP)
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def info(port: str, as_json: bool) -> None:
    """Connect (HELLO) and print the board's identity, capabilities and limits."""
    with _one_line_errors(), Board.open(port) as b:
        d = b.describe()
    click.echo(json_text(d) if as_json else _format_info(d))


@board.command("release")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help=_PORT_HELP)
def release(port: str) -> None:
    """Take over the board's session and release it, so the next command gets in at once.

    For a host that is gone but still holds the board: one whose watchdog is disabled or long (a crashed host
    with the default 2 s watchdog frees the board by itself). WARNING: a host that is still running loses the
    board: its stream is stopped, its outputs are grounded and its next request fails.
    """
    with _one_line_errors():
        link = open_link(port)
        try:
            session = BoardSession(link, port=port, take_over=True)
        except BaseException:
            link.close()
            raise
        with session:
            info = session.info
    stream = f", its stream {info.prev_stream_id} stopped" if info.prev_stream_id != 0xFFFF else ""
    if info.prev_session_end == SessionEnd.TAKEN_OVER:
        click.echo(f"board {info.board_id} on {port}: took over another host's session{stream}; released")
    else:
        click.echo(f"board {info.board_id} on {port}: no other host held it; released")


@board.command("calibrate")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help=_PORT_HELP)
@click.option("--smu", "smu_resource", required=True, help="VISA resource of the SMU, e.g. GPIB0::24::INSTR")
@click.option(
    "--visa-backend",
    default="",
    help="pyvisa backend: '' (system VISA), '@py', or a simulated SMU: '2400@sim' / '2450@sim' (packaged) or 'file.yaml@sim'",
)
@click.option(
    "--dialect",
    type=click.Choice(["auto", "2400", "2450"]),
    default="auto",
    show_default=True,
    help="SCPI dialect of the SMU (auto: from *IDN?)",
)
@click.option(
    "--ref-cell",
    "ref_cells",
    multiple=True,
    required=True,
    callback=_callback(parse_cell),
    help="cell ROW,COL wired to a reference resistor (repeat, one per resistor)",
)
@click.option(
    "--resistors",
    required=True,
    callback=_callback(parse_ohms),
    help="reference resistances in --ref-cell order, e.g. 50k,100k,200k,500k,1M",
)
@click.option(
    "--voltages",
    default="0.05,0.1,0.15,0.2,0.25,0.3",
    show_default=True,
    callback=_callback(parse_voltages),
    help="read voltages (V) applied by the board and the SMU",
)
@click.option(
    "--smu-max-voltage",
    type=float,
    default=0.5,
    show_default=True,
    help="safety limit: the SMU never sources beyond +- this voltage",
)
@click.option(
    "--compliance", type=float, default=None, help="SMU current limit (A); default 2 x the largest expected current"
)
@click.option("--nplc", type=float, default=1.0, show_default=True, help="SMU integration time (power-line cycles)")
@click.option(
    "--repeats", type=click.IntRange(1, 100), default=1, show_default=True, help="readings averaged per point"
)
@click.option("--no-prompt", is_flag=True, help="do not ask to move the SMU leads between resistors (switched fixture)")
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="calibration file to write (.h5, or .json)",
)
@click.option("--force", is_flag=True, help="overwrite an existing calibration file")
@click.option("--json", "as_json", is_flag=True, help="print the fitted values as JSON")
def calibrate_cmd(
    port: str,
    smu_resource: str,
    visa_backend: str,
    dialect: str,
    ref_cells: list[tuple[int, int]],
    resistors: list[float],
    voltages: list[float],
    smu_max_voltage: float,
    compliance: float | None,
    nplc: float,
    repeats: int,
    no_prompt: bool,
    out: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Fit the board's read-path gain and offset against an SMU on reference resistors; write a calibration file.

    Use the file with `rram characterize ... --calibration FILE`; run files embed it.
    """
    if out.exists() and not force:
        raise UserError(f"{out} already exists (use --force to overwrite)")
    if len(ref_cells) != len(resistors):
        raise UserError(
            f"{len(ref_cells)} --ref-cell but {len(resistors)} --resistors value(s): give one resistor per cell"
        )
    from hil.hardware.instruments import Smu, SmuConnectionError, SmuError
    from hil.hardware.instruments.backends import is_simulated
    from hil.hardware.instruments.simulated import SimulatedResistorSmu
    from hil.hardware.readpath import CalibrationFileError, calibrate

    smu_errors = (SmuError, SmuConnectionError, CalibrationFileError)
    expected_error(*smu_errors)
    simulated = is_simulated(visa_backend)
    with _one_line_errors(*smu_errors):
        smu_cls = SimulatedResistorSmu if simulated else Smu
        with (
            smu_cls.open(smu_resource, visa_backend, max_voltage_v=smu_max_voltage, dialect=dialect) as smu,
            Board.open(port) as b,
        ):
            connect: Callable[[RefCell], None] | None
            if isinstance(smu, SimulatedResistorSmu):
                sim_smu = smu  # the simulated fixture: "moving the leads" is wiring the SMU across the resistor
                connect = lambda cell: sim_smu.connect(cell.ohms)
            elif no_prompt:
                connect = None
            else:

                def connect(cell: RefCell) -> None:
                    click.prompt(
                        f"connect the SMU across the {cell.ohms:g} ohm resistor at cell ({cell.row}, {cell.col}), "
                        "then press Enter",
                        default="",
                        show_default=False,
                        err=True,
                    )

            cal = calibrate(
                b,
                smu,
                ref_cells,
                resistors,
                voltages,
                connect=connect,
                compliance_a=compliance,
                nplc=nplc,
                repeats=repeats,
            )
        cal.save(out, force=force)
    s = cal.summary()
    if as_json:
        click.echo(json_text({"out": str(out), **s}))
        return
    click.echo(f"read-path calibration of {s['board_id']}: wrote {out}")
    click.echo(f"  gain    {cal.gain:.6f} +- {cal.gain_se:.2g}")
    click.echo(f"  offset  {cal.offset_a * 1e9:+.4f} nA +- {cal.offset_se_a * 1e9:.2g} nA")
    click.echo(f"  residual rms {cal.residual_rms_a * 1e9:.3g} nA over {s['n_points']} points")
    click.echo(f"  SMU     {cal.smu_idn}")
