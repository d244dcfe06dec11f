"""Board client against the in-process simulator: same-seq retries, NAKs, timeouts, chunking, stream recovery."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest

from firmware_protocol import (
    PROTOCOL_MAJOR,
    CellResult,
    Frame,
    FrameType,
    LimitError,
    Opcode,
    VersionError,
    decode_payload,
)
from firmware_protocol import messages as m
from hil.hardware.board import Board, BoardResetError, BoardTimeoutError, PulseRamp, _Adaptive
from sim_backend.board_config import BoardConfig
from sim_backend.faults import LinkFaults
from sim_backend.firmware import FirmwareEngine
from sim_backend.link import SimLink


class TapLink:
    """A byte link around a SimLink that records host writes and can corrupt or swallow traffic.

    `arm(action)` applies `action` to the next host write: "swallow_reply" (the board executes it but its
    answer is lost), "corrupt" (one byte of the request is damaged), "dead" (this and every later write is
    lost). `drop_frame(raw) -> bool` drops board frames; `delay(request) -> s` holds answers back.
    """

    def __init__(
        self,
        inner: SimLink,
        drop_frame: Callable[[bytes], bool] | None = None,
        delay: Callable[[bytes], float] | None = None,
    ) -> None:
        self.inner = inner
        self.timeout: float | None = 0.05
        self.written: list[bytes] = []
        self.sent: list[bytes] = []  # what actually reached the board
        self.drop_frame = drop_frame
        self.delay = delay
        self._actions: deque[str] = deque()
        self._dead = False
        self._partial = bytearray()
        self._held: deque[tuple[float, bytes]] = deque()
        self._rx = bytearray()

    @property
    def engine(self) -> FirmwareEngine:
        return self.inner.engine

    def arm(self, action: str) -> None:
        self._actions.append(action)

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.written.append(data)
        action = self._actions.popleft() if self._actions else ""
        if action == "dead":
            self._dead = True
        if self._dead:
            return len(data)
        out = data
        if action == "corrupt":
            k = len(data) // 2
            flipped = data[k] ^ 0x40 or 0x41
            out = data[:k] + bytes([flipped]) + data[k + 1 :]
        self._pull()  # answers to earlier requests keep their place in the byte stream
        self.sent.append(out)
        self.inner.write(out)
        reply = self.inner.read(self.inner.in_waiting)
        if action == "swallow_reply":
            reply = b""
        self._hold(reply, self.delay(data) if self.delay else 0.0)
        return len(data)

    def _hold(self, data: bytes, delay: float) -> None:
        if not data:
            return
        self._partial += data
        release = time.monotonic() + delay
        while (i := self._partial.find(0)) >= 0:
            raw = bytes(self._partial[: i + 1])
            del self._partial[: i + 1]
            verdict = self.drop_frame(raw) if self.drop_frame is not None else False
            if verdict is True:
                continue
            self._held.append((release, verdict if isinstance(verdict, bytes) else raw))

    def _pull(self) -> None:
        if not self._dead and self.inner.in_waiting:
            self._hold(self.inner.read(self.inner.in_waiting), 0.0)
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            self._rx += self._held.popleft()[1]

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        end = time.monotonic() + (self.timeout or 0.0)
        while True:
            self._pull()
            if len(self._rx) >= size or time.monotonic() >= end:
                out = bytes(self._rx[:size])
                del self._rx[:size]
                return out
            time.sleep(0.0005)

    def reset_input_buffer(self) -> None:
        self._rx.clear()

    def close(self) -> None:
        self.inner.close()

    def requests(self, since: int = 0, opcode: int | None = None) -> list[Frame]:
        """Decoded requests the host wrote (from write number `since` on)."""
        frames = [Frame.decode(w) for w in self.written[since:]]
        return [f for f in frames if opcode is None or f.opcode == opcode]


def make_board(
    rows: int = 16,
    cols: int = 16,
    seed: int = 5,
    faults: LinkFaults | None = None,
    timeout_s: float = 0.05,
    **kw: object,
) -> tuple[Board, TapLink]:
    link = TapLink(SimLink(FirmwareEngine(BoardConfig(rows=rows, cols=cols, seed=seed)), faults or LinkFaults()), **kw)  # type: ignore[arg-type]
    return Board(link, port="tap://test", timeout_s=timeout_s), link


def form_cells(engine: FirmwareEngine, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Form cells directly on the chip (setup, not under test); returns which cells are usable."""
    engine.array.form(rows, cols, 4.0, 1000, 1.0)
    idx = rows * engine.config.cols + cols
    a = engine.array
    return a.formed[idx] & ~a.stuck_lrs[idx] & ~a.stuck_hrs[idx]


