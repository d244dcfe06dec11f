"""The session layer on its own (handshake, typed calls, refusals) and Board.open's keyword options."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol import Frame, Opcode, Status
from firmware_protocol import messages as m
from firmware_protocol.errors import BadArgumentError
from hil.hardware import Board, BoardSession
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
