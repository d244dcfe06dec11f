"""Measurement: a host killed during a long write-verify batch on a served (pty) board, as in issue 15 item 5.

A host process (the real `Board`, keepalives included) starts a batch of `--cells` unconverging cells with
`--max-pulses` each, and is SIGKILLed `--kill-after` seconds later. The board must stop within its watchdog
(2 s by default) after the host's last keepalive, plus one round: this prints how long after the kill it
stopped, how many pulses it applied after the kill, and whether it answered ABORTED and sent EV_WATCHDOG.
Before the fix the board pulsed on for 38 s (about 75,000 pulses) and answered nothing.

    python benchmarks/bench_watchdog_kill.py [--cells 8 --max-pulses 20000 --kill-after 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from firmware_protocol import BoardState, Frame, FrameDecoder, FrameType, Opcode, Status
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from sim_backend.pty_server import PtyBoard

ROOT = Path(__file__).resolve().parents[1]
HOST = """
import sys, numpy as np
from hil.hardware.board import Board
board = Board.open(sys.argv[1])
rows, cols = np.divmod(np.arange(int(sys.argv[2])), 16)
print("go", flush=True)
board.write_verify(rows, cols, 1e-3, 1e-9, max_pulses=int(sys.argv[3]))  # 1 mS: never reached
"""


@dataclass
class KillResult:
    cells: int
    max_pulses: int
    watchdog_s: float
    kill_after_s: float
    stopped_after_kill_s: float  # from SIGKILL to the board's answer
    pulses_after_kill: int
    pulses_total: int
    answer: str  # status of the batch's answer
    ev_watchdog: bool
    state: str


def run(cells: int, max_pulses: int, kill_after: float) -> KillResult:
    engine = FirmwareEngine(BoardConfig(rows=16, cols=16, seed=1))
    rows, cols = np.divmod(np.arange(cells), 16)
    engine.array.form(rows, cols, 4.0, 1000, 1.0)
    server = PtyBoard(engine)
    sent: list[tuple[float, bytes]] = []
    send = server._send

    def recorded(data: bytes) -> None:  # what the board sends, time-stamped
        sent.append((time.monotonic(), data))
        send(data)

    server._send = recorded  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve, kwargs={"poll_s": 0.002}, daemon=True)
    thread.start()
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, server.path, str(cells), str(max_pulses)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == "go"
        time.sleep(kill_after)
        c = engine.counters
        at_kill = c.set + c.reset
        killed = time.monotonic()
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        deadline = killed + 60
        while engine.state != BoardState.SAFE_IDLE and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.5)
        total = c.set + c.reset
    finally:
        server.close()
        thread.join(timeout=5)
    answer, stopped, watchdog_event = "none", float("nan"), False
    decoder = FrameDecoder()
    for t, data in sent:
        for f in decoder.feed(data):
            if isinstance(f, Frame) and f.type == FrameType.RESPONSE and f.opcode == Opcode.WRITE_VERIFY:
                answer, stopped = Status(f.status).name, t - killed
            watchdog_event |= isinstance(f, Frame) and f.opcode == Opcode.EV_WATCHDOG
    return KillResult(
        cells,
        max_pulses,
        engine.config.watchdog_ms / 1000,
        kill_after,
        round(stopped, 3),
        total - at_kill,
        total,
        answer,
        watchdog_event,
        engine.state.name,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--max-pulses", type=int, default=20_000)
    ap.add_argument("--kill-after", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.cells, a.max_pulses, a.kill_after)
    if a.json:
        print(json.dumps(asdict(r)))
        return
    for k, v in asdict(r).items():
        print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