def counts(engine: FirmwareEngine) -> tuple[int, int, int, int]:
    c = engine.counters
    return c.form, c.set, c.reset, c.reads


# ------------------------------------------------------------------------------------------- retries
def test_lost_answer_is_retried_with_the_same_seq_and_pulses_once() -> None:
    board, link = make_board()
    before = counts(link.engine)
    n = len(link.written)
    link.arm("swallow_reply")
    board.set_pulse(2, 3, 1.5, 200, 1.1)
    sets = link.requests(n, Opcode.SET)
    assert len(sets) == 2
    assert link.written[n] == link.written[n + 1]  # identical bytes, identical seq
    assert sets[0].seq == sets[1].seq
    assert counts(link.engine) == (before[0], before[1] + 1, before[2], before[3])
    assert (board.stats.retries, board.stats.timeouts) == (1, 1)


def test_nak_triggers_an_immediate_resend_of_the_same_request() -> None:
    board, link = make_board(timeout_s=5.0)  # a resend after a timeout would take 5 s: the NAK path must be used
    before = counts(link.engine)
    n = len(link.written)
    link.arm("corrupt")
    t0 = time.monotonic()
    board.reset_pulse(1, 1, -1.5, 200, 3.0)
    assert time.monotonic() - t0 < 1.0
    assert board.stats.naks == 1 and board.stats.retries == 1 and board.stats.timeouts == 0
    assert link.sent[n] != link.written[n] and link.sent[n + 1] == link.written[n + 1] == link.written[n]
    assert counts(link.engine) == (before[0], before[1], before[2] + 1, before[3])


def test_corrupted_answer_is_re_requested_and_served_from_the_cache() -> None:
    state = {"armed": True}

    def damage_first_set_answer(raw: bytes) -> bool | bytes:
        f = Frame.decode(raw)
        if state["armed"] and f.type == FrameType.RESPONSE and f.opcode == Opcode.SET:
            state["armed"] = False
            k = len(raw) // 2
            return raw[:k] + bytes([raw[k] ^ 0x10 or 0x11]) + raw[k + 1 :]  # CRC no longer matches
        return False

    board, link = make_board(timeout_s=5.0, drop_frame=damage_first_set_answer)
    before = counts(link.engine)
    t0 = time.monotonic()
    board.set_pulse(0, 0, 1.5, 200, 1.1)
    assert time.monotonic() - t0 < 1.0  # re-requested after a short wait, not after the 5 s timeout
    assert not state["armed"] and board.stats.corrupt_frames == 1 and board.stats.retries == 1
    sets = link.requests(0, Opcode.SET)
    assert len(sets) == 2 and sets[0] == sets[1]
    assert counts(link.engine)[1] == before[1] + 1


def test_silent_board_gives_a_clear_timeout_error_after_every_try() -> None:
    board, link = make_board(timeout_s=0.02)
    board.retries = 2
    link.arm("dead")
    t0 = time.monotonic()
    with pytest.raises(BoardTimeoutError, match=r"tap://test.*ReadRequest after 3 tries"):
        board.read(0, 0)
    assert time.monotonic() - t0 < 1.0
    assert board.stats.timeouts == 3 and board.stats.retries == 2
    assert len({w for w in link.written[-3:]}) == 1  # all three tries were the same bytes


