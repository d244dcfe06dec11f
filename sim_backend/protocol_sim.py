"""pyserial URL handler for ``sim://`` so `serial.serial_for_url("sim://?seed=1")` opens a simulated board.

Registered by adding "sim_backend" to `serial.protocol_handler_packages` (see `register_url_handler`).
"""

from __future__ import annotations

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from sim_backend.c_firmware import make_engine
from sim_backend.chip_store import ChipStore, ChipStoreError, PersistentChip
from sim_backend.firmware import FirmwareEngine
from sim_backend.link import SimLink
from sim_backend.sim_url import parse_sim_options


class Serial(SerialBase):
    """A pyserial port whose other end is the simulated board's firmware.

    Opening loads the chip's stored state and locks it (unless the URL says persist=0); closing saves it.
    ``firmware=c`` in the URL runs the C board firmware (sim_backend/c_firmware.py) instead of the Python one.
    """

    is_open: bool  # set by SerialBase.__init__ (pyserial is untyped here)

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.link: SimLink | None = None
        super().__init__(*args, **kwargs)

    @property
    def engine(self) -> FirmwareEngine:
        if self.link is None:
            raise PortNotOpenError()
        return self.link.engine

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        try:
            opts = parse_sim_options(self._port)
            engine = make_engine(opts.firmware, opts.config)
            chip = PersistentChip.open(engine, ChipStore(opts.state_dir)) if opts.persist else None
        except (ValueError, ChipStoreError) as exc:
            raise SerialException(str(exc)) from None
        self.link = SimLink(engine, opts.faults, timeout=self._timeout, chip=chip)
        self.is_open = True

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        self.is_open = False

    def _reconfigure_port(self) -> None:
        if self.link is not None:
            self.link.timeout = self._timeout

    def from_url(self, url: str) -> str:
        return url

    @property
    def in_waiting(self) -> int:
        if not self.is_open or self.link is None:
            raise PortNotOpenError()
        return self.link.in_waiting

    def read(self, size: int = 1) -> bytes:
        if not self.is_open or self.link is None:
            raise PortNotOpenError()
        self.link.timeout = self._timeout
        return self.link.read(size)

    def write(self, data: bytes) -> int:
        if not self.is_open or self.link is None:
            raise PortNotOpenError()
        return self.link.write(bytes(data))

    def reset_input_buffer(self) -> None:
        if self.link is not None:
            self.link.reset_input_buffer()

    def reset_output_buffer(self) -> None:
        """Writes are delivered at once; there is no output buffer."""

    @property
    def out_waiting(self) -> int:
        return 0

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


def register_url_handler() -> None:
    """Make pyserial's serial_for_url understand sim:// URLs."""
    import serial

    if "sim_backend" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("sim_backend")
