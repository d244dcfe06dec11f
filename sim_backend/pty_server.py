"""Serve a simulated board on a real pseudo-terminal, so any serial program can talk to it."""
from __future__ import annotations

import os
import select
import termios
import time
import tty
from collections.abc import Callable

from sim_backend.faults import FaultInjector, LinkFaults
from sim_backend.firmware import FirmwareEngine


class PtyBoard:
    """A pty whose master end is driven by a FirmwareEngine; `path` is the slave device to open."""

    def __init__(self, engine: FirmwareEngine, faults: LinkFaults = LinkFaults()):
        self.engine = engine
        self._inj = FaultInjector(faults)
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd, termios.TCSANOW)  # no echo, no line editing, 8-bit clean
        self.path = os.ttyname(self.slave_fd)
        self._stop = False

    def _send(self, data: bytes) -> None:
        data = self._inj.corrupt(data)
        delay = self._inj.hold_back_s()
        if delay:
            time.sleep(delay)
        view = memoryview(data)
        while view:
            n = os.write(self.master_fd, view)
            view = view[n:]

    def serve(self, poll_s: float = 0.01, stop: Callable[[], bool] | None = None) -> None:
        """Answer the host until `stop()` is true or `close()` is called (Ctrl-C from the CLI)."""
        self._send(self.engine.poll())  # EV_BOOT
        while not self._stop and not (stop and stop()):
            ready, _, _ = select.select([self.master_fd], [], [], poll_s)
            if ready:
                try:
                    data = os.read(self.master_fd, 65536)
                except OSError:
                    data = b""
                if data:
                    self._send(self.engine.feed(self._inj.corrupt(data)))
                    continue
            self._send(self.engine.poll())

    def close(self) -> None:
        self._stop = True
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass
