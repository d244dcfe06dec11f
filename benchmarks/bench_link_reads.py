"""Benchmark: cells read per second by the host's Board client through a real pty (and in process), for
single READs and block READs, against what the bytes on the wire allow at 921,600 baud.

A serial line at 921,600 baud with 8N1 framing carries 92,160 bytes/s in each direction. The host
sends one request and waits for its answer, so a READ costs (request bytes + response bytes) of line
time; a READ_BLOCK of k cells the same for its larger response. The limit is the cell rate the line
would allow if nothing else took time; the ratio measured / limit says how close the host and the
simulated firmware come to it (a pty has no baud rate of its own, so the ratio may exceed 1: then a
real 921,600-baud cable, not the software, is what would bound the rate).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import asdict, dataclass

from hil.hardware.board import Board
from hil.hardware.transport import DEFAULT_BAUD
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from sim_backend.pty_server import PtyBoard

LINE_BYTES_PER_S = DEFAULT_BAUD / 10  # 8 data bits + start + stop bit per byte


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


@dataclass
class Rate:
    """One access pattern: measured cell rate, wire bytes per cell, and the 921,600-baud limit."""

    transport: str
    pattern: str
    cells: int
    seconds: float
    cells_per_s: float
    wire_bytes_per_cell: float
    limit_cells_per_s: float
    ratio: float


def _measure(
    board: Board, link: CountingLink, transport: str, pattern: str, fn, cells_per_call: int, calls: int
) -> Rate:
    fn()  # warm-up (first call pays imports and allocations)
    link.tx = link.rx = 0
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = time.perf_counter() - t0
    cells = cells_per_call * calls
    per_cell = (link.tx + link.rx) / cells
    limit = LINE_BYTES_PER_S / per_cell
    rate = cells / dt
    return Rate(transport, pattern, cells, dt, rate, per_cell, limit, rate / limit)


def bench(transport: str, n_reads: int, n_blocks: int, rows: int, cols: int) -> list[Rate]:
    server = thread = None
    if transport == "pty":
        server = PtyBoard(FirmwareEngine(BoardConfig(rows=rows, cols=cols, seed=0)))
        thread = threading.Thread(target=server.serve, kwargs={"poll_s": 0.002}, daemon=True)
        thread.start()
        url = server.path
    else:
        url = f"sim://?seed=0&rows={rows}&cols={cols}"
    try:
        with Board.open(url) as board:
            link = CountingLink(board.link)
            board.link = link  # type: ignore[assignment]
            k = [0]

            def single() -> None:
                i = k[0] = (k[0] + 1) % (rows * cols)
                board.read(i // cols, i % cols)

            out = [_measure(board, link, transport, "READ", single, 1, n_reads)]
            for nr, nc in ((8, 8), (32, 32), (rows, cols)):
                out.append(
                    _measure(
                        board,
                        link,
                        transport,
                        f"READ_BLOCK {nr}x{nc}",
                        lambda nr=nr, nc=nc: board.read_block(0, 0, nr, nc),
                        nr * nc,
                        n_blocks,
                    )
                )
            assert board.stats.retries == 0, board.stats
            return out
    finally:
        if server is not None:
            server.close()
            thread.join(timeout=5)  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=2000, help="single READs per measurement")
    ap.add_argument("--blocks", type=int, default=100, help="block reads per block size")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    rates = bench("pty", args.reads, args.blocks, 64, 64) + bench("inproc", args.reads, args.blocks, 64, 64)
    if args.json:
        print(json.dumps([asdict(r) for r in rates], indent=1))
        return
    print(f"line limit: {LINE_BYTES_PER_S:,.0f} bytes/s per direction at {DEFAULT_BAUD:,} baud (8N1)")
    print(f"{'transport':9} {'pattern':20} {'cells/s':>12} {'bytes/cell':>10} {'limit cells/s':>14} {'ratio':>7}")
    for r in rates:
        print(
            f"{r.transport:9} {r.pattern:20} {r.cells_per_s:12,.0f} {r.wire_bytes_per_cell:10.2f} "
            f"{r.limit_cells_per_s:14,.0f} {r.ratio:7.2f}"
        )


if __name__ == "__main__":
    main()
