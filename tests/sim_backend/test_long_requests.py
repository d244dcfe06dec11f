"""Long requests under the watchdog (PROTOCOL.md 3.7): the board hears the host between two pulses.

A write-verify batch, a DC I-V sweep or a FORM ramp stops between two pulses when no request frame
arrived for watchdog_ms, is answered with what was done (ABORTED) and followed by EV_WATCHDOG;
keepalive HEARTBEAT(0)s sent while it runs keep it going without changing a single number.
The engine tests use a fake wall clock that moves STEP_S per poll of the input, so every count is exact.
"""

from __future__ import annotations

import os
import select
import time
import tty
from collections.abc import Callable

import numpy as np
import pytest

from firmware_protocol import BoardState, CellResult, Frame, FrameDecoder, FrameType, Opcode, Status
from firmware_protocol import messages as m
from hil.hardware.board import Board
from sim_backend.board_config import BoardConfig
from tests.conftest import FIRMWARES
from tests.helpers.boards import PtySim, new_engine
from tests.sim_backend.test_firmware import ALL_COLS, ALL_ROWS, COLS, ROWS, FakeClock, Host, wv_request

pytestmark = pytest.mark.parametrize("firmware", FIRMWARES, indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def _each_firmware(firmware: str) -> str:
    """Every test of the module runs once per firmware (new_engine builds the one in use)."""
    return firmware


STEP_S = 0.25  # fake wall time per poll of the input (a binary fraction: the expiry falls on an exact poll)
WATCHDOG_S = 2.0  # the simulated board's default watchdog
SILENT_ROUNDS = int(WATCHDOG_S / STEP_S) - 1  # polls 1..7 see 0.25..1.75 s after the request, poll 8 sees 2.0 s
UNREACHABLE = 1e-3  # S: far above any LRS, so every round pulses every cell


class Line:
    """`poll_input` of an engine: each poll lets STEP_S of wall time pass and delivers what `sends(k)` gives."""

    def __init__(self, clock: FakeClock, sends: Callable[[int], bytes] | None = None) -> None:
        self.clock = clock
        self.sends = sends or (lambda k: b"")
        self.polls = 0

    def __call__(self) -> bytes:
        self.polls += 1
        self.clock.t += STEP_S
        return self.sends(self.polls)


def make_host(sends: Callable[[int], bytes] | None = None, poll: bool = True, form: bool = True) -> Host:
    """An 8x8 board (all cells formed directly, set-up) after HELLO, whose input is `Line(sends)` (or none)."""
    clock = FakeClock()
    engine = new_engine(BoardConfig(rows=ROWS, cols=COLS, seed=3), wall_clock=clock)
    if poll:
        engine.poll_input = Line(clock, sends)
    if form:
        engine.array.form(ALL_ROWS, ALL_COLS, 4.0, 1000, 1.0)
    h = Host(engine)
    h.poll()
    h.hello()
    return h


def send(h: Host, msg: m.Message, seq: int = 0x0100) -> tuple[Frame, list]:
    """One request; its answer and everything the board sent with it (keepalive answers included)."""
    items = h.send_raw(msg.to_frame(seq).encode())
    (answer,) = [f for f in items if isinstance(f, Frame) and f.type == FrameType.RESPONSE and f.seq == seq]
    return answer, items


def frames(items: list) -> list[tuple[FrameType, int]]:
    return [(f.type, f.opcode) for f in items if isinstance(f, Frame)]


def pulses_applied(h: Host) -> int:
    c = h.engine.counters
    return c.form + c.set + c.reset


def unreachable_batch(n: int, max_pulses: int) -> m.WriteVerifyRequest:
    return wv_request(ALL_ROWS[:n], ALL_COLS[:n], np.full(n, UNREACHABLE), 1e-9, max_pulses=max_pulses)


# ------------------------------------------------------------------------------------------- write-verify
def test_a_silent_host_stops_a_write_verify_batch_between_two_rounds() -> None:
    h = make_host()
    before = pulses_applied(h)
    frame, items = h.exchange(unreachable_batch(4, 1000))
    assert frame.status == Status.ABORTED
    res = m.WriteVerifyResult.decode(frame.payload)
    assert (res.results["pulses"] == SILENT_ROUNDS).all()
    assert (res.results["status"] == CellResult.ABORTED).all()
    assert pulses_applied(h) - before == 4 * SILENT_ROUNDS  # 28 pulses, not 4000
    assert frames(items) == [(FrameType.RESPONSE, Opcode.WRITE_VERIFY), (FrameType.EVENT, Opcode.EV_WATCHDOG)]
    assert h.engine.state == BoardState.SAFE_IDLE
    h.engine.poll_input = None
    h.engine._clock.t += 60  # type: ignore[attr-defined]
    assert frames(h.poll()) == []  # disarmed: one EV_WATCHDOG, nothing more
    hb = h.ok(m.HeartbeatRequest(0))
    assert isinstance(hb, m.HeartbeatReply) and hb.state == BoardState.SAFE_IDLE  # a host that missed it learns it


def test_keepalives_let_a_batch_finish_with_the_numbers_of_an_undisturbed_one() -> None:
    keepalive = m.HeartbeatRequest(0).to_frame(0x1234).encode()  # one seq, re-sent identically (PROTOCOL.md 3.2)
    h = make_host(lambda k: keepalive if k % 4 == 0 else b"")  # every 1.0 s of a 2.0 s watchdog
    quiet = make_host(poll=False)
    req = unreachable_batch(6, 40)  # 40 rounds: 10 s of wall time, five watchdog periods
    frame, items = send(h, req, seq=7)
    ref, _ = send(quiet, req, seq=7)
    assert frame.status == Status.OK and frame.payload == ref.payload  # same pulses, reads and time stamps
    assert h.engine.array.clock_ns == quiet.engine.array.clock_ns
    assert h.engine.counters == quiet.engine.counters
    # the batch's answer first, then the 10 keepalives' (the first executed, the others from the cache)
    responses = [f for f in items if isinstance(f, Frame)]
    assert [(f.opcode, f.seq) for f in responses] == [(Opcode.WRITE_VERIFY, 7)] + [(Opcode.HEARTBEAT, 0x1234)] * 10
    assert len({f.payload for f in responses[1:]}) == 1 and h.engine.state == BoardState.IDLE


def test_an_abort_that_arrives_during_a_batch_stops_it() -> None:
    abort = m.AbortRequest().to_frame(0x0200).encode()
    h = make_host(lambda k: abort if k == 3 else b"")
    frame, items = send(h, unreachable_batch(3, 1000))
    assert frame.status == Status.ABORTED
    res = m.WriteVerifyResult.decode(frame.payload)
    assert (res.results["pulses"] == 2).all() and (res.results["status"] == CellResult.ABORTED).all()
    assert frames(items) == [(FrameType.RESPONSE, Opcode.WRITE_VERIFY), (FrameType.RESPONSE, Opcode.ABORT)]


def test_without_an_input_to_poll_a_long_batch_is_never_stopped() -> None:
    """In process (SimLink) the host's own thread runs the request: it cannot fall silent meanwhile."""
    h = make_host(poll=False)
    clock = h.engine._clock
    h.engine._clock = lambda: clock() + 1e6 * pulses_applied(h)  # 11 days of wall time per pulse
    frame, items = h.exchange(unreachable_batch(2, 30))
    assert frame.status == Status.OK and frames(items) == [(FrameType.RESPONSE, Opcode.WRITE_VERIFY)]


# ------------------------------------------------------------------------------------------- I-V and FORM
def test_a_silent_host_stops_a_dc_iv_sweep_with_the_points_done() -> None:
    h = make_host()
    req = m.IvSweepRequest(0, 0, 100, 1123, 1024, 1_000_000, 1200, 1)  # 1 ms per point: a 1 s sweep
    frame, items = h.exchange(req)
    assert frame.status == Status.ABORTED
    res = m.IvSweepResult.decode(frame.payload)
    assert res.n == SILENT_ROUNDS
    assert res.v_mv.tolist() == list(range(100, 100 + res.n))
    assert h.engine.counters.set == res.n
    assert frames(items)[-1] == (FrameType.EVENT, Opcode.EV_WATCHDOG)


def test_a_silent_host_stops_a_form_ramp_with_the_pulses_done() -> None:
    h = make_host(form=False)
    frame, _ = h.exchange(m.FormRequest(0, 0, 100, 5000, 1, 1000, 1000, 100, 5000))  # 4901 steps of 1 mV
    assert frame.status == Status.ABORTED
    res = m.FormResult.decode(frame.payload)
    assert (res.formed, res.pulses, res.v_final_mv) == (0, SILENT_ROUNDS, 100 + SILENT_ROUNDS - 1)
    assert h.engine.counters.form == SILENT_ROUNDS


# ------------------------------------------------------------------------------------------- on a pty
class RawHost:
    """A host that writes raw frames to a pty and timestamps what it reads back."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.decoder = FrameDecoder()
        self.received: list[tuple[float, Frame]] = []

    def send(self, wire: bytes) -> None:
        os.write(self.fd, wire)

    def read_until(self, done: Callable[[Frame], bool], timeout_s: float) -> Frame:
        """The first frame received (now or before) for which `done` is true."""
        end = time.monotonic() + timeout_s
        while True:
            found = next((f for _, f in self.received if done(f)), None)
            if found is not None:
                return found
            if time.monotonic() > end:
                raise AssertionError(f"nothing awaited arrived in {timeout_s} s; got {[f for _, f in self.received]}")
            if select.select([self.fd], [], [], 0.01)[0]:
                now = time.monotonic()
                self.received += [(now, f) for f in self.decoder.feed(os.read(self.fd, 65536)) if isinstance(f, Frame)]

    def close(self) -> None:
        os.close(self.fd)


def test_a_host_that_stops_talking_one_second_into_a_batch_stops_the_board_within_the_watchdog() -> None:
    engine = new_engine(BoardConfig(rows=16, cols=16, seed=1))
    rows, cols = np.divmod(np.arange(8), 16)
    engine.array.form(rows, cols, 4.0, 1000, 1.0)
    sim = PtySim(engine)
    host = RawHost(sim.path)
    try:
        host.send(m.HelloRequest(2, 0).to_frame(1).encode())
        host.read_until(lambda f: f.type == FrameType.RESPONSE and f.seq == 1, 5)
        host.send(m.HeartbeatRequest(1000).to_frame(2).encode())  # a 1 s watchdog
        host.read_until(lambda f: f.type == FrameType.RESPONSE and f.seq == 2, 5)
        e = np.zeros(8, m.WV_ENTRY)
        e["row"], e["col"], e["target_s"], e["tol_s"], e["max_pulses"] = rows, cols, UNREACHABLE, 1e-9, 20_000
        wv = m.WriteVerifyRequest(100, 100, 1200, 1200, 0, 700, 1300, 10, -700, -1500, -10, 3300, 8, e)
        start = time.monotonic()
        host.send(wv.to_frame(3).encode())  # 160,000 pulses: minutes on this simulator
        keepalive = m.HeartbeatRequest(0).to_frame(4).encode()
        sent_before = last = start
        while last - start < 1.0:  # keepalives for 1 s, then the host is gone
            time.sleep(0.3)
            sent_before = time.monotonic()  # the firmware cannot hear it before this instant...
            host.send(keepalive)
            last = time.monotonic()  # ...and heard it by this one at the latest (plus the pty's latency)
        answer = host.read_until(lambda f: f.type == FrameType.RESPONSE and f.seq == 3, 10)
        got = next(t for t, f in host.received if f is answer)
        host.read_until(lambda f: f.type == FrameType.RESPONSE and f.seq == 4, 2)  # the keepalives' answers
        after = [(f.type, f.opcode) for _, f in host.received[[f for _, f in host.received].index(answer) :]]
        applied = engine.counters.set + engine.counters.reset
        time.sleep(0.3)
        assert engine.counters.set + engine.counters.reset == applied  # the pulses stopped
    finally:
        host.close()
        sim.close()
    # the keepalives kept it going (no answer before 1 s after the last one was written: the firmware may
    # hear it before this thread reads the clock again) and it stopped within one watchdog period of them
    # plus a round, the pty's latency and scheduling on a loaded 2-core CI machine (1.5 s of slack;
    # undisturbed, the batch would run for minutes)
    assert 1.0 <= got - sent_before and got - last <= 1.0 + 1.5, (got - start, sent_before - start, last - start)
    assert answer.status == Status.ABORTED
    res = m.WriteVerifyResult.decode(answer.payload)
    assert (res.results["status"] == CellResult.ABORTED).all()
    assert 0 < res.results["pulses"].min() and res.results["pulses"].max() < 20_000
    assert applied == int(res.results["pulses"].sum())
    assert engine.state == BoardState.SAFE_IDLE
    # the batch's answer, EV_WATCHDOG, then the answers to the keepalives heard before the expiry
    assert after[:2] == [(FrameType.RESPONSE, Opcode.WRITE_VERIFY), (FrameType.EVENT, Opcode.EV_WATCHDOG)]
    assert set(after[2:]) == {(FrameType.RESPONSE, Opcode.HEARTBEAT)}


def test_the_host_keeps_the_watchdog_fed_through_a_batch_longer_than_it_on_a_pty() -> None:
    engine = new_engine(BoardConfig(rows=16, cols=16, seed=2))
    twin = new_engine(BoardConfig(rows=16, cols=16, seed=2))
    for board_engine in (engine, twin):
        board_engine.array.form(np.array([0]), np.array([0]), 4.0, 1000, 1.0)
    sim = PtySim(engine)
    poll = engine.poll_input
    assert poll is not None

    def slow_poll() -> bytes:  # at least 5 ms per round, whatever the machine: >= 2 s for the batch
        time.sleep(0.005)
        return poll()

    engine.poll_input = slow_poll
    try:
        with Board.open(sim.path, timeout_s=1.0) as board:
            assert board.heartbeat(watchdog_ms=500).watchdog_ms == 500
            t = time.monotonic()
            out = board.write_verify(np.array([0]), np.array([0]), UNREACHABLE, 1e-9, max_pulses=400)
            took = time.monotonic() - t
            assert board.heartbeat().state == BoardState.IDLE
    finally:
        sim.close()
    assert took > 4 * 0.5  # four watchdog periods and more: the keepalives (every 167 ms) kept it going
    assert out.pulses.tolist() == [400] and out.status.tolist() == [CellResult.MAX_PULSES]
    # the same batch on an undisturbed twin: the same numbers, keepalives or not
    h = Host(twin)
    h.hello()
    e = np.zeros(1, m.WV_ENTRY)
    e["target_s"], e["tol_s"], e["max_pulses"] = UNREACHABLE, 1e-9, 400
    ref = h.ok(
        m.WriteVerifyRequest(100, 100, 700, 1600, 20, 1300, 1300, 0, -600, -1800, -20, 3000, 1, e)
    )  # PulseRamp()
    assert out.final_s[0] == pytest.approx(float(ref.results["final_s"][0]), rel=1e-12)  # type: ignore[attr-defined]
    assert out.timestamp_s == ref.timestamp_us / 1e6  # type: ignore[attr-defined]