def test_a_link_that_only_returns_damaged_answers_is_given_up_after_a_bounded_number_of_tries() -> None:
    def garble(raw: bytes) -> bool | bytes:
        f = Frame.decode(raw)
        if f.type == FrameType.RESPONSE and f.opcode == Opcode.READ:
            k = len(raw) // 2
            return raw[:k] + bytes([raw[k] ^ 0x10 or 0x11]) + raw[k + 1 :]
        return False

    board, link = make_board(timeout_s=0.02, drop_frame=garble)
    board.retries = 2
    before = counts(link.engine)
    with pytest.raises(BoardTimeoutError, match=r"ReadRequest after 30 tries"):
        board.read(0, 0)
    assert board.stats.corrupt_frames >= 30 and board.stats.timeouts <= 2  # alive but noisy: more tries than silent
    assert counts(link.engine)[3] == before[3] + 1  # executed once, every later try answered from the cache


# ------------------------------------------------------------------------------------------- limits
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b.read(16, 0), r"cell \(16, 0\) is outside the 16x16 array"),
        (lambda b: b.set_pulse(0, 0, 3.5, 200, 1.1), r"SET voltage 3.500 V is outside"),
        (lambda b: b.reset_pulse(0, 0, -3.2, 200, 3.0), r"RESET voltage -3.200 V is outside"),
        (lambda b: b.form(0, 0, 2.0, 5.5), r"FORM stop voltage 5.500 V"),
        (lambda b: b.read_block(10, 10, 8, 8), r"outside the 16x16 array"),
        (
            lambda b: b.write_verify(np.array([0]), np.array([0]), 10e-6, 1e-6, ramp=PulseRamp(set_v_stop=3.3)),
            r"SET ramp stop",
        ),
        (lambda b: list(b.endurance(0, 0, 2, 2, 10, 5, set_gate=4.0)), r"gate voltage 4.000 V"),
        # issue 15 item 12: indices were wrapped into u16 (row 65539 programmed row 3)
        (
            lambda b: b.write_verify(np.array([0, 65539]), np.array([0, 0]), 10e-6, 1e-6),
            r"cell \(65539, 0\) is outside",
        ),
        (lambda b: b.write_verify(np.array([-1]), np.array([0]), 10e-6, 1e-6), r"cell \(-1, 0\) is outside"),
        (lambda b: b.write_verify(np.array([0]), np.array([2**16]), 10e-6, 1e-6), r"cell \(0, 65536\) is outside"),
        (lambda b: b.write_verify(np.array([0]), np.array([0]), 10e-6, 1e-6, max_pulses=65537), r"use an integer from"),
        (lambda b: b.advance_clock(1.5e13), r"use 0 to 9.22337e\+09 s"),
        (lambda b: b.advance_clock(float("inf")), r"cannot advance the clock by inf s"),
        (lambda b: b.iv_sweep(0, 0, -3.0, 3.0, 101, 2**32 - 1, dc=True), r"DC hold 4294967295 ns per point exceeds"),
        (lambda b: b.read(0, 0, v_read=0.0), r"read voltage 0.000 V must be positive"),
    ],
)
def test_out_of_limit_requests_are_refused_before_anything_is_sent(call: Callable, match: str) -> None:
    board, link = make_board()
    before, n_written, seq = counts(link.engine), len(link.written), board._seq
    with pytest.raises(LimitError, match=match):
        call(board)
    assert counts(link.engine) == before and len(link.written) == n_written and board._seq == seq


# ------------------------------------------------------------------------------------------- chunking
def _coverage(frames: list[Frame], rows: int, cols: int) -> np.ndarray:
    cover = np.zeros((rows, cols), dtype=int)
    for f in frames:
        req = m.ReadBlockRequest.decode(f.payload)
        cover[req.row0 : req.row0 + req.nrows, req.col0 : req.col0 + req.ncols] += 1
    return cover


