"""Benchmark: how well the host's Board client and the simulated firmware use a 921,600-baud serial line, for
single READs, block READs and an ENDURANCE stream.

A serial line at 921,600 baud with 8N1 framing carries 92,160 bytes/s in each direction. By default the
benchmark puts such a line between the host and the board (`PacedLink`: each direction delivers one byte per
10 bit times, on its own clock; the protocol and both programs are unchanged), so the measured cell rate over
the limit the bytes allow says how much of the line the host and the firmware use. The host sends one request
and waits for its answer, so a READ or READ_BLOCK costs (request + response bytes) of line time; a stream's
events flow while its acks go the other way, so it costs the larger of its two directions.

The board is served on a real pty (`pty`, the firmware in a thread of this process) or in process (`inproc`).
`--baud 0` leaves the line out: a pty has no baud rate of its own, so that figure (the ratio may exceed 1)
only says that the software outruns a 921,600-baud line, not how well such a line is used. The emulated line
is ideal (no USB-serial latency); a sleep overshoots by some tens of microseconds, which costs the shortest
exchanges (single READs, under a millisecond of line time) a few per cent.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from hil.hardware.board import Board
from hil.hardware.transport import DEFAULT_BAUD
from sim_backend.board_config import BoardConfig
from sim_backend.c_firmware import make_engine
from sim_backend.pty_server import PtyBoard
from sim_backend.sim_url import make_sim_url

BITS_PER_BYTE = 10  # 8N1: a start bit, 8 data bits, a stop bit


class CountingLink:
    """Passes everything to a pyserial-like link and counts the bytes in each direction."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.tx = 0
        self.rx = 0

    @property
    def timeout(self) -> float | None:
        return self.inner.timeout  # type: ignore[attr-defined]

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.inner.timeout = value  # type: ignore[attr-defined]

    @property
    def in_waiting(self) -> int:
        return self.inner.in_waiting  # type: ignore[attr-defined]

    def write(self, data: bytes) -> int | None:
        self.tx += len(data)
        return self.inner.write(data)  # type: ignore[attr-defined]

    def read(self, size: int = 1) -> bytes:
        data = self.inner.read(size)  # type: ignore[attr-defined]
        self.rx += len(data)
        return data

    def reset_input_buffer(self) -> None:
        self.inner.reset_input_buffer()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def _sleep_until(t: float) -> None:
    left = t - time.perf_counter()
    if left > 0:
        time.sleep(left)


class PacedLink:
    """A serial line of `baud` (8N1) between the host and an unpaced link (a pty, an in-process board).

    Host to board: `write` returns once the last byte has crossed the line (the board hears nothing before).
    Board to host: bytes are taken from the link as soon as the board sends them and handed to the host one
    byte time after another; `in_waiting` and `read` (pyserial semantics, with its timeout) see only bytes
    that have arrived. Each direction keeps its own clock, as a UART does: the line is full duplex.
    """

    def __init__(self, inner: object, baud: int) -> None:
        if baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        self.inner = inner
        self.byte_s = BITS_PER_BYTE / baud
        self._timeout: float | None = inner.timeout  # type: ignore[attr-defined]
        inner.timeout = 0  # type: ignore[attr-defined]  # pulls from the link never block
        self._arrived = bytearray()
        self._flight: deque[tuple[float, bytes]] = deque()  # (arrival of its first byte, bytes) in flight
        self._rx_free = 0.0  # when the board-to-host direction is free again
        self._tx_free = 0.0

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value

    def write(self, data: bytes) -> int | None:
        self._tx_free = max(time.perf_counter(), self._tx_free) + len(data) * self.byte_s
        _sleep_until(self._tx_free)
        return self.inner.write(data)  # type: ignore[attr-defined]

    def _pull(self) -> float:
        """Take what the board sent into flight; land what has arrived by now. Returns now."""
        waiting = self.inner.in_waiting  # type: ignore[attr-defined]
        if waiting:
            data = self.inner.read(waiting)  # type: ignore[attr-defined]
            if data:
                first = max(time.perf_counter(), self._rx_free) + self.byte_s
                self._rx_free = first + (len(data) - 1) * self.byte_s
                self._flight.append((first, bytes(data)))
        now = time.perf_counter()
        while self._flight:
            first, data = self._flight[0]
            landed = min(len(data), int((now - first) / self.byte_s) + 1) if now >= first else 0
            if not landed:
                break
            self._arrived += data[:landed]
            if landed < len(data):
                self._flight[0] = (first + landed * self.byte_s, data[landed:])
                break
            self._flight.popleft()
        return now

    def _arrival_of(self, count: int) -> float | None:
        """When the count-th byte still in flight arrives (None: not that many in flight)."""
        for first, data in self._flight:
            if count <= len(data):
                return first + (count - 1) * self.byte_s
            count -= len(data)
        return None

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._arrived)

    def read(self, size: int = 1) -> bytes:
        deadline = None if self._timeout is None else time.perf_counter() + self._timeout
        while True:
            now = self._pull()
            if len(self._arrived) >= size or (deadline is not None and now >= deadline):
                out = bytes(self._arrived[:size])
                del self._arrived[:size]
                return out
            wake = self._arrival_of(size - len(self._arrived))
            if wake is None:
                wake = now + 0.0002  # nothing (enough) in flight: look at the link again shortly
            _sleep_until(wake if deadline is None else min(wake, deadline))

    def reset_input_buffer(self) -> None:
        self._arrived.clear()
        self._flight.clear()
        self.inner.reset_input_buffer()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


