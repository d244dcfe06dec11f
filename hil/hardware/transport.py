"""Open a board's byte link by URL: a serial device, socket://host:port, or sim:// (simulated board).

Serial devices (a pty from `rram sim serve` included) are opened exclusively where the OS supports it (POSIX
flock; Windows COM ports are exclusive anyway), so a second program on the same port is refused in one line
instead of stealing the first one's bytes. socket:// and sim:// links are not locked (a sim:// board is per
process); the board's session ownership (PROTOCOL.md 3.5) covers them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
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
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, exclusive=True)
    except (serial.SerialException, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and _lock_refused(exc):
            holder = _lock_holder(url) or "it holds the port's lock"
            raise BoardConnectionError(f"port {url} is in use by another program ({holder}); close it first") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BoardConnectionError(f"cannot open port {url!r}: {reason}") from None


def _lock_refused(exc: OSError) -> bool:
    """True for pyserial's 'Could not exclusively lock port' (flock refused: another open file holds it)."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) and "exclusively lock" in str(exc)


def _lock_holder(path: str) -> str:
    """'pid 4242: rram characterize ...' for the process holding the flock on `path` (Linux /proc/locks), or ''."""
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 4242 00:19:6 0 EOF"; waiters have "->" after "1:"
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == key:
                cmd = Path(f"/proc/{parts[4]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return f"pid {parts[4]}: {cmd.strip()[:80]}" if cmd.strip() else f"pid {parts[4]}"
    except (OSError, ValueError):  # not Linux, no /proc, or the holder just exited
        pass
    return ""