def test_read_block_larger_than_one_frame_is_split_and_reassembled() -> None:
    board, link = make_board(rows=64, cols=64)
    eng = link.engine
    rng = np.random.default_rng(0)
    idx = rng.choice(64 * 64, 300, replace=False)
    ok = form_cells(eng, idx // 64, idx % 64)
    n = len(link.written)
    blk = board.read_block(0, 0, 64, 64)
    frames = link.requests(n, Opcode.READ_BLOCK)
    limit = m.max_block_cells(board.info.max_payload)
    assert 64 * 64 > limit and len(frames) >= 2
    assert all(
        m.ReadBlockRequest.decode(f.payload).nrows * m.ReadBlockRequest.decode(f.payload).ncols <= limit for f in frames
    )
    assert np.all(_coverage(frames, 64, 64) == 1)
    # every cell lands where it belongs: formed cells read ~20 uS, pristine ones ~10 nS
    g = blk.conductance_s.ravel()
    assert np.all(g[idx[ok]] > 8e-6)
    pristine = np.setdiff1d(np.arange(64 * 64), idx)
    pristine = pristine[~eng.array.stuck_lrs[pristine]]
    assert np.quantile(g[pristine], 0.99) < 2e-6


def test_read_block_follows_a_reduced_block_size_row_by_row() -> None:
    board, link = make_board(rows=16, cols=32)
    board._block.size = 10
    n = len(link.written)
    blk = board.read_block(2, 3, 4, 25)
    frames = link.requests(n, Opcode.READ_BLOCK)
    sizes = [(r.nrows, r.ncols) for r in (m.ReadBlockRequest.decode(f.payload) for f in frames)]
    assert sizes[0] == (1, 10)  # first request: exactly the reduced size
    assert all(nr == 1 for nr, _ in sizes) and len(sizes) >= 6  # below a row's width: row by row, several per row
    assert max(nc for _, nc in sizes) < 25  # grown back a little after successes, still below a full row
    cover = _coverage(frames, 16, 32)
    assert np.all(cover[2:6, 3:28] == 1) and cover.sum() == 100
    assert blk.codes.shape == (4, 25)


def test_write_verify_is_sent_in_batches_and_results_stay_with_their_cells() -> None:
    board, link = make_board(rows=16, cols=16)
    eng = link.engine
    rows, cols = np.repeat(np.arange(3), 4), np.tile(np.arange(4), 3)
    ok = form_cells(eng, rows, cols)
    board._wv = _Adaptive(limit=5)
    targets = np.linspace(6e-6, 30e-6, 12)  # every cell a different target: a mix-up would show
    n = len(link.written)
    before = counts(eng)
    out = board.write_verify(rows, cols, targets, 0.8e-6, max_pulses=80)
    frames = link.requests(n, Opcode.WRITE_VERIFY)
    reqs = [m.WriteVerifyRequest.decode(f.payload) for f in frames]
    assert [r.n for r in reqs] == [5, 5, 2]
    assert np.array_equal(np.concatenate([r.entries["row"] for r in reqs]), rows)
    assert np.array_equal(np.concatenate([r.entries["col"] for r in reqs]), cols)
    conv = out.status == CellResult.CONVERGED
    assert conv[ok].mean() >= 0.9
    assert np.all(np.abs(out.final_s[conv] - targets[conv]) <= 0.8e-6 + 1e-12)
    after = counts(eng)
    assert (after[1] - before[1]) + (after[2] - before[2]) == int(out.pulses.sum())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b.write_verify(np.array([0.5]), np.array([0]), 10e-6, 1e-6), r"cell indices must be integers"),
        (lambda b: b.write_verify(np.array([np.inf]), np.array([0]), 10e-6, 1e-6), r"cell indices must be integers"),
        (lambda b: b.write_verify(np.array([0, 1]), np.array([0]), 10e-6, 1e-6), r"1-D and of one length"),
        (lambda b: b.write_verify(np.array([0, 1]), np.array([0, 1]), [1e-5] * 3, 1e-6), r"3 values for 2 cells"),
    ],
)
def test_malformed_write_verify_arguments_are_refused_in_one_line_before_anything_is_sent(
    call: Callable, match: str
) -> None:
    board, link = make_board()
    n_written = len(link.written)
    with pytest.raises(ValueError, match=match) as exc:
        call(board)
    assert "\n" not in str(exc.value) and len(link.written) == n_written


