"""One host per board on a served pty (issue 15): exclusive open, session ownership, crashes and a vanishing board."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from firmware_protocol.constants import SessionEnd
from hil.hardware.board import Board, BoardConnectionError
from hil.hardware.session import SESSION_WAIT_FACTOR, SESSION_WAIT_MARGIN_S
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from tests.helpers.boards import PtySim
from tests.helpers.cli import assert_one_line_error, rram


@pytest.fixture
def served() -> Iterator[PtySim]:
    sim = PtySim(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1)))
    yield sim
    sim.close()


def test_a_second_program_on_a_served_port_is_refused_in_one_line(served: PtySim) -> None:
    with Board.open(served.path) as first:
        with pytest.raises(BoardConnectionError) as refused:
            Board.open(served.path)
        text = str(refused.value)
        assert text.startswith(f"port {served.path} is in use by another program (pid {os.getpid()}: ")
        assert text.endswith("); close it first") and "\n" not in text
        assert first.read(0, 0).code > 0  # the first host lost nothing
    with Board.open(served.path) as again:  # closed (and released): the port is free at once
        assert again.info.prev_session_end == SessionEnd.RELEASED


def _bench_two_hosts() -> ModuleType:
    """benchmarks/bench_two_hosts.py, whose harness this test runs at a smaller size."""
    root = Path(__file__).resolve().parents[3] / "benchmarks"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("bench_two_hosts")


def test_two_hosts_on_one_board_give_no_duplicated_pulse() -> None:
    """Issue 15 target: N SETs by host 1 on a faulty link while host 2 knocks (lock bypassed) give N set pulses."""
    run = _bench_two_hosts().two_hosts(150, flip=0.002, drop=0.002)
    assert run.set_pulses == 150 and run.duplicated == 0  # every retry (faults, stolen bytes) hit the cache
    assert run.host1_retries > 0 and run.host2_hellos > 100  # the link really was disturbed, host 2 kept trying
    assert run.host2_let_in == 0  # host 2 never got in
    assert (
        run.second_open_refused.startswith("port /dev/") and "is in use by another program" in run.second_open_refused
    )


_CRASHING_HOST = """
import sys, time
from hil.hardware.board import Board
b = Board.open(sys.argv[1])
stream = b.endurance(0, 0, 4, 4, 10_000_000, 100, set_v=1.2, set_gate=1.2, reset_v=-1.5)
next(stream)
print("streaming", flush=True)
time.sleep(600)
"""


def test_a_host_killed_mid_stream_frees_the_board_within_its_watchdog(
    served: PtySim, caplog: pytest.LogCaptureFixture
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_HOST, served.path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING), Board.open(served.path) as host2:  # at once: the watchdog is running
            waited = time.monotonic() - t0
            assert host2.info.prev_session_end == SessionEnd.WATCHDOG and host2.info.prev_stream_id != 0xFFFF
            assert host2.read(0, 0).code > 0  # a new request runs: no "endurance stream 1 is running"
            assert sum(1 for _ in host2.endurance(0, 0, 2, 2, 200, 100, set_v=1.2, set_gate=1.2, reset_v=-1.5)) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert waited < 2.0 * SESSION_WAIT_FACTOR + SESSION_WAIT_MARGIN_S  # within the 2 s watchdog plus the margin
    stream = host2.info.prev_stream_id
    assert f"the board's watchdog grounded its outputs (stream {stream} stopped)" in caplog.text


def test_a_board_that_vanishes_mid_request_is_one_line(served: PtySim) -> None:
    board = Board.open(served.path)
    engine = served.engine
    read_current = engine.array.read_current

    def unplugged(r: Any, c: Any, v_read: float | np.ndarray, at_ns: Any = None) -> np.ndarray:
        served.server.unplug()  # the pty goes away while the board works on the request
        return read_current(r, c, v_read, at_ns)

    engine.array.read_current = unplugged  # type: ignore[method-assign]
    t0 = time.monotonic()
    with pytest.raises(BoardConnectionError) as lost:
        board.read_block(0, 0, 8, 8)
    text = str(lost.value)
    assert text.startswith(f"board on {served.path} stopped answering: the link was closed (") and "\n" not in text
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(BoardConnectionError, match="stopped answering"):
        board.counters()
    board.close()


def test_rram_board_release_frees_a_board_that_a_vanished_host_holds(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = PtySim(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1, watchdog_ms=0)))  # no watchdog to free it
    try:
        gone = Board.open(sim.path)
        gone.link.close()  # the host vanishes without releasing its session (and its port lock)
        r = rram(capsys, monkeypatch, "board", "info", "--port", sim.path)
        assert_one_line_error(
            r,
            f"board SIM-RRAM on {sim.path} is in use by another host (its watchdog is disabled)",
            "rram board release",
        )
        r = rram(capsys, monkeypatch, "board", "release", "--port", sim.path)
        assert r.code == 0 and f"board SIM-RRAM on {sim.path}: took over another host's session; released" in r.out
        r = rram(capsys, monkeypatch, "board", "info", "--port", sim.path)
        assert r.code == 0 and "SIM-RRAM" in r.out
        r = rram(capsys, monkeypatch, "board", "release", "--port", sim.path)
        assert r.code == 0 and "no other host held it; released" in r.out
        assert "WARNING" in rram(capsys, monkeypatch, "board", "release", "--help").out
    finally:
        sim.close()
