"""`sim://` URLs: a simulated board's configuration and link faults in one string.

Example: ``sim://?seed=1&rows=64&cols=64&flip=0.01&delay=0.2``.
"""
from __future__ import annotations

import dataclasses
import urllib.parse

from sim_backend.board_config import BoardConfig
from sim_backend.faults import LinkFaults

_BOARD_KEYS = {"seed": int, "rows": int, "cols": int, "board_id": str, "watchdog_ms": int, "stream_window": int}
_FAULT_KEYS = {
    "flip": ("flip", float), "drop": ("drop", float), "delay": ("delay", float),
    "delay_max": ("delay_max_s", float), "reset_after": ("reset_after", int), "fault_seed": ("seed", int),
}  # fmt: skip


def parse_sim_url(url: str, base: BoardConfig = BoardConfig()) -> tuple[BoardConfig, LinkFaults]:
    """Board configuration and link faults encoded in a sim:// URL; ValueError names a bad option."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim":
        raise ValueError(f"not a simulated-board URL (expected sim://...): {url!r}")
    board: dict[str, object] = {}
    faults: dict[str, object] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        try:
            if key in _BOARD_KEYS:
                board[key] = _BOARD_KEYS[key](value)
            elif key in _FAULT_KEYS:
                name, conv = _FAULT_KEYS[key]
                faults[name] = conv(value)
            else:
                known = ", ".join(sorted([*_BOARD_KEYS, *_FAULT_KEYS]))
                raise ValueError(f"unknown sim:// option {key!r} (known: {known})")
        except ValueError as exc:
            if "unknown sim://" in str(exc):
                raise
            raise ValueError(f"sim:// option {key}={value!r} is not a valid {_BOARD_KEYS.get(key, float).__name__}") from None
    return dataclasses.replace(base, **board), LinkFaults(**faults)  # type: ignore[arg-type]


def make_sim_url(seed: int = 0, rows: int = 64, cols: int = 64, **options: object) -> str:
    """Build a sim:// URL (inverse of parse_sim_url for the options given)."""
    query = urllib.parse.urlencode({"seed": seed, "rows": rows, "cols": cols, **options})
    return f"sim://?{query}"
