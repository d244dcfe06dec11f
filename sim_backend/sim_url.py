"""`sim://` URLs: a simulated board's configuration and link faults in one string.

Example: ``sim://?seed=1&rows=64&cols=64&flip=0.01&delay=0.2``; ``ref=0:63:50k,1:63:1M`` wires
precision resistors (calibration fixture) in place of cells. The chip persists between processes
(sim_backend/SIM.md): ``persist=0`` gives a throwaway chip (pristine, never saved), ``state_dir=PATH``
keeps it in another folder than the per-user default. ``firmware=c`` puts the C board firmware
(firmware_protocol/c/, sim_backend/c_firmware.py) behind the link instead of the Python one (``firmware=python``,
the default): the same protocol, the same chip, the same bytes.

``spatial=SIGMA`` gives the chip a spatially correlated device-to-device gain (off by default): the sd of
the ln gain on the conductance SET, RESET and forming drive a cell toward (0.05 = 5 % of g), correlated
between cells as exp(-(|dr| + |dc|) / L) with ``spatial_len=L`` cells (default 8). It is part of the
chip: a chip with another field, or none, is another stored chip (DeviceParams.spatial_sigma and
spatial_length_cells, sim_backend/device_params.py).
"""

from __future__ import annotations

import dataclasses
import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

from sim_backend.board_config import DEFAULT_BOARD, BoardConfig
from sim_backend.device_params import DeviceParams
from sim_backend.faults import LinkFaults

_BOARD_KEYS = {"seed": int, "rows": int, "cols": int, "board_id": str, "watchdog_ms": int, "stream_window": int}
_FAULT_KEYS = {
    "flip": ("flip", float),
    "drop": ("drop", float),
    "delay": ("delay", float),
    "delay_max": ("delay_max_s", float),
    "reset_after": ("reset_after", int),
    "fault_seed": ("seed", int),
}


_STORE_KEYS = ("persist", "state_dir")
FIRMWARES = ("python", "c")
_DEVICE_KEYS = {"spatial": "spatial_sigma", "spatial_len": "spatial_length_cells"}  # DeviceParams fields
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class SimOptions:
    """Everything a sim:// URL says: the board, the link faults and where (whether) the chip persists."""

    config: BoardConfig
    faults: LinkFaults
    persist: bool = True
    state_dir: str | None = None  # None: $RRAM_SIM_STATE_DIR or the per-user default
    firmware: str = "python"  # the board firmware: "python" (FirmwareEngine) or "c" (CFirmwareEngine)


def parse_sim_url(url: str, base: BoardConfig = DEFAULT_BOARD) -> tuple[BoardConfig, LinkFaults]:
    """Board configuration and link faults encoded in a sim:// URL; ValueError names a bad option."""
    opts = parse_sim_options(url, base)
    return opts.config, opts.faults


def parse_sim_options(url: str, base: BoardConfig = DEFAULT_BOARD) -> SimOptions:
    """All options of a sim:// URL (board, faults, persistence); ValueError names a bad option in one line."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim":
        raise ValueError(f"not a simulated-board URL (expected sim://...): {url!r}")
    # keyword arguments whose value types follow the option tables above (one type per key)
    board: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    device: dict[str, float] = {}
    persist, state_dir, firmware = True, None, "python"
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if key == "persist":
            persist = _parse_persist(value)
            continue
        if key == "state_dir":
            if not value.strip():
                raise ValueError("sim:// option state_dir is empty (give a folder, e.g. state_dir=/tmp/chips)")
            state_dir = value
            continue
        if key == "firmware":
            if value not in FIRMWARES:
                raise ValueError(
                    f"sim:// option firmware={value!r} is not one of {', '.join(FIRMWARES)} (e.g. firmware=c)"
                )
            firmware = value
            continue
        if key == "ref":
            board["reference_cells"] = parse_reference_cells(value)
            continue
        if key in _DEVICE_KEYS:
            device[_DEVICE_KEYS[key]] = _parse_spatial(key, value)
            continue
        if key in _BOARD_KEYS:
            target, name, conv = board, key, _BOARD_KEYS[key]
        elif key in _FAULT_KEYS:
            target, (name, conv) = faults, _FAULT_KEYS[key]
        else:
            known = ", ".join(sorted([*_BOARD_KEYS, *_FAULT_KEYS, *_STORE_KEYS, *_DEVICE_KEYS, "ref", "firmware"]))
            raise ValueError(f"unknown sim:// option {key!r} (known: {known})")
        try:
            target[name] = conv(value)
        except ValueError:
            raise ValueError(f"sim:// option {key}={value!r} is not a valid {conv.__name__}") from None
    if device:
        d = base.device
        board["device"] = dataclasses.replace(
            d,
            spatial_sigma=device.get("spatial_sigma", d.spatial_sigma),
            spatial_length_cells=device.get("spatial_length_cells", d.spatial_length_cells),
        )
    return SimOptions(dataclasses.replace(base, **board), LinkFaults(**faults), persist, state_dir, firmware)


def with_spatial(device: DeviceParams, sigma: float | None, length: float | None) -> DeviceParams:
    """`device` with a spatial gain field of sd `sigma` and length `length` cells (None: keep); --spatial's checks."""
    if sigma is not None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"--spatial {sigma!r} must be a finite sd >= 0 of the ln gain (e.g. 0.05 for 5 % of g)")
        device = dataclasses.replace(device, spatial_sigma=float(sigma))
    if length is not None:
        if not (math.isfinite(length) and length > 0):
            raise ValueError(f"--spatial-len {length!r} must be a finite correlation length > 0 cells (e.g. 8)")
        device = dataclasses.replace(device, spatial_length_cells=float(length))
    return device


def _parse_spatial(key: str, value: str) -> float:
    """spatial= (sd of the ln gain, >= 0) or spatial_len= (correlation length in cells, > 0); one-line errors."""
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if key == "spatial" and not (math.isfinite(x) and x >= 0):
        raise ValueError(
            f"sim:// option spatial={value!r} must be a finite sd >= 0 of the ln gain (e.g. spatial=0.05 for 5 % of g; 0: none)"
        )
    if key == "spatial_len" and not (math.isfinite(x) and x > 0):
        raise ValueError(
            f"sim:// option spatial_len={value!r} must be a finite correlation length > 0 cells (e.g. spatial_len=8)"
        )
    return x


def _parse_persist(value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"sim:// option persist={value!r} is not 0 or 1 (persist=0 gives a throwaway chip)")


_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_reference_cells(text: str) -> tuple[tuple[int, int, float], ...]:
    """Calibration-fixture resistors from 'ROW:COL:OHMS,...' (OHMS may end in k, M or G: 0:63:50k)."""
    cells: list[tuple[int, int, float]] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            ohms_text = parts[2].strip()
            scale = _SI.get(ohms_text[-1:], None) if ohms_text[-1:].isalpha() else 1.0
            if scale is None:
                raise ValueError
            ohms = float(ohms_text[:-1] if ohms_text[-1:].isalpha() else ohms_text) * scale
            cells.append((int(parts[0]), int(parts[1]), ohms))
        except ValueError:
            raise ValueError(f"sim:// option ref: {item!r} is not ROW:COL:OHMS (e.g. 0:63:50k)") from None
    return tuple(cells)


def make_sim_url(seed: int = 0, rows: int = 64, cols: int = 64, **options: object) -> str:
    """Build a sim:// URL (inverse of parse_sim_url for the options given)."""
    query = urllib.parse.urlencode({"seed": seed, "rows": rows, "cols": cols, **options})
    return f"sim://?{query}"
