"""Open a board's byte link by URL: a serial device, socket://host:port, or sim:// (simulated board)."""

from __future__ import annotations

from typing import Protocol

import serial

DEFAULT_PORT = "sim://?seed=0"
DEFAULT_BAUD = 921_600


class BoardConnectionError(ConnectionError):
    """The port could not be opened or the link broke."""


class ByteLink(Protocol):
    """The subset of `serial.Serial` the board client uses."""

    timeout: float | None

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...

    @property
    def in_waiting(self) -> int: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


def open_link(url: str, baudrate: int = DEFAULT_BAUD, timeout: float = 0.2) -> ByteLink:
    """Open `url` (e.g. /dev/ttyUSB0, COM3, socket://10.0.0.5:7000, sim://?seed=1&rows=64&cols=64)."""
    if not url:
        raise BoardConnectionError("no port given")
    if url.startswith("sim://"):
        from sim_backend.protocol_sim import register_url_handler

        register_url_handler()
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
    except (serial.SerialException, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BoardConnectionError(f"cannot open port {url!r}: {reason}") from None
