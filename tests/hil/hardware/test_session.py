"""The session layer on its own (handshake, typed calls, refusals) and Board.open's keyword options."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import serial

from firmware_protocol import Frame, FrameDecoder, FrameType, Opcode, Status, VersionError
from firmware_protocol import messages as m
from firmware_protocol.constants import SessionEnd
from firmware_protocol.errors import BadArgumentError, SessionActiveError
from hil.hardware import Board, BoardSession
from hil.hardware.session import SESSION_WAIT_FACTOR, SESSION_WAIT_MARGIN_S, BoardResetError
from hil.hardware.transport import BoardConnectionError
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from sim_backend.link import SimLink


def _session(events: list[Frame] | None = None) -> BoardSession:
    link = SimLink(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1)))
    return BoardSession(link, port="sim-test", on_event=None if events is None else events.append)


def test_a_bare_session_handshakes_and_answers_with_the_declared_types() -> None:
    events: list[Frame] = []
    with _session(events) as s:
        assert (s.rows, s.cols) == (8, 8) and s.describe()["port"] == "sim-test"
        assert [e.opcode for e in events] == [Opcode.EV_BOOT]  # the power-up event reached the callback
        counters = s.call(m.CountersRequest())
        assert isinstance(counters, m.Counters) and counters.reads == 0
        read, status = s.call_status(m.ReadRequest(0, 0, 100))
        assert isinstance(read, m.ReadResult) and status == Status.OK and read.v_read_mv == 100
        assert s.call(m.CountersRequest()).reads == 1
        assert s.stats.requests == 4 and s.stats.retries == 0  # HELLO and three calls, each answered at once


def test_a_refused_request_raises_the_error_of_its_status() -> None:
    with _session() as s, pytest.raises(BadArgumentError, match="no running stream 3"):
        s.call(m.StreamResend(3, 0))


class _Doubling:
    """A read-path correction that doubles every current and remembers what it was given."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def apply(self, current_a: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(current_a, dtype=float))
        return current_a * 2


def test_board_open_passes_its_keyword_options_on() -> None:
    events: list[Frame] = []
    cal = _Doubling()
    with Board.open(
        "sim://?seed=2&rows=8&cols=8", timeout_s=0.3, retries=4, on_event=events.append, calibration=cal
    ) as b:
        assert isinstance(b, BoardSession)
        assert (b.base_timeout_s, b.retries, b.calibration) == (0.3, 4, cal)
        assert [e.opcode for e in events] == [Opcode.EV_BOOT]
        r = b.read(1, 1)
        assert len(cal.seen) == 1 and r.current_a == pytest.approx(2 * float(cal.seen[0]))


# ------------------------------------------------------------------------------------------- one host per board
def _shared_board(watchdog_ms: int) -> SimLink:
    """A link into a board whose watchdog is `watchdog_ms`; `.another_host()` wires a second host to it."""
    return SimLink(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1, watchdog_ms=watchdog_ms)))


def test_close_releases_the_session_so_the_next_host_gets_in_at_once() -> None:
    link = _shared_board(2000)
    first = BoardSession(link, port="bench")
    first.call(m.ReadRequest(0, 0, 100))
    first.close()
    first.close()  # idempotent: nothing more is sent
    t0 = time.monotonic()
    with BoardSession(link.another_host(), port="bench") as second:
        assert time.monotonic() - t0 < 0.5  # no wait for the first host's 2 s watchdog
        assert second.info.prev_session_end == SessionEnd.RELEASED
        assert second.call(m.ReadRequest(0, 0, 100)).v_read_mv == 100


def test_a_second_host_waits_out_a_silent_host_until_its_watchdog_fires(caplog: pytest.LogCaptureFixture) -> None:
    link = _shared_board(300)
    first = BoardSession(link, port="bench")  # ... then falls silent without closing (a crashed host)
    first.call(m.ReadRequest(0, 0, 100))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), BoardSession(link.another_host(), port="bench") as second:
        waited = time.monotonic() - t0
        assert second.info.prev_session_end == SessionEnd.WATCHDOG
    # refused until the 0.3 s watchdog fired, then let in at the next HELLO (every 0.1 s)
    assert 0.25 < waited < 0.3 * SESSION_WAIT_FACTOR + SESSION_WAIT_MARGIN_S
    text = caplog.text
    assert "in use by another host; waiting up to 0.8 s" in text
    assert "the previous host stopped without closing; the board's watchdog grounded its outputs" in text


