"""What the board refuses, and how (PROTOCOL.md 3.1, 3.8, 3.9, 5.3, 7): before the first pulse, with the status
the spec's table gives, and never an overflow: the clock, the counters and every wire field stay in range."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol import SEQ_UNKNOWN, BoardLimits, BoardState, Frame, FrameType, LimitError, Opcode, Status
from firmware_protocol import messages as m
from firmware_protocol.limits import CLOCK_MAX_NS, CLOCK_MAX_US, MAX_STREAM_EVENTS, SemanticLimitError
from sim_backend.board_config import BoardConfig
from sim_backend.device_model import CLOCK_LIMIT_NS, RRAMArray
from sim_backend.firmware import FirmwareEngine
from tests.conftest import FIRMWARES
from tests.helpers.boards import new_engine
from tests.sim_backend.test_firmware import (
    ALL_COLS,
    ALL_ROWS,
    COLS,
    FORM_KW,
    ROWS,
    FakeClock,
    Host,
    endurance_request,
    wv_request,
)

pytestmark = pytest.mark.parametrize("firmware", FIRMWARES, indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def _each_firmware(firmware: str) -> str:
    """Every test of the module runs once per firmware (new_engine builds the one in use)."""
    return firmware


LIM = FirmwareEngine(BoardConfig(rows=16, cols=16)).limits


def make_host(clock: FakeClock | None = None, **config: object) -> Host:
    cfg = BoardConfig(**{"rows": ROWS, "cols": COLS, "seed": 3, **config})  # type: ignore[arg-type]
    engine = new_engine(cfg) if clock is None else new_engine(cfg, wall_clock=clock)
    engine.array.form(ALL_ROWS, ALL_COLS, 4.0, 1000, 1.0)
    h = Host(engine)
    h.poll()
    h.hello()
    return h


def applied(h: Host) -> tuple[int, int, int, int, int]:
    c = h.engine.counters
    return c.form, c.set, c.reset, c.reads, h.engine.array.clock_ns


def refused(h: Host, msg: m.Message) -> tuple[Status, str]:
    """Send `msg`; check nothing was applied (no pulse, no read, clock unchanged) and return the refusal."""
    before = applied(h)
    status, text = h.status(msg)
    assert applied(h) == before, f"{type(msg).__name__} was refused ({status.name}) after applying something"
    assert status != Status.OK and "\n" not in text
    return status, text


# ------------------------------------------------------------------------------------------- the clock
def test_an_advance_clock_past_the_clock_range_is_refused_with_nothing_applied() -> None:
    """Issue 15 item 6: two advance_clock(1.5e13 s) gave INTERNAL to every later request, after the pulse."""
    h = make_host()
    status, text = refused(h, m.AdvanceClockRequest(15 * 10**18))  # 1.5e13 s, beyond ~292 years
    assert status == Status.OUT_OF_RANGE and "beyond the board clock's range" in text
    h.ok(m.AdvanceClockRequest(5 * 10**15))  # 5e9 s: fits
    status, text = refused(h, m.AdvanceClockRequest(5 * 10**15))  # a second one would pass the end
    assert status == Status.OUT_OF_RANGE and "would pass its range" in text
    t = h.engine.array.clock_ns
    assert t >= 5 * 10**18
    res = h.ok(m.SetRequest(0, 0, 1200, 100, 1200))  # the board goes on, with exact time stamps
    assert res.timestamp_us == (t + 1100 + 500) // 1000  # type: ignore[attr-defined]  # 100 ns + 1 us overhead


def test_near_the_end_of_the_clock_every_request_is_refused_before_it_would_pass_it() -> None:
    h = make_host()
    h.engine.array.advance_to_ns(CLOCK_MAX_NS - 50_000)  # 50 us left: a read (10 us) fits, a long batch does not
    assert h.ok(m.ReadRequest(0, 0, 100)).timestamp_us <= CLOCK_MAX_US  # type: ignore[attr-defined]
    for msg in (
        m.ReadBlockRequest(0, 0, 8, 8, 100),
        wv_request(ALL_ROWS[:4], ALL_COLS[:4], np.full(4, 20e-6), 1e-6),
        m.FormRequest(0, 0, **FORM_KW),
        m.IvSweepRequest(0, 0, 100, 1000, 100, 1000, 1200, 0),
        endurance_request(1000, 10),
        m.AdvanceClockRequest(41),
    ):
        status, text = refused(h, msg)
        assert status == Status.OUT_OF_RANGE and "would pass its range" in text, text
    h.ok(m.SetRequest(0, 0, 1200, 100, 1200))  # worst case 10.1 us of the 40 us left; it takes 1.1 us
    assert refused(h, m.AdvanceClockRequest(39))[0] == Status.OUT_OF_RANGE  # 38.9 us left
    assert h.ok(m.AdvanceClockRequest(38)).timestamp_us == CLOCK_MAX_US - 1  # type: ignore[attr-defined]


def test_an_endurance_request_after_the_clock_saturated_is_refused_and_the_board_stays_up() -> None:
    """`rram sim serve` crashed on ENDURANCE once the clock had overflowed; now it is refused before it runs."""
    h = make_host()
    h.engine.array.advance_to_ns(CLOCK_MAX_NS - 10**9)  # one second left
    status, _ = refused(h, endurance_request(10**6, 1000))  # 16 cells x 1e6 cycles x 20 us: 320 s
    assert status == Status.OUT_OF_RANGE
    started = h.ok(endurance_request(20, 10))  # 16 cells x 20 cycles x 20.2 us and the reads: 7 ms, it fits
    assert isinstance(started, m.EnduranceStarted) and started.n_events == 2  # both in the window of 8
    (end,) = [f for f in h.events if f.opcode == Opcode.EV_ENDURANCE_END]
    assert m.EnduranceEnd.decode(end.payload).cycles_done == 20
    h.ok(m.StreamAck(started.stream_id, started.n_events + 1))
    assert h.engine.state == BoardState.IDLE and h.engine.array.clock_ns <= CLOCK_MAX_NS


def test_the_device_clock_refuses_to_move_past_its_range_and_changes_nothing() -> None:
    a = RRAMArray(2, 2, seed=1)
    a.advance_ns(CLOCK_LIMIT_NS - 5)
    g = a.conductance(np.arange(2), np.arange(2)).copy()
    for move in (lambda: a.advance_ns(6), lambda: a.advance(1.0), lambda: a.advance_to_ns(CLOCK_LIMIT_NS + 1)):
        with pytest.raises(ValueError, match="its range ends at"):
            move()
    with pytest.raises(ValueError, match="its range ends at"):
        a.read_current(np.arange(2), np.arange(2), 0.1)  # two reads of 10 us each: no wrap into the past
    with pytest.raises(ValueError, match="its range ends at"):
        a.cycle(np.arange(2), np.arange(2), 10, 5, 1.2, 100, 1.2, -1.5, 100, 3.3, 0.1)
    assert a.clock_ns == CLOCK_LIMIT_NS - 5 and np.array_equal(a.conductance(np.arange(2), np.arange(2)), g)
    a.advance_ns(5)
    assert a.clock_ns == CLOCK_LIMIT_NS


def test_counters_saturate_on_the_wire_and_when_stored() -> None:
    h = make_host()
    h.engine.counters.set = 2**64 + 5
    assert h.ok(m.CountersRequest()).set_pulses == 2**64 - 1  # type: ignore[attr-defined]
    assert int(h.engine.export_state()["counters"][1]) == 2**63 - 1


# ------------------------------------------------------------------------------------------- durations
@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (m.IvSweepRequest(0, 0, -3000, 3000, 101, 0xFFFFFFFF, 3300, 1), "DC hold 4294967295 ns per point exceeds"),
        (m.IvSweepRequest(0, 0, -3000, 3000, 1024, 10_000_000, 3300, 1), "could take up to 10.2502 s"),
        (wv_request(ALL_ROWS, ALL_COLS, np.full(64, 20e-6), 1e-6, max_pulses=50_000), "more than the board's 10 s"),
    ],
)
def test_requests_longer_than_the_declared_bound_are_refused(msg: m.Message, fragment: str) -> None:
    """Issue 15 item 12: a DC I-V hold was unbounded (4.3 s per point at +-3 V); PROTOCOL.md 7.5 bounds them all."""
    h = make_host(max_request_ms=10_000)
    status, text = refused(h, msg)
    assert status == Status.OUT_OF_RANGE and fragment in text, text
    with pytest.raises(LimitError, match=fragment):
        h.engine.limits.check(msg)  # the host refuses the same before sending


def test_the_worst_case_bounds_what_the_simulated_board_takes() -> None:
    """The declared rule is an upper bound of the simulator's clock (o = 10 us >= a read, >= a pulse's 1 us)."""
    h = make_host()
    lim = h.engine.limits
    for msg in (
        m.SetRequest(0, 0, 1200, 100, 1200),
        m.ReadBlockRequest(0, 0, 8, 8, 100),
        m.FormRequest(1, 1, **FORM_KW),
        m.IvSweepRequest(2, 2, -1000, 1000, 51, 5000, 1200, 1),
        wv_request(ALL_ROWS[8:24], ALL_COLS[8:24], np.full(16, 200e-6), 1e-9, max_pulses=30),
    ):
        t0 = h.engine.array.clock_ns
        h.send_raw(msg.to_frame(h._next_seq()).encode())
        assert 0 < h.engine.array.clock_ns - t0 <= lim.worst_case_ns(msg)


# ------------------------------------------------------------------------------------------- statuses
@pytest.mark.parametrize(
    ("msg", "status"),
    [
        # 7.4: read voltage 0 is inside [0, 300] mV but makes no conductance: BAD_ARGUMENT
        (m.ReadRequest(0, 0, 0), Status.BAD_ARGUMENT),
        (m.ReadBlockRequest(0, 0, 2, 2, 0), Status.BAD_ARGUMENT),
        (m.FormRequest(0, 0, **{**FORM_KW, "v_read_mv": 0}), Status.BAD_ARGUMENT),
        (wv_request(ALL_ROWS[:2], ALL_COLS[:2], np.full(2, 2e-5), 1e-6, v_read_mv=0), Status.BAD_ARGUMENT),
        (m.EnduranceRequest(0, 0, 2, 2, 10, 5, 1200, 100, 1200, -1500, 100, 3300, 0), Status.BAD_ARGUMENT),
        # a read voltage outside the declared range is a 7.2 failure: OUT_OF_RANGE
        (m.ReadRequest(0, 0, -5), Status.OUT_OF_RANGE),
        (m.ReadBlockRequest(0, 0, 2, 2, 301), Status.OUT_OF_RANGE),
        # 7.4: a cell twice, read_every > n_cycles
        (wv_request(np.array([1, 1]), np.array([2, 2]), np.full(2, 2e-5), 1e-6), Status.BAD_ARGUMENT),
        (endurance_request(10, 11), Status.BAD_ARGUMENT),
        # 3.9: range checks come first: a request failing both is OUT_OF_RANGE
        (
            wv_request(np.array([1, 1]), np.array([2, 2]), np.full(2, 2e-5), 1e-6, set_v_stop_mv=3100),
            Status.OUT_OF_RANGE,
        ),
        (m.EnduranceRequest(0, 0, 2, 2, 10, 11, 1200, 100, 1200, -1500, 100, 3300, -5), Status.OUT_OF_RANGE),
        (m.EnduranceRequest(0, 0, 2, 2, 0, 1, 1200, 100, 1200, -1500, 100, 3300, 100), Status.OUT_OF_RANGE),
    ],
)
def test_each_refusal_has_the_status_of_the_spec_table(msg: m.Message, status: Status) -> None:
    """Issue 15 item 12: OUT_OF_RANGE where PROTOCOL.md 5.3 / 7.4 say BAD_ARGUMENT; nothing applied either way."""
    h = make_host()
    got, text = refused(h, msg)
    assert got == status, text
    expected = SemanticLimitError if status == Status.BAD_ARGUMENT else LimitError
    with pytest.raises(expected) as exc:
        h.engine.limits.check(msg)  # the host's check says the same
    assert (type(exc.value) is SemanticLimitError) == (status == Status.BAD_ARGUMENT)


def test_an_endurance_block_beyond_65535_cells_is_a_bad_argument() -> None:
    h = make_host(rows=256, cols=256)
    status, text = refused(h, m.EnduranceRequest(0, 0, 256, 256, 1, 1, 1200, 100, 1200, -1500, 100, 3300, 100))
    assert status == Status.BAD_ARGUMENT and "65536 cells exceeds 65535" in text


def test_endurance_event_limit_follows_the_spec_arithmetic() -> None:
    """Issue 15 item 12: 16x16 cells x 2^24 cycles was refused as 'more than 2^32 data events'; it needs 2^24.

    n_events = floor(n_cycles / read_every) * ceil(n_cells / C) must leave room for the final STREAM_ACK
    (n_events + 1 is a u32): at most 2^32 - 2.
    """
    lim = LIM
    big = m.EnduranceRequest(0, 0, 16, 16, 2**24, 1, 1200, 100, 1200, -1500, 100, 3300, 100)
    lim.check(big)
    assert lim.stream_events(big) == 2**24
    one = m.EnduranceRequest(0, 0, 1, 1, MAX_STREAM_EVENTS, 1, 1200, 100, 1200, -1500, 100, 3300, 100)
    lim.check(one)  # 2^32 - 2 events: the last ack is 2^32 - 1
    with pytest.raises(SemanticLimitError, match="4294967295 data events"):
        lim.check(m.EnduranceRequest(0, 0, 1, 1, 2**32 - 1, 1, 1200, 100, 1200, -1500, 100, 3300, 100))
    split = m.EnduranceRequest(0, 0, 1, 2, 2**31, 1, 1200, 100, 1200, -1500, 100, 3300, 100, cells_per_event=1)
    with pytest.raises(SemanticLimitError, match="4294967296 data events"):  # C = 1: two events per point
        lim.check(split)
    lim.check(m.EnduranceRequest(0, 0, 1, 2, 2**31, 1, 1200, 100, 1200, -1500, 100, 3300, 100))  # C = 2


# ------------------------------------------------------------------------------------------- seq 0xFFFF
def test_a_request_with_the_reserved_sequence_number_is_refused_and_never_executed() -> None:
    """3.1: 0xFFFF marks NAKs; a request carrying it is answered BAD_ARGUMENT (seq 0xFFFF), not run, not cached."""
    clock = FakeClock()
    h = make_host(clock)
    before = applied(h)
    for msg in (m.SetRequest(0, 0, 1200, 100, 1200), m.ReadRequest(0, 0, 100), m.HelloRequest(2, 0)):
        items = h.send_raw(msg.to_frame(SEQ_UNKNOWN).encode())
        (answer,) = [f for f in items if isinstance(f, Frame)]
        assert (answer.type, answer.seq, answer.opcode) == (FrameType.RESPONSE, SEQ_UNKNOWN, msg.OPCODE)
        assert answer.status == Status.BAD_ARGUMENT and b"reserved" in answer.payload
    assert applied(h) == before and SEQ_UNKNOWN not in h.engine._cache
    clock.t += 2.5  # it fed no watchdog either: the last real request was HELLO, 2.5 s ago
    assert [f.opcode for f in h.poll() if isinstance(f, Frame)] == [Opcode.EV_WATCHDOG]
    assert h.engine.state == BoardState.SAFE_IDLE


def test_the_host_never_numbers_a_request_0xffff() -> None:
    from hil.hardware.session import BoardSession

    s = BoardSession.__new__(BoardSession)
    s._seq = 0xFFFD
    assert [s._next_seq() for _ in range(3)] == [0xFFFE, 0, 1]


def test_limits_from_hello_carry_the_duration_fields() -> None:
    lim = BoardLimits.from_hello(FirmwareEngine().hello_info)
    assert (lim.op_overhead_ns, lim.max_request_ms, lim.max_hold_ns) == (10_000, 60_000, 10_000_000)


# ------------------------------------------------------------------------------------------- a served board
def test_a_served_board_refuses_an_endurance_past_the_clock_and_keeps_serving() -> None:
    """Issue 15 item 6: an endurance request crashed `rram sim serve` once the clock had overflowed."""
    from firmware_protocol.errors import OutOfRangeError
    from hil.hardware.board import Board
    from tests.helpers.boards import PtySim

    engine = new_engine(BoardConfig(rows=8, cols=8, seed=4))
    engine.array.form(ALL_ROWS, ALL_COLS, 4.0, 1000, 1.0)
    sim = PtySim(engine)
    try:
        with Board.open(sim.path) as board:
            board.advance_clock(9.22e9)  # of the 9.2234e9 s: 3.4 million s left
            with pytest.raises(OutOfRangeError, match="would pass its range"):
                list(board.endurance(0, 0, 8, 8, 4 * 10**9, 10**9))  # 64 cells x 4e9 cycles x 20.4 us: 5.2e6 s
            chunks = list(board.endurance(0, 0, 2, 2, 20, 10))
            assert [c.cycle for c in chunks] == [10, 20] and board.read(0, 0).timestamp_s <= CLOCK_MAX_US / 1e6
        assert sim.thread.is_alive()
    finally:
        sim.close()


def test_a_fault_while_cycling_ends_the_stream_and_the_board_stays_up(monkeypatch: pytest.MonkeyPatch) -> None:
    h = make_host()

    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("simulated firmware fault")

    monkeypatch.setattr(h.engine.array, "cycle", broken)
    started = h.ok(endurance_request(20, 10))
    (end,) = [f for f in h.events if f.opcode == Opcode.EV_ENDURANCE_END]
    assert m.EnduranceEnd.decode(end.payload).reason == 1  # ABORTED
    assert isinstance(started, m.EnduranceStarted) and h.engine.state == BoardState.IDLE
    h.ok(m.ReadRequest(0, 0, 100))


def test_stream_ids_wrap_without_ever_being_0xffff() -> None:
    """0xFFFF means "no stream" in AbortReply and EV_WATCHDOG (6.13, 6.15): a stream never gets it."""
    h = make_host()
    h.engine._stream_ids = 0xFFFD
    ids = []
    for _ in range(3):
        started = h.ok(endurance_request(1000, 10))
        assert isinstance(started, m.EnduranceStarted)
        ids.append(started.stream_id)
        h.ok(m.AbortRequest())
    assert ids == [0xFFFE, 1, 2]