def test_write_verify_batches_stay_within_the_declared_duration_bound() -> None:
    """PROTOCOL.md 7.5: a batch's worst case is n x (o + max_pulses x (width + 2 o)); the host sends no batch above
    max_request_ms (60 s): 65535 pulses of 100 ns cost 1.317 s per cell at worst, so 45 cells per batch."""
    board, link = make_board(rows=16, cols=16)
    rows, cols = np.divmod(np.arange(100), 16)
    ok = form_cells(link.engine, rows, cols)
    n = len(link.written)
    out = board.write_verify(rows, cols, 20e-6, 1.0, max_pulses=65535)  # tolerance 1 S: converged on the first read
    reqs = [m.WriteVerifyRequest.decode(f.payload) for f in link.requests(n, Opcode.WRITE_VERIFY)]
    per_cell = 10_000 + 65535 * (100 + 2 * 10_000)
    assert 60_000 * 10**6 // per_cell == 45 and [r.n for r in reqs] == [45, 45, 10]
    assert all(board.limits.worst_case_ns(r) <= 60_000 * 10**6 for r in reqs)
    assert (out.status[ok] == CellResult.CONVERGED).all() and out.pulses.sum() == 0


def test_one_cell_longer_than_the_bound_is_refused_before_anything_is_sent() -> None:
    board, link = make_board()
    n = len(link.written)
    with pytest.raises(LimitError, match=r"could take up to 66.8457 s on the array, more than the board's 60 s"):
        board.write_verify(np.array([0]), np.array([0]), 20e-6, 1e-6, 65535, PulseRamp(width_ns=1_000_000))
    assert len(link.written) == n


def test_adaptive_chunk_halves_on_trouble_and_grows_back() -> None:
    a = _Adaptive(limit=64, floor=2)
    for _ in range(10):
        a.failed()
    assert a.size == 2
    sizes = []
    for _ in range(40):
        a.succeeded()
        sizes.append(a.size)
    assert sizes[0] == 3 and sizes == sorted(sizes) and sizes[-1] == 64


# ------------------------------------------------------------------------------------------- streams
def _event_no(raw: bytes) -> tuple[int, int] | None:
    f = Frame.decode(raw)
    if f.type == FrameType.EVENT and f.opcode in (Opcode.EV_ENDURANCE_DATA, Opcode.EV_ENDURANCE_END):
        return f.opcode, decode_payload(f).event_no  # type: ignore[attr-defined]
    return None


@pytest.mark.parametrize(
    "lost", [(Opcode.EV_ENDURANCE_DATA, 2), (Opcode.EV_ENDURANCE_DATA, 7), (Opcode.EV_ENDURANCE_END, 12)]
)
def test_endurance_stream_recovers_a_dropped_event(lost: tuple[int, int]) -> None:
    dropped: list[bytes] = []

    def drop(raw: bytes) -> bool:
        if not dropped and _event_no(raw) == lost:
            dropped.append(raw)
            return True
        return False

    board, link = make_board(drop_frame=drop)
    eng = link.engine
    rows, cols = np.repeat(np.arange(2), 4), np.tile(np.arange(4), 2)
    ok = form_cells(eng, rows, cols)
    before = counts(eng)
    chunks = list(
        board.endurance(0, 0, 2, 4, n_cycles=60, read_every=10, set_gate=1.1, reset_v=-1.5, cells_per_event=4)
    )
    assert dropped, "the test link never saw the event it was to drop"
    assert [c.cycle for c in chunks] == [10, 20, 30, 40, 50, 60]
    assert board.stats.resends >= 1
    after = counts(eng)
    assert (after[1] - before[1], after[2] - before[2]) == (60 * 8, 60 * 8)
    lrs = np.array([c.lrs_s for c in chunks])[:, ok]
    hrs = np.array([c.hrs_s for c in chunks])[:, ok]
    assert np.all(lrs > 5 * hrs)  # every point complete and in place: LRS above HRS everywhere
    assert eng._stream is None  # the board closed the stream after the final ack
    board.read(0, 0)  # and accepts ordinary requests again