def test_a_live_session_refuses_a_second_host_in_one_line() -> None:
    link = _shared_board(300)
    first = BoardSession(link, port="/dev/ttyX")
    stop = threading.Event()

    def keep_talking() -> None:
        while not stop.is_set():
            first.call(m.HeartbeatRequest())
            time.sleep(0.05)

    talker = threading.Thread(target=keep_talking, daemon=True)
    talker.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(SessionActiveError) as refused:
            BoardSession(link.another_host(), port="/dev/ttyX")
        waited = time.monotonic() - t0
    finally:
        stop.set()
        talker.join(timeout=5)
    text = str(refused.value)
    assert "\n" not in text and text.startswith("board SIM-RRAM on /dev/ttyX is in use by another host")
    assert "its session did not end within 0.8 s" in text and "`rram board release --port /dev/ttyX`" in text
    assert 0.3 * SESSION_WAIT_FACTOR + SESSION_WAIT_MARGIN_S <= waited < 2.0
    assert first.call(m.CountersRequest()).reads == 0  # the first host never noticed


def test_a_session_with_the_watchdog_disabled_is_refused_at_once_and_taken_over_on_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = _shared_board(0)
    first = BoardSession(link, port="bench")
    t0 = time.monotonic()
    with pytest.raises(SessionActiveError, match=r"its watchdog is disabled\); close that program"):
        BoardSession(link.another_host(), port="bench")
    assert time.monotonic() - t0 < 0.5  # nothing to wait for
    with caplog.at_level(logging.WARNING), BoardSession(link.another_host(), port="bench", take_over=True) as third:
        assert third.info.prev_session_end == SessionEnd.TAKEN_OVER
    assert "took the board over from another host's session" in caplog.text
    with pytest.raises(BoardResetError, match="another host ended this host's session"):
        first.call(m.ReadRequest(0, 0, 100))  # the first host learns it lost the board at its next request


class _ScriptedBoard:
    """A byte link whose board answers every request with `answer(request frame)`; `fail` breaks it."""

    def __init__(self, answer: Callable[[Frame], Frame]) -> None:
        self.answer = answer
        self.timeout: float | None = 0.05
        self._rx = b""
        self._decoder = FrameDecoder()
        self.fail: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.fail is not None:
            raise self.fail
        for f in self._decoder.feed(data):
            if isinstance(f, Frame):
                self._rx += self.answer(f).encode()
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if self.fail is not None:
            raise self.fail
        out, self._rx = self._rx[:size], self._rx[size:]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def reset_input_buffer(self) -> None:
        self._rx = b""

    def close(self) -> None:
        pass


def test_a_board_of_another_major_is_refused_before_its_hello_layout_is_read() -> None:
    engine = FirmwareEngine(BoardConfig(rows=8, cols=8))

    def future_board(f: Frame) -> Frame:  # a 3.1 board whose HelloInfo has grown: only bytes 0-1 are frozen
        return Frame(FrameType.RESPONSE, f.seq, f.opcode, payload=bytes([3, 1]) + engine.hello_info.encode()[2:] + b"x")

    with pytest.raises(VersionError, match=r"speaks protocol 3\.1; this host speaks 2\.\d+ \(major versions must"):
        BoardSession(_ScriptedBoard(future_board), port="bench")


def test_a_link_that_breaks_is_one_connection_error_line_and_close_still_works() -> None:
    engine = FirmwareEngine(BoardConfig(rows=8, cols=8))
    board = _ScriptedBoard(lambda f: engine.hello_info.to_frame(f.seq))  # answers the HELLO, then breaks
    session = BoardSession(board, port="/dev/ttyUSB0")
    board.fail = serial.SerialException("write failed: [Errno 5] Input/output error")
    for _ in range(2):  # and every later call says the same at once
        with pytest.raises(BoardConnectionError) as lost:
            session.call(m.ReadRequest(0, 0, 100))
        assert str(lost.value) == (
            "board on /dev/ttyUSB0 stopped answering: the link was closed (write failed: [Errno 5] Input/output error)"
        )
    session.close()  # no RELEASE over a dead link, no error
