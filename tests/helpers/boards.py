"""Simulated boards for tests: in process (sim://) or on a pty served from a thread, and chip set-up shortcuts.

`new_engine` makes an engine of the firmware the running test is parametrized with (the `firmware` fixture of
tests/conftest.py: "python" unless a test asks for FIRMWARES), so one conformance test covers both boards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hil.characterize import get_procedure
from hil.characterize.procedure import RunOutcome, run_procedure
from hil.hardware.board import Board
from sim_backend.board_config import DEFAULT_BOARD, BoardConfig
from sim_backend.faults import LinkFaults
from sim_backend.firmware import FirmwareEngine
from sim_backend.pty_server import PtyBoard

_FIRMWARE = ["python"]  # the firmware of the running test (set by the `firmware` fixture)


def set_firmware(name: str) -> str:
    """Make `new_engine` build `name` ("python" or "c") engines; returns the previous name."""
    previous, _FIRMWARE[0] = _FIRMWARE[0], name
    return previous


def current_firmware() -> str:
    return _FIRMWARE[0]


def new_engine(config: BoardConfig = DEFAULT_BOARD, **kw: Any) -> FirmwareEngine:
    """A firmware engine of the running test's firmware (FirmwareEngine or CFirmwareEngine), same arguments."""
    if _FIRMWARE[0] == "c":
        from sim_backend.c_firmware import CFirmwareEngine

        return CFirmwareEngine(config, **kw)
    return FirmwareEngine(config, **kw)


class PtySim:
    """A simulated board served on a pty from a thread (any firmware engine)."""

    def __init__(self, engine: FirmwareEngine) -> None:
        self.engine = engine
        self.server = PtyBoard(engine)
        self.thread = threading.Thread(target=self.server.serve, kwargs={"poll_s": 0.002}, daemon=True)
        self.thread.start()

    @property
    def path(self) -> str:
        return self.server.path

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)


@contextmanager
def open_sim(
    transport: str, seed: int, rows: int = 16, cols: int = 16, faults: LinkFaults | None = None
) -> Iterator[tuple[Board, FirmwareEngine]]:
    """A Board on a simulated board (of the running test's firmware), in process (sim:// URL) or on a pty."""
    faults = LinkFaults() if faults is None else faults
    firmware = {"firmware": "c"} if _FIRMWARE[0] == "c" else {}
    if transport == "inproc":
        from sim_backend.sim_url import make_sim_url

        fault_opts = {
            k: v
            for k, v in (
                ("flip", faults.flip),
                ("drop", faults.drop),
                ("delay", faults.delay),
                ("delay_max", faults.delay_max_s),
                ("reset_after", faults.reset_after),
                ("fault_seed", faults.seed),
            )
            if v
        }  # every LinkFaults field: the in-process link gets the faults the pty link would
        with Board.open(make_sim_url(seed, rows, cols, **fault_opts, **firmware)) as board:
            yield board, board.link.engine  # type: ignore[attr-defined]
        return
    engine = new_engine(BoardConfig(rows=rows, cols=cols, seed=seed))
    server = PtyBoard(engine, faults)
    thread = threading.Thread(target=server.serve, kwargs={"poll_s": 0.002}, daemon=True)
    thread.start()
    try:
        with Board.open(server.path) as board:
            yield board, engine
    finally:
        server.close()
        thread.join(timeout=5)


def form_region(engine: FirmwareEngine, cells: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Form a region directly on the chip (set-up, not under test): flat indices, rows, cols, healthy mask."""
    (r0, r1), (c0, c1) = (tuple(int(x) for x in part.split(":")) for part in cells.split(","))
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    rows, cols = rr.ravel(), cc.ravel()
    engine.array.form(rows, cols, 4.0, 1000, 1.0)
    idx = rows * engine.config.cols + cols
    return idx, rows, cols, healthy(engine, idx)


def healthy(engine: FirmwareEngine, idx: np.ndarray) -> np.ndarray:
    a = engine.array
    return a.formed[idx] & ~a.stuck_lrs[idx] & ~a.stuck_hrs[idx]


def as_measured(engine: FirmwareEngine, g_true: np.ndarray, v_read: float = 0.1) -> np.ndarray:
    """What the board reports for a true conductance: the read chain's true gain/offset, nominal calibration."""
    rd = engine.chain.read
    code = rd.true_offset_code + np.asarray(g_true) * v_read / rd.true_amps_per_code
    return (code - rd.offset_code) * rd.amps_per_code / v_read


def pulses(engine: FirmwareEngine) -> np.ndarray:
    c = engine.counters
    return np.array([c.form, c.set, c.reset])


def run(board: Board, name: str, out: Path, **params: Any) -> RunOutcome:
    """Run procedure `name` on `board` into `out` with these parameters, quietly."""
    cls = get_procedure(name)
    return run_procedure(cls(cls.Params(**params), board), out, quiet=True)