# ------------------------------------------------------------------------------------------- timeouts
def test_timeout_scales_with_the_work_a_request_asks_for() -> None:
    """The wait is the declared worst case (PROTOCOL.md 7.5), o = op_overhead_ns = 10 us on the simulated board."""
    board = make_board()[0]
    assert board.limits.op_overhead_ns == 10_000
    read = m.ReadBlockRequest(0, 0, 4, 4, 100)
    big = m.ReadBlockRequest(0, 0, 16, 16, 100)
    assert board.expected_duration_s(big) == pytest.approx(16 * board.expected_duration_s(read))
    e = np.zeros(10, dtype=m.WV_ENTRY)
    e["max_pulses"] = 50
    wv = m.WriteVerifyRequest(100, 100, 700, 1600, 20, 1300, 1300, 0, -600, -1800, -20, 3000, 10, e)
    assert board.expected_duration_s(wv) == pytest.approx(10 * 10e-6 + 500 * (100e-9 + 2 * 10e-6))
    form = m.FormRequest(0, 0, 2000, 4500, 100, 1000, 1000, 100, 5000)  # 26 pulses, 27 reads
    assert board.expected_duration_s(form) == pytest.approx(26 * (1e-6 + 10e-6) + 27 * 10e-6)
    assert board.expected_duration_s(m.AdvanceClockRequest(10**12)) == 0.0  # virtual time: nothing to wait for


def test_a_slow_long_request_is_waited_for_while_a_slow_short_one_times_out() -> None:
    hold = 0.15

    def delay(wire: bytes) -> float:
        return hold if Frame.decode(wire).opcode in (Opcode.WRITE_VERIFY, Opcode.READ) else 0.0

    board, link = make_board(timeout_s=0.02, delay=delay)
    board.retries = 0
    rows, cols = np.repeat(np.arange(8), 8), np.tile(np.arange(8), 8)
    form_cells(link.engine, rows, cols)
    # 64 cells x 100 pulses: the board may need ~0.19 s, so an answer after 0.15 s is on time
    out = board.write_verify(rows, cols, 20e-6, 1e-6, max_pulses=100)
    assert board.stats.retries == 0 and out.final_s.size == 64
    with pytest.raises(BoardTimeoutError):
        board.read(0, 0)  # a single READ answered 0.15 s late is lost


# ------------------------------------------------------------------------------------------- reset / version
def test_board_reset_raises_board_reset_error_then_the_board_works_again() -> None:
    board, link = make_board(faults=LinkFaults(reset_after=400))
    old = board.session_id
    with pytest.raises(BoardResetError, match="was reset"):
        for _ in range(100):
            board.read(0, 0)
    assert board.session_id != old and board.session_id == link.engine.session_id
    assert board.read(0, 0).code > 0


class _FutureFirmware(FirmwareEngine):
    """A board that speaks the next protocol major version."""

    @property
    def hello_info(self) -> m.HelloInfo:
        return dataclasses.replace(super().hello_info, proto_major=PROTOCOL_MAJOR + 1, proto_minor=1)


def test_board_with_another_protocol_major_is_refused() -> None:
    link = SimLink(_FutureFirmware(BoardConfig(rows=8, cols=8)))
    with pytest.raises(
        VersionError,
        match=rf"speaks protocol {PROTOCOL_MAJOR + 1}\.1; this host speaks {PROTOCOL_MAJOR}\.\d+ \(major versions must match\)",
    ):
        Board(link, port="sim-v2")
