"""Serve a simulated board on a real pseudo-terminal, so any serial program can talk to it."""

from __future__ import annotations

import fcntl
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING

from sim_backend.faults import NO_FAULTS, FaultInjector, LinkFaults
from sim_backend.firmware import FirmwareEngine

if TYPE_CHECKING:
    from sim_backend.chip_store import PersistentChip

# A host that reads nothing for this long is gone: like a UART nobody listens to, the board drops what it
# sends until the pty drains again, rather than block (its watchdog must still fire).
STALL_S = 1.0


class PtyBoard:
    """A pty whose master end is driven by a FirmwareEngine; `path` is the slave device to open.

    With a `chip` (a PersistentChip of `engine`), saves see whole requests only and the chip is saved
    and released when the board closes.
    """

    def __init__(self, engine: FirmwareEngine, faults: LinkFaults = NO_FAULTS, chip: PersistentChip | None = None):
        if chip is not None and chip.engine is not engine:
            raise ValueError("the persistent chip belongs to another firmware engine")
        self.engine = engine
        self.chip = chip
        self._guard = chip.guard if chip is not None else threading.RLock()  # held around each engine call
        self.faults = faults
        self._inj = FaultInjector(faults)
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd, termios.TCSANOW)  # no echo, no line editing, 8-bit clean
        fcntl.fcntl(self.master_fd, fcntl.F_SETFL, fcntl.fcntl(self.master_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.dropped_bytes = 0  # sent while no host read the pty (STALL_S)
        self._stalled = False
        self._unplugged = False  # the pty's descriptors are closed (unplug, close)
        self.path = os.ttyname(self.slave_fd)
        self._stop = False
        self._serving = False
        self._closed = False
        self._lock = threading.Lock()
        self._host_bytes = 0
        self._reset_done = False
        self._carry = b""  # host bytes read during a request past a pending reset point: the serve loop feeds them
        if engine.poll_input is None:
            engine.poll_input = self._poll_input  # the firmware hears the host during long requests (3.7)

    def _poll_input(self) -> bytes:
        """What the host sent while a request runs (an MCU polls its UART between pulses), with the link faults."""
        if self._carry or self._unplugged:
            return b""
        try:
            if not select.select([self.master_fd], [], [], 0)[0]:
                return b""
            data = os.read(self.master_fd, 65536)
        except OSError:
            return b""
        f = self.faults
        if f.reset_after and not self._reset_done and self._host_bytes + len(data) >= f.reset_after:
            cut = f.reset_after - self._host_bytes  # the reboot happens in the serve loop, at this byte
            data, self._carry = data[:cut], data[cut:]
        self._host_bytes += len(data)
        return self._inj.corrupt(data)

    def _receive(self, data: bytes) -> None:
        """Hand host bytes to the firmware (rebooting it once after `reset_after` bytes) and send the answer."""
        with self._guard:
            self._receive_locked(data)
            if self.chip is not None:
                self.chip.maybe_save()

    def _poll(self) -> None:
        with self._guard:
            self._send(self.engine.poll())
            if self.chip is not None:
                self.chip.maybe_save()

    def _receive_locked(self, data: bytes) -> None:
        f = self.faults
        if f.reset_after and not self._reset_done and self._host_bytes + len(data) >= f.reset_after:
            cut = f.reset_after - self._host_bytes
            self._send(self.engine.feed(self._inj.corrupt(data[:cut])))
            self.engine.boot()  # power glitch: the firmware restarts mid-run
            self._reset_done = True
            self._send(self.engine.poll())
            self._host_bytes += cut
            data = data[cut:]
        self._host_bytes += len(data)
        self._send(self.engine.feed(self._inj.corrupt(data)))

    def _send(self, data: bytes) -> None:
        if self._unplugged:
            return
        data = self._inj.corrupt(data)
        delay = self._inj.hold_back_s()
        if delay:
            time.sleep(delay)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master_fd, view) :]
                self._stalled = False
                continue
            except BlockingIOError:
                pass
            if self._stalled or not select.select([], [self.master_fd], [], STALL_S)[1]:
                self._stalled = True  # nobody reads: drop at once until a write goes through again
                self.dropped_bytes += len(view)
                return

    def serve(self, poll_s: float = 0.01, stop: Callable[[], bool] | None = None) -> None:
        """Answer the host until `stop()` is true or `close()` is called (Ctrl-C from the CLI)."""
        with self._lock:
            if self._closed:
                raise OSError(f"simulated board on {self.path} is closed")
            self._serving = True
        try:
            self._poll()  # EV_BOOT
            while not self._stop and not (stop and stop()):
                if self._carry:
                    carry, self._carry = self._carry, b""
                    self._receive(carry)
                    continue
                try:
                    ready, _, _ = select.select([self.master_fd], [], [], poll_s)
                except (OSError, ValueError):  # unplugged from another thread
                    break
                if ready:
                    try:
                        data = os.read(self.master_fd, 65536)
                    except OSError:
                        data = b""
                    if data:
                        self._receive(data)
                        continue
                self._poll()
        finally:
            with self._lock:
                self._serving = False
                if self._stop:
                    self._close_fds()

    def close(self) -> None:
        """Stop serving; the descriptors are closed here or, if `serve` is running, when it returns."""
        with self._lock:
            self._stop = True
            if not self._serving:
                self._close_fds()

    def unplug(self) -> None:
        """Pull the cable (fault injection): the pty goes away at once, even in the middle of a request, and
        nothing more is sent; serving stops. The host sees what a vanished USB board gives it."""
        with self._lock:
            self._stop = True
            self._close_pty()
            if not self._serving:
                self._close_fds()

    def _close_pty(self) -> None:
        if self._unplugged:
            return
        self._unplugged = True
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _close_fds(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_pty()
        if self.chip is not None:
            self.chip.close()  # after the last request was answered: the saved chip is the final one
