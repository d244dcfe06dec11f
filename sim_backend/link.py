"""In-process serial link to a simulated board: the subset of `serial.Serial` the host uses."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from sim_backend.board_config import BoardConfig
from sim_backend.faults import NO_FAULTS, FaultInjector, LinkFaults
from sim_backend.firmware import FirmwareEngine

if TYPE_CHECKING:
    from sim_backend.chip_store import PersistentChip


class SimLink:
    """A byte pipe to a FirmwareEngine, with optional fault injection in both directions.

    `write()` hands bytes to the firmware at once; what the firmware answers becomes readable,
    possibly held back (delay faults) or corrupted. `read()` blocks up to `timeout` like pyserial.
    With a `chip` (its engine must be `engine`), the chip's saves see whole requests only and `close()`
    saves it and releases its lock. The engine gets no `poll_input`: `write()` runs a request in the host's own
    thread, so nothing can arrive while it runs and the host cannot fall silent; the watchdog counts from the answer.
    """

    def __init__(
        self,
        engine: FirmwareEngine | None = None,
        faults: LinkFaults = NO_FAULTS,
        timeout: float | None = 1.0,
        chip: PersistentChip | None = None,
    ):
        self.engine = engine if engine is not None else FirmwareEngine(BoardConfig())
        if chip is not None and chip.engine is not self.engine:
            raise ValueError("the persistent chip belongs to another firmware engine")
        self.chip = chip
        self.faults = faults
        self._inj = FaultInjector(faults)
        self._pending: deque[tuple[float, bytes]] = deque()  # (release time, bytes) board -> host
        self._rx = bytearray()
        self._host_bytes = 0
        self._reset_done = False
        self._lock = chip.guard if chip is not None else threading.RLock()  # one lock: requests and saves
        self.timeout = timeout
        self.is_open = True
        self._deliver(self.engine.poll())  # the EV_BOOT of power-up

    def another_host(self, faults: LinkFaults = NO_FAULTS) -> SimLink:
        """A second link into this link's board, as if a second host shared the line (session-ownership tests).

        Both links drive the one firmware under one lock; each gets what the board answers to its own writes,
        and events go to whichever link polls first, as on a shared line.
        """
        other = SimLink(self.engine, faults, self.timeout)
        other._lock = self._lock
        return other

    # --- board side ------------------------------------------------------------------------
    def _deliver(self, data: bytes) -> None:
        if not data:
            return
        data = self._inj.corrupt(data)
        release = time.monotonic() + self._inj.hold_back_s()
        if self._pending:
            release = max(release, self._pending[-1][0])  # a serial line never reorders bytes
        self._pending.append((release, data))

    def _collect(self) -> None:
        self._deliver(self.engine.poll())
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            self._rx += self._pending.popleft()[1]

    # --- serial.Serial subset ----------------------------------------------------------------
    def write(self, data: bytes) -> int:
        with self._lock:
            self._check_open()
            n = len(data)
            f = self.faults
            if f.reset_after and not self._reset_done and self._host_bytes + n >= f.reset_after:
                cut = f.reset_after - self._host_bytes
                self._deliver(self.engine.feed(self._inj.corrupt(bytes(data[:cut]))))
                self.engine.boot()  # power glitch: the firmware restarts mid-run
                self._reset_done = True
                self._deliver(self.engine.poll())
                data = data[cut:]
            self._host_bytes += n
            self._deliver(self.engine.feed(self._inj.corrupt(bytes(data))))
            if self.chip is not None:
                self.chip.maybe_save()
            return n

    def read(self, size: int = 1) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            with self._lock:
                self._check_open()
                self._collect()
                if self.chip is not None:
                    self.chip.maybe_save()  # stream events (endurance) change the chip between requests
                if len(self._rx) >= size or (deadline is not None and time.monotonic() >= deadline):
                    out = bytes(self._rx[:size])
                    del self._rx[:size]
                    return out
                wait = self._pending[0][0] - time.monotonic() if self._pending else 0.002
            time.sleep(min(max(wait, 0.0005), 0.01))

    @property
    def in_waiting(self) -> int:
        with self._lock:
            self._check_open()
            self._collect()
            return len(self._rx)

    def reset_input_buffer(self) -> None:
        with self._lock:
            self._collect()
            self._rx.clear()

    def flush(self) -> None:
        """Writes are delivered synchronously; nothing to flush."""

    def close(self) -> None:
        with self._lock:
            self.is_open = False
        if self.chip is not None:
            self.chip.close()

    def _check_open(self) -> None:
        if not self.is_open:
            import serial

            raise serial.PortNotOpenError()

    def __enter__(self) -> SimLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