@dataclass
class Rate:
    """One access pattern: measured cell rate, wire bytes per cell, the line's limit and the share of it used."""

    transport: str
    line: str  # "921600 baud" (emulated) or "unpaced"
    pattern: str
    cells: int
    seconds: float
    cells_per_s: float
    wire_bytes_per_cell: float  # both directions
    limit_cells_per_s: float
    ratio: float


def _measure(link: CountingLink, transport: str, baud: int, pattern: str, fn, cells: int, duplex: bool) -> Rate:
    """Time fn (after a warm-up call) and rate it against a line of `baud` (0: the 921,600-baud line a board has,
    which then was not emulated): duplex patterns use both directions at once."""
    fn()  # warm-up (first call pays imports and allocations)
    link.tx = link.rx = 0
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    line_bytes = max(link.tx, link.rx) if duplex else link.tx + link.rx
    limit = cells * ((baud or DEFAULT_BAUD) / BITS_PER_BYTE) / line_bytes
    rate = cells / dt
    line = f"{baud} baud" if baud else "unpaced"
    return Rate(transport, line, pattern, cells, dt, rate, (link.tx + link.rx) / cells, limit, rate / limit)


def bench(
    transport: str,
    baud: int,
    n_reads: int,
    n_blocks: int,
    n_points: int,
    rows: int,
    cols: int,
    firmware: str = "python",
) -> list[Rate]:
    """Every pattern over one transport, through the emulated line (baud > 0) or straight (baud 0), on the
    Python or the C board firmware."""
    server = thread = None
    if transport == "pty":
        server = PtyBoard(make_engine(firmware, BoardConfig(rows=rows, cols=cols, seed=0)))
        thread = threading.Thread(target=server.serve, kwargs={"poll_s": 0.002}, daemon=True)
        thread.start()
        url = server.path
    else:
        url = make_sim_url(0, rows, cols, persist=0, firmware=firmware)
    try:
        with Board.open(url) as board:
            inner = PacedLink(board.link, baud) if baud else board.link
            link = CountingLink(inner)
            board.link = link
            k = [0]

            def reads() -> None:
                for _ in range(n_reads):
                    i = k[0] = (k[0] + 1) % (rows * cols)
                    board.read(i // cols, i % cols)

            out = [_measure(link, transport, baud, "READ", reads, n_reads, duplex=False)]
            for nr, nc in ((8, 8), (32, 32), (rows, cols)):

                def blocks(nr: int = nr, nc: int = nc) -> None:
                    for _ in range(n_blocks):
                        board.read_block(0, 0, nr, nc)

                out.append(_measure(link, transport, baud, f"READ_BLOCK {nr}x{nc}", blocks, nr * nc * n_blocks, False))
            sr, sc = min(32, rows), min(32, cols)

            def stream() -> None:
                for _ in board.endurance(0, 0, sr, sc, 100 * n_points, 100):
                    pass

            out.append(_measure(link, transport, baud, f"ENDURANCE {sr}x{sc}", stream, sr * sc * n_points, True))
            assert board.stats.retries == 0, board.stats
            return out
    finally:
        if server is not None and thread is not None:
            server.close()
            thread.join(timeout=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="emulated line (default 921600); 0: unpaced")
    ap.add_argument("--transport", choices=("pty", "inproc", "both"), default="both")
    ap.add_argument("--reads", type=int, default=1000, help="single READs per measurement")
    ap.add_argument("--blocks", type=int, default=40, help="block reads per block size")
    ap.add_argument("--points", type=int, default=60, help="read points of the endurance stream (100 cycles apart)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--firmware", choices=("python", "c"), default="python", help="the board firmware behind the link")
    args = ap.parse_args()
    for name in ("baud", "reads", "blocks", "points"):
        if getattr(args, name) < (0 if name == "baud" else 1):
            ap.error(f"--{name} must be {'>= 0' if name == 'baud' else '>= 1'}, got {getattr(args, name)}")
    transports = ("pty", "inproc") if args.transport == "both" else (args.transport,)
    rates = [
        r for t in transports for r in bench(t, args.baud, args.reads, args.blocks, args.points, 64, 64, args.firmware)
    ]
    if args.json:
        print(json.dumps([asdict(r) for r in rates], indent=1))
        return
    baud = args.baud or DEFAULT_BAUD
    print(
        f"line limit: {baud / BITS_PER_BYTE:,.0f} bytes/s per direction at {baud:,} baud (8N1); measured over: {rates[0].line}"
    )
    share = "used" if args.baud else "ratio"  # unpaced, the rate over the limit is not a share of a line
    print(f"{'transport':9} {'pattern':20} {'cells/s':>12} {'bytes/cell':>10} {'limit cells/s':>14} {share:>7}")
    for r in rates:
        used = f"{r.ratio:7.1%}" if args.baud else f"{r.ratio:6.2f}x"
        print(
            f"{r.transport:9} {r.pattern:20} {r.cells_per_s:12,.0f} {r.wire_bytes_per_cell:10.2f} "
            f"{r.limit_cells_per_s:14,.0f} {used}"
        )


if __name__ == "__main__":
    main()
