"""Protocol conformance of the simulated board's firmware, driven with raw frames through FirmwareEngine.

Every test runs against both firmwares: the Python one and the C core (sim_backend/c_firmware.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from firmware_protocol import (
    SEQ_UNKNOWN,
    BoardState,
    Capability,
    CellResult,
    DecodeError,
    Frame,
    FrameDecoder,
    FrameType,
    Opcode,
    Status,
    StreamEnd,
    decode_payload,
    error_text,
)
from firmware_protocol import messages as m
from firmware_protocol.constants import HelloFlag, SessionEnd
from firmware_protocol.frame import VERSION_BYTE
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from tests.conftest import FIRMWARES
from tests.helpers.boards import new_engine

pytestmark = pytest.mark.parametrize("firmware", FIRMWARES, indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def _each_firmware(firmware: str) -> str:
    """Every test of the module runs once per firmware (new_engine builds the one in use)."""
    return firmware


ROWS = COLS = 8
ALL_ROWS, ALL_COLS = np.divmod(np.arange(ROWS * COLS), COLS)

# Pulse settings that suit the default device model (sim_backend/device_params.py):
# forming threshold ~3.0 V at 1 us, SET threshold ~0.9 V, RESET threshold ~0.8 V, NMOS V_th 0.6 V.
FORM_KW = dict(
    v_start_mv=2400, v_stop_mv=4500, v_step_mv=100, width_ns=1000, gate_mv=1000, v_read_mv=100, g_formed_ns=5000
)
# Write-verify: SET at 1.2 V with the gate ramped 0.70 -> 1.30 V (G_LRS ~ 1 -> 90 uS),
# RESET ramped -0.70 -> -1.50 V (G_HRS ~ 50 -> 2 uS).
WV_KW = dict(
    v_read_mv=100,
    width_ns=100,
    set_v_start_mv=1200,
    set_v_stop_mv=1200,
    set_v_step_mv=0,
    set_gate_start_mv=700,
    set_gate_stop_mv=1300,
    set_gate_step_mv=10,
    reset_v_start_mv=-700,
    reset_v_stop_mv=-1500,
    reset_v_step_mv=-10,
    reset_gate_mv=3300,
)
READ_NOISE_S = 0.01 * 40e-6  # white read noise of the default device: 1 % of g_max


class FakeClock:
    """Injectable wall clock for the watchdog (seconds)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Host:
    """Drives a FirmwareEngine with raw frames and decodes everything the board sends back."""

    def __init__(self, engine: FirmwareEngine) -> None:
        self.engine = engine
        self.decoder = FrameDecoder()
        self.seq = 0
        self.events: list[Frame] = []  # events received so far, in order
        self.wire: list[bytes] = []  # every byte chunk the board sent

    def _next_seq(self) -> int:
        self.seq = self.seq % 0xFFFE + 1
        return self.seq

    def receive(self, data: bytes) -> list[Frame | DecodeError]:
        self.wire.append(data)
        items = self.decoder.feed(data)
        self.events += [f for f in items if isinstance(f, Frame) and f.type == FrameType.EVENT]
        return items

    def poll(self) -> list[Frame | DecodeError]:
        return self.receive(self.engine.poll())

    def send_raw(self, wire: bytes) -> list[Frame | DecodeError]:
        return self.receive(self.engine.feed(wire))

    def exchange(self, msg: m.Message, seq: int | None = None) -> tuple[Frame, list[Frame | DecodeError]]:
        """Send one request; return its response frame and everything received with it."""
        seq = self._next_seq() if seq is None else seq
        items = self.send_raw(msg.to_frame(seq).encode())
        responses = [f for f in items if isinstance(f, Frame) and f.type == FrameType.RESPONSE]
        assert len(responses) == 1, f"expected one response to {type(msg).__name__}, got {items}"
        assert responses[0].seq == seq and responses[0].opcode == msg.OPCODE
        return responses[0], items

    def status(self, msg: m.Message) -> tuple[Status, str]:
        frame, _ = self.exchange(msg)
        return Status(frame.status), error_text(frame)

    def ok(self, msg: m.Message) -> m.Message:
        frame, _ = self.exchange(msg)
        assert frame.status == Status.OK, f"{type(msg).__name__}: {Status(frame.status).name} {error_text(frame)}"
        return decode_payload(frame)

    def hello(self) -> m.HelloInfo:
        return self.ok(m.HelloRequest(1, 0))  # type: ignore[return-value]

    def counters(self) -> m.Counters:
        return self.ok(m.CountersRequest())  # type: ignore[return-value]

    def form_all(self, rows: np.ndarray = ALL_ROWS, cols: np.ndarray = ALL_COLS) -> list[m.FormResult]:
        return [self.ok(m.FormRequest(int(r), int(c), **FORM_KW)) for r, c in zip(rows, cols)]  # type: ignore[misc]


def make_engine(seed: int = 3, clock: Callable[[], float] | None = None, **config: object) -> FirmwareEngine:
    cfg = BoardConfig(rows=ROWS, cols=COLS, seed=seed, **config)  # type: ignore[arg-type]
    return new_engine(cfg) if clock is None else new_engine(cfg, wall_clock=clock)


@pytest.fixture
def host() -> Host:
    h = Host(make_engine())
    h.poll()  # EV_BOOT
    h.hello()
    return h


@pytest.fixture(scope="module")
def formed_state(firmware: str) -> FirmwareEngine:
    """An engine whose whole 8x8 array was formed through the protocol (copied per test)."""
    h = Host(make_engine())
    h.poll()
    h.hello()
    h.form_all()
    return h.engine


@pytest.fixture
def formed(formed_state: FirmwareEngine) -> Host:
    import copy

    h = Host(copy.deepcopy(formed_state))
    h.hello()
    return h


def conductances(engine: FirmwareEngine) -> np.ndarray:
    return engine.array.conductance(ALL_ROWS, ALL_COLS)


def healthy_mask(engine: FirmwareEngine) -> np.ndarray:
    f = engine.array.state_flags(ALL_ROWS, ALL_COLS)
    return f["formed"] & ~f["stuck_lrs"] & ~f["stuck_hrs"]


def wv_request(
    rows: np.ndarray, cols: np.ndarray, target: np.ndarray, tol: float, max_pulses: int = 100, **kw: int
) -> m.WriteVerifyRequest:
    e = np.zeros(rows.size, m.WV_ENTRY)
    e["row"], e["col"], e["target_s"], e["tol_s"], e["max_pulses"] = rows, cols, target, tol, max_pulses
    return m.WriteVerifyRequest(**{**WV_KW, **kw}, n=rows.size, entries=e)  # type: ignore[arg-type]


def endurance_request(
    n_cycles: int, read_every: int, row0: int = 0, col0: int = 0, nrows: int = 4, ncols: int = 4
) -> m.EnduranceRequest:
    return m.EnduranceRequest(row0, col0, nrows, ncols, n_cycles, read_every, 1200, 100, 1200, -1500, 100, 3300, 100)


def g_from_code(code: np.ndarray, amps_per_code: float, offset_code: float, v_read_mv: int) -> np.ndarray:
    return (np.asarray(code, dtype=float) - offset_code) * amps_per_code / (v_read_mv / 1000)


# ------------------------------------------------------------------------------------- golden bytes
# EV_BOOT and the HELLO answer of an 8x8 board with seed 1 (the session id is derived from the seed).
GOLDEN_BOOT_HEX = "032002010280020f060aed3c810101010101010101010105c4cff27a00"
GOLDEN_HELLO_REQ_HEX = "02200201020102070201010101010105415d188100"
GOLDEN_HELLO_RSP_HEX = (
    "042001010201025d02020201010953494d2d5252414d01010101010101060aed3c811f010102080208030c100105b80b48f401010103"
    "881301032c010104e40c0a01010440420f020a01010420a107010520d0070804021027010360ea01048096980107ffff985b803f00"
)


def test_hello_exchange_is_golden() -> None:
    engine = new_engine(BoardConfig(rows=8, cols=8, seed=1))
    boot = engine.poll()
    request = m.HelloRequest(1, 0).to_frame(1).encode()
    response = engine.feed(request)
    assert boot.hex() == GOLDEN_BOOT_HEX
    assert request.hex() == GOLDEN_HELLO_REQ_HEX
    assert response.hex() == GOLDEN_HELLO_RSP_HEX
    info = decode_payload(Frame.decode(response))
    assert (info.rows, info.cols, info.board_id, info.proto_major) == (8, 8, "SIM-RRAM", 2)
    assert info.session_id == decode_payload(Frame.decode(boot)).session_id


# PROTOCOL.md 12.5 and 12.6: the board's NAK for a bad CRC and its refusal of a 3.5 V SET.
GOLDEN_NAK_HEX = "052003ffff03010c11435243206d69736d61746368cb29eb5800"
GOLDEN_REFUSAL_HEX = (
    "08200103011105414653455420766f6c7461676520332e3530302056206973"
    "206f757473696465207468652062"
    "6f61726427732072616e6765205b302e3030302c20332e3030305d20562769eb6800"
)


def test_nak_and_refusal_are_the_documented_bytes() -> None:
    engine = new_engine(BoardConfig(rows=8, cols=8, seed=1))
    engine.poll()
    hello = bytearray(m.HelloRequest(1, 0).to_frame(1).encode())
    hello[-2] ^= 0x10  # corrupt the CRC (no zero byte created)
    assert engine.feed(bytes(hello)).hex() == GOLDEN_NAK_HEX
    engine.feed(m.HelloRequest(1, 0).to_frame(1).encode())
    assert engine.feed(m.SetRequest(0, 0, 3500, 100, 1000).to_frame(0x0103).encode()).hex() == GOLDEN_REFUSAL_HEX


def run_mixed_script(seed: int) -> bytes:
    """A long mixed command sequence (every operation kind, an acknowledged stream); all board output."""
    h = Host(make_engine(seed=seed))
    h.poll()
    h.hello()
    h.form_all(ALL_ROWS[:24], ALL_COLS[:24])
    h.ok(m.SetRequest(0, 1, 1200, 100, 1100))
    h.ok(m.ResetRequest(0, 2, -1300, 100, 3300))
    for r, c in zip(ALL_ROWS[:24:3], ALL_COLS[:24:3]):
        h.exchange(m.ReadRequest(int(r), int(c), 100))
    h.ok(m.ReadBlockRequest(0, 0, 3, 8, 100))
    sweep = h.ok(m.IvSweepRequest(0, 3, -1500, 1500, 31, 100, 1000, 0))
    assert sweep.n == 31 and sweep.codes[0] < sweep.codes[15] < sweep.codes[-1]  # current follows the voltage sign
    rng = np.random.default_rng(7)
    h.exchange(wv_request(ALL_ROWS[:16], ALL_COLS[:16], rng.uniform(5e-6, 30e-6, 16), 1e-6))
    started = h.ok(endurance_request(2000, 100, 0, 0, 2, 8))
    acked = 0
    while True:
        stream = [e for e in h.events if e.opcode in (Opcode.EV_ENDURANCE_DATA, Opcode.EV_ENDURANCE_END)]
        nums = [decode_payload(e).event_no for e in stream]
        if acked > started.n_events:
            break
        acked = max(nums) + 1
        h.ok(m.StreamAck(started.stream_id, acked))
    h.ok(m.AdvanceClockRequest(3_600_000_000))
    h.ok(m.ReadBlockRequest(0, 0, 3, 8, 100))
    h.ok(m.HeartbeatRequest())
    h.ok(m.CountersRequest())
    return b"".join(h.wire)


def test_same_seed_and_commands_give_byte_identical_output() -> None:
    a, b = run_mixed_script(5), run_mixed_script(5)
    assert len(a) > 3_000
    assert a == b
    assert run_mixed_script(6) != a  # the output really depends on the chip (seed)


# ------------------------------------------------------------------------------------- boot and handshake
def test_boot_event_then_handshake_then_reboot() -> None:
    h = Host(make_engine())
    frames = h.poll()
    assert [(f.type, f.seq) for f in frames] == [(FrameType.EVENT, 0)]
    boot = [decode_payload(f) for f in frames]
    assert isinstance(boot[0], m.BootEvent) and boot[0].timestamp_us == 0
    assert h.status(m.ReadRequest(0, 0, 100))[0] == Status.HANDSHAKE_REQUIRED
    assert h.status(m.CountersRequest())[0] == Status.HANDSHAKE_REQUIRED
    hello_frame = m.HelloRequest(1, 0).to_frame(40).encode()
    first = h.send_raw(hello_frame)
    info = decode_payload(first[0])
    assert info.session_id == boot[0].session_id
    assert h.status(m.ReadRequest(0, 0, 100))[0] == Status.OK

    h.ok(endurance_request(100, 10))  # a stream (numbered events) running at the reset
    h.engine.boot()
    frames = h.poll()
    assert [(f.type, f.seq) for f in frames] == [(FrameType.EVENT, 0)]  # the event counter restarts
    reboot = [decode_payload(f) for f in frames]
    assert isinstance(reboot[0], m.BootEvent)
    assert reboot[0].session_id != boot[0].session_id
    for msg in (m.ReadRequest(0, 0, 100), m.CountersRequest(), m.SetRequest(0, 0, 1200, 100, 1000)):
        status, text = h.status(msg)
        assert status == Status.HANDSHAKE_REQUIRED and "HELLO" in text
    # The response cache was cleared: the very same HELLO frame is executed anew (new session id).
    again = h.send_raw(hello_frame)
    assert again[0].to_bytes() != first[0].to_bytes()
    assert decode_payload(again[0]).session_id == reboot[0].session_id
    assert h.status(m.ReadRequest(0, 0, 100))[0] == Status.OK  # the stream did not survive the reset
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE


# ------------------------------------------------------------------------------------- retries
def _retry_cases() -> list[tuple[str, m.Message]]:
    rng = np.random.default_rng(1)
    return [
        ("SET", m.SetRequest(2, 3, 1200, 100, 1300)),
        ("RESET", m.ResetRequest(2, 3, -1200, 100, 3300)),
        ("FORM", m.FormRequest(0, 0, **FORM_KW)),  # cell (0, 0) of the fresh board below is pristine
        ("WRITE_VERIFY", wv_request(ALL_ROWS[8:24], ALL_COLS[8:24], rng.uniform(5e-6, 30e-6, 16), 1e-6)),
    ]


@pytest.mark.parametrize("name,msg", _retry_cases(), ids=[c[0] for c in _retry_cases()])
def test_retried_sequence_number_is_answered_from_cache_without_a_second_pulse(
    formed: Host, name: str, msg: m.Message
) -> None:
    h = formed
    if name == "FORM":
        h = Host(make_engine())
        h.poll()
        h.hello()
    wire = msg.to_frame(1234).encode()
    first = h.engine.feed(wire)
    assert Frame.decode(first).status == Status.OK
    counts, g = h.counters(), conductances(h.engine)
    for _ in range(3):
        assert h.engine.feed(wire) == first  # byte-identical answer
    after = h.counters()
    assert (after.form_pulses, after.set_pulses, after.reset_pulses, after.reads) == (
        counts.form_pulses,
        counts.set_pulses,
        counts.reset_pulses,
        counts.reads,
    )
    np.testing.assert_array_equal(conductances(h.engine), g)


def test_same_seq_with_a_different_payload_executes_anew(formed: Host) -> None:
    h = formed
    c0 = h.counters().set_pulses
    r1 = h.engine.feed(m.SetRequest(1, 1, 1200, 100, 1000).to_frame(77).encode())
    r2 = h.engine.feed(m.SetRequest(1, 2, 1200, 100, 1000).to_frame(77).encode())
    assert Frame.decode(r1).status == Frame.decode(r2).status == Status.OK
    assert h.counters().set_pulses == c0 + 2
    # A different opcode under the same seq is new as well.
    r3 = Frame.decode(h.engine.feed(m.ReadRequest(1, 2, 100).to_frame(77).encode()))
    assert r3.opcode == Opcode.READ and r3.status == Status.OK


# ------------------------------------------------------------------------------------- refusals
OUT_OF_RANGE = [
    ("set-voltage", m.SetRequest(1, 1, 3500, 100, 1000), "SET voltage 3.500 V"),
    ("reset-voltage", m.ResetRequest(1, 1, -3100, 100, 3300), "RESET voltage -3.100 V"),
    ("reset-positive", m.ResetRequest(1, 1, 500, 100, 3300), "RESET voltage 0.500 V"),
    ("width-grid", m.SetRequest(1, 1, 1200, 105, 1000), "not a multiple of the 10 ns step"),
    ("width-short", m.SetRequest(1, 1, 1200, 0, 1000), "pulse width 0 ns is outside"),
    ("width-long", m.ResetRequest(1, 1, -1200, 2_000_000, 3300), "pulse width 2000000 ns is outside"),
    ("gate", m.SetRequest(1, 1, 1200, 100, 3400), "gate voltage 3.400 V"),
    ("cell-row", m.SetRequest(8, 1, 1200, 100, 1000), "cell (8, 1) is outside the 8x8 array"),
    ("cell-col", m.ReadRequest(0, 8, 100), "cell (0, 8) is outside"),
    ("read-voltage", m.ReadRequest(0, 0, 400), "read voltage 0.400 V"),
    ("form-voltage", m.FormRequest(1, 1, 2000, 5500, 100, 1000, 1000, 100, 5000), "FORM stop voltage 5.500 V"),
    ("form-ramp", m.FormRequest(1, 1, 3000, 2000, 100, 1000, 1000, 100, 5000), "v_stop >= v_start"),
    ("block-outside", m.ReadBlockRequest(4, 4, 5, 2, 100), "is outside the 8x8 array"),
    ("endurance-outside", endurance_request(100, 10, 6, 6, 4, 4), "is outside the 8x8 array"),
    ("endurance-gate", replace(endurance_request(100, 10), reset_gate_mv=3500), "gate voltage 3.500 V"),
    ("wv-cell", wv_request(np.array([1, 9]), np.array([1, 1]), np.full(2, 10e-6), 1e-6), "cell (9, 1) is outside"),
    ("wv-ramp", wv_request(ALL_ROWS[:2], ALL_COLS[:2], np.full(2, 10e-6), 1e-6, reset_v_step_mv=10), "ramps must grow"),
    (
        "wv-set-stop",
        wv_request(ALL_ROWS[:2], ALL_COLS[:2], np.full(2, 10e-6), 1e-6, set_v_stop_mv=3200),
        "SET ramp stop",
    ),
    ("wv-tolerance", wv_request(ALL_ROWS[:2], ALL_COLS[:2], np.full(2, 10e-6), 0.0), "tolerance > 0"),
    ("wv-batch", wv_request(np.zeros(513, int), np.zeros(513, int), np.full(513, 10e-6), 1e-6), "batch of 513 cells"),
]


@pytest.mark.parametrize("name,msg,reason", OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE])
def test_out_of_range_request_is_refused_and_applies_nothing(
    formed: Host, name: str, msg: m.Message, reason: str
) -> None:
    h = formed
    before, g = h.counters(), conductances(h.engine)
    t_before = h.engine.array.time_s
    status, text = h.status(msg)
    assert status == Status.OUT_OF_RANGE
    assert reason in text
    after = h.counters()
    assert (after.form_pulses, after.set_pulses, after.reset_pulses, after.reads) == (
        before.form_pulses,
        before.set_pulses,
        before.reset_pulses,
        before.reads,
    )
    assert h.engine.array.time_s == t_before  # not even a read was taken
    np.testing.assert_array_equal(conductances(h.engine), g)
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE  # no stream was started


def test_read_block_larger_than_one_response_is_refused() -> None:
    h = Host(new_engine(BoardConfig(rows=64, cols=64, seed=2)))
    h.poll()
    h.hello()
    limit = m.max_block_cells(h.engine.config.max_payload)
    assert limit < 64 * 64
    status, text = h.status(m.ReadBlockRequest(0, 0, 64, 64, 100))
    assert status == Status.OUT_OF_RANGE and f"block of 4096 cells exceeds {limit} cells" in text
    assert h.counters().reads == 0
    block = h.ok(m.ReadBlockRequest(0, 0, limit // 64, 64, 100))
    assert block.codes.size == (limit // 64) * 64


def test_unknown_opcode_bad_length_and_version_mismatch(formed: Host) -> None:
    h = formed
    reads = h.counters().reads
    for opcode in (0x7F, int(Opcode.EV_BOOT), 0x05):
        wire = Frame(FrameType.REQUEST, 300, opcode).encode()
        answer = h.engine.feed(wire)
        frame = Frame.decode(answer)
        assert (frame.type, frame.seq, frame.opcode, frame.status) == (
            FrameType.RESPONSE,
            300,
            opcode,
            Status.UNKNOWN_OPCODE,
        )
        assert f"0x{opcode:02x}" in error_text(frame)
        assert h.engine.feed(wire) == answer  # refusals are cached like any response
    short = Frame(FrameType.REQUEST, 301, Opcode.READ, payload=m.ReadRequest(0, 0, 100).encode()[:4])
    frame = Frame.decode(h.engine.feed(short.encode()))
    assert frame.status == Status.BAD_LENGTH and "ReadRequest" in error_text(frame)
    long = Frame(FrameType.REQUEST, 302, Opcode.SET, payload=m.SetRequest(0, 0, 1200, 100, 1000).encode() + b"\x01")
    assert Frame.decode(h.engine.feed(long.encode())).status == Status.BAD_LENGTH
    v3 = replace(m.ReadRequest(0, 0, 100).to_frame(303), version=0x30)
    frame = Frame.decode(h.engine.feed(v3.encode()))
    assert frame.status == Status.VERSION_MISMATCH and "major 3" in error_text(frame)
    assert h.counters().reads == reads  # none of these requests read a cell
    # HELLO is answered whatever the host's version, so a newer host learns the board's.
    hello_v3 = replace(m.HelloRequest(3, 0).to_frame(304), version=0x30)
    frame = Frame.decode(h.engine.feed(hello_v3.encode()))
    assert frame.status == Status.OK and decode_payload(frame).proto_major == 2


def test_every_single_bit_flip_of_a_request_is_nakked_and_not_executed(formed: Host) -> None:
    h = formed
    wire = bytearray(m.SetRequest(3, 3, 1200, 100, 1300).to_frame(500).encode())
    before = h.counters()
    g = conductances(h.engine)
    naks = 0
    for pos in range(len(wire) - 1):  # every byte but the delimiter
        for bit in range(8):
            bad = bytearray(wire)
            bad[pos] ^= 1 << bit
            items = h.send_raw(bytes(bad) + b"\x00")  # an extra delimiter ends a frame cut short by a flip to 0x00
            assert items, f"no answer to a flip of bit {bit} in byte {pos}"
            for item in items:
                assert isinstance(item, Frame) and item.type == FrameType.NAK
                assert item.seq == SEQ_UNKNOWN and item.status in (Status.BAD_CRC, Status.BAD_LENGTH)
                assert (item.opcode, item.version) == (0, VERSION_BYTE) and 0 < len(item.payload) <= 120
                naks += 1
    assert naks >= 8 * (len(wire) - 1)
    after = h.counters()
    assert (after.set_pulses, after.reads) == (before.set_pulses, before.reads)
    np.testing.assert_array_equal(conductances(h.engine), g)
    # The board has resynchronised: the intact frame is executed.
    frame = Frame.decode(h.engine.feed(bytes(wire)))
    assert (frame.type, frame.seq, frame.status) == (FrameType.RESPONSE, 500, Status.OK)
    assert h.counters().set_pulses == before.set_pulses + 1


def test_board_ignores_frames_that_are_not_requests(formed: Host) -> None:
    h = formed
    reads = h.counters().reads
    for kind in (FrameType.RESPONSE, FrameType.EVENT, FrameType.NAK):
        assert h.engine.feed(Frame(kind, 9, Opcode.READ, payload=m.ReadRequest(0, 0, 100).encode()).encode()) == b""
    assert h.counters().reads == reads


# ------------------------------------------------------------------------------------- endurance stream
def stream_items(items: list[Frame | DecodeError]) -> list[m.Message]:
    return [
        decode_payload(f)
        for f in items
        if isinstance(f, Frame) and f.opcode in (Opcode.EV_ENDURANCE_DATA, Opcode.EV_ENDURANCE_END)
    ]


def test_endurance_stream_numbering_window_acks_and_data(formed: Host) -> None:
    h = formed
    window = h.engine.config.stream_window
    before = h.counters()
    frame, items = h.exchange(endurance_request(n_cycles=1000, read_every=100))
    started = decode_payload(frame)
    assert frame.status == Status.OK and (started.n_events, started.n_cells) == (10, 16)
    # The response comes first, then exactly one window of events.
    assert items[0] is frame
    events = stream_items(items)
    assert [e.event_no for e in events] == list(range(window))
    assert stream_items(h.poll()) == []  # window full: nothing more until an ack
    assert h.ok(m.HeartbeatRequest()).state == BoardState.STREAMING
    status, text = h.status(m.SetRequest(0, 0, 1200, 100, 1000))
    assert status == Status.BUSY and str(started.stream_id) in text
    assert h.status(m.ReadRequest(0, 0, 100))[0] == Status.BUSY
    assert h.status(endurance_request(100, 10))[0] == Status.BUSY

    # STREAM_RESEND: the reply, then the identical event frame.
    original = next(f for f in h.events if f.opcode == Opcode.EV_ENDURANCE_DATA and decode_payload(f).event_no == 2)
    rframe, ritems = h.exchange(m.StreamResend(started.stream_id, 2))
    assert rframe.status == Status.OK and decode_payload(rframe) == m.StreamResendReply(started.stream_id, 2)
    assert ritems.index(rframe) == 0 and len(ritems) == 2 and ritems[1] == original
    assert ritems[1].to_bytes() == original.to_bytes()

    # A retried STREAM_RESEND (same seq) is answered from the cache with the reply only (PROTOCOL.md 9.5).
    wire = m.StreamResend(started.stream_id, 5).to_frame(4000).encode()
    answer = FrameDecoder().feed(h.engine.feed(wire))
    assert [f.type for f in answer] == [FrameType.RESPONSE, FrameType.EVENT]
    retry = FrameDecoder().feed(h.engine.feed(wire))
    assert retry == answer[:1]

    reply = h.ok(m.StreamAck(started.stream_id, 3))
    assert reply.next_event == 3
    assert h.ok(m.StreamAck(started.stream_id, 1)).next_event == 3  # a lower ack changes nothing
    more = stream_items(h.events[-3:])
    assert [e.event_no for e in more] == [8, 9, 10]
    end = more[-1]
    assert isinstance(end, m.EnduranceEnd) and end.reason == StreamEnd.COMPLETE and end.cycles_done == 1000
    events += more[:-1]
    # Acknowledged events are gone from the window; unknown streams and future events are refused.
    assert h.status(m.StreamResend(started.stream_id, 1))[0] == Status.BAD_ARGUMENT
    assert h.status(m.StreamAck(started.stream_id + 1, 5))[0] == Status.BAD_ARGUMENT
    assert h.status(m.StreamAck(started.stream_id, 12))[0] == Status.BAD_ARGUMENT
    assert h.status(m.SetRequest(0, 0, 1200, 100, 1000))[0] == Status.BUSY  # end event not yet acknowledged
    h.ok(m.StreamAck(started.stream_id, 11))
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE
    assert h.status(m.SetRequest(0, 0, 1200, 100, 1000))[0] == Status.OK

    # Data content: cycle numbers, cell layout, and LRS above HRS for every healthy cell.
    assert [e.cycle for e in events] == list(range(100, 1001, 100))
    assert all(e.stream_id == started.stream_id and e.cell_offset == 0 and e.n == 16 for e in events)
    ts = [e.timestamp_us for e in events]
    assert ts == sorted(ts) and ts[-1] <= end.timestamp_us
    lrs = np.array([e.lrs_codes for e in events])
    hrs = np.array([e.hrs_codes for e in events])
    healthy = healthy_mask(h.engine).reshape(ROWS, COLS)[:4, :4].ravel()
    assert healthy.sum() >= 14
    assert (lrs[:, healthy] > hrs[:, healthy]).all()
    g_lrs = g_from_code(lrs[:, healthy], events[0].amps_per_code, events[0].offset_code, 100)
    g_hrs = g_from_code(hrs[:, healthy], events[0].amps_per_code, events[0].offset_code, 100)
    # SET with the gate at 1.2 V: I_cc = 50 uA/V^2 * 0.6^2 = 18 uA -> G_LRS ~ 45 uS; RESET at -1.5 V -> ~2 uS.
    assert 30e-6 < np.median(g_lrs) < 65e-6
    assert 0.5e-6 < np.median(g_hrs) < 6e-6
    after = h.counters()
    assert after.set_pulses - before.set_pulses == 1000 * 16 + 1  # plus the one SET after the stream
    assert after.reset_pulses - before.reset_pulses == 1000 * 16
    assert after.reads - before.reads == 2 * 10 * 16


def test_endurance_events_split_a_block_that_does_not_fit_one_frame() -> None:
    h = Host(make_engine(max_payload=256, stream_window=4))
    h.poll()
    h.hello()
    per_event = m.max_event_cells(256)
    assert per_event < 64
    started = h.ok(endurance_request(30, 10, 0, 0, 8, 8))
    assert started.n_events == 3 * 2
    while True:
        got = stream_items(h.events)
        if isinstance(got[-1], m.EnduranceEnd):
            break
        h.ok(m.StreamAck(started.stream_id, got[-1].event_no + 1))
    h.ok(m.StreamAck(started.stream_id, started.n_events + 1))
    data = got[:-1]
    assert [e.event_no for e in got] == list(range(7))
    assert [(e.cycle, e.cell_offset, e.n) for e in data] == [
        (c, off, n) for c in (10, 20, 30) for off, n in ((0, per_event), (per_event, 64 - per_event))
    ]
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE
    # The host may ask for smaller events (cells_per_event): 64 cells in events of 20, 20, 20, 4.
    started = h.ok(replace(endurance_request(10, 10, 0, 0, 8, 8), cells_per_event=20))
    assert started.n_events == 4
    h.ok(m.StreamAck(started.stream_id, 4))
    got = stream_items(h.events)[-5:]
    assert [(e.event_no, e.cell_offset, e.n) for e in got[:-1]] == [(0, 0, 20), (1, 20, 20), (2, 40, 20), (3, 60, 4)]
    assert isinstance(got[-1], m.EnduranceEnd) and got[-1].event_no == 4


def test_endurance_runs_trailing_cycles_and_can_resend_its_end_event(host: Host) -> None:
    h = host
    before = h.counters()
    started = h.ok(endurance_request(1050, 100))  # 10 read points, then 50 more cycles
    assert started.n_events == 10
    h.ok(m.StreamAck(started.stream_id, 8))
    end_frame = next(f for f in h.events if f.opcode == Opcode.EV_ENDURANCE_END)
    end = decode_payload(end_frame)
    assert (end.event_no, end.cycles_done, end.reason) == (10, 1050, StreamEnd.COMPLETE)
    _, items = h.exchange(m.StreamResend(started.stream_id, 10))
    assert items[1].to_bytes() == end_frame.to_bytes()
    h.ok(m.StreamAck(started.stream_id, 11))
    after = h.counters()
    assert (after.set_pulses - before.set_pulses, after.reset_pulses - before.reset_pulses) == (1050 * 16, 1050 * 16)
    assert after.reads - before.reads == 2 * 10 * 16
    # Device time: per cell and cycle two 100 ns pulses + 2 x 1 us overhead; 10 us per read.
    assert end.timestamp_us - started.timestamp_us == pytest.approx(1050 * 16 * 2.2 + 320 * 10, abs=1)


def test_abort_stops_a_running_stream(formed: Host) -> None:
    h = formed
    before = h.counters()
    n_cycles = 1_000_000
    frame, items = h.exchange(endurance_request(n_cycles, 1000))
    started = decode_payload(frame)
    assert len(stream_items(items)) == h.engine.config.stream_window
    h.ok(m.StreamAck(started.stream_id, 4))
    sent = stream_items(h.events)
    assert [e.event_no for e in sent] == list(range(h.engine.config.stream_window + 4))
    aframe, aitems = h.exchange(m.AbortRequest())
    assert aframe.status == Status.OK and decode_payload(aframe).stream_id == started.stream_id
    assert aitems.index(aframe) == 0
    end = stream_items(aitems)
    assert len(end) == 1 and isinstance(end[0], m.EnduranceEnd)
    assert end[0].reason == StreamEnd.ABORTED and end[0].stream_id == started.stream_id
    assert end[0].event_no == sent[-1].event_no + 1
    assert sent[-1].cycle <= end[0].cycles_done < n_cycles
    after = h.counters()
    assert after.set_pulses - before.set_pulses == end[0].cycles_done * 16 < n_cycles * 16
    # The board is free again: nothing more of the stream, new requests accepted.
    assert stream_items(h.poll()) == []
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE
    assert h.status(m.StreamAck(started.stream_id, 5))[0] == Status.BAD_ARGUMENT
    assert h.status(m.SetRequest(0, 0, 1200, 100, 1000))[0] == Status.OK
    second = h.ok(endurance_request(200, 100))
    assert second.stream_id != started.stream_id
    # ABORT with no stream running answers 0xFFFF.
    h.ok(m.StreamAck(second.stream_id, 2))
    h.ok(m.StreamAck(second.stream_id, 3))
    assert h.ok(m.AbortRequest()).stream_id == 0xFFFF


# ------------------------------------------------------------------------------------- watchdog
def test_watchdog_expiry_idle_and_heartbeat_timeout() -> None:
    clock = FakeClock()
    h = Host(make_engine(clock=clock))
    h.poll()
    h.hello()
    wd = h.engine.config.watchdog_ms / 1000
    # Fed regularly, it never fires.
    for _ in range(10):
        clock.t += 0.8 * wd
        assert h.poll() == []
        h.ok(m.HeartbeatRequest())
    clock.t += 0.99 * wd
    assert h.poll() == []
    clock.t += 0.02 * wd
    items = h.poll()
    assert len(items) == 1 and isinstance(ev := decode_payload(items[0]), m.WatchdogEvent) and ev.stream_id == 0xFFFF
    assert h.poll() == []  # fires once
    first = h.ok(m.HeartbeatRequest())
    assert first.state == BoardState.SAFE_IDLE and first.watchdog_ms == 2000
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE

    # HEARTBEAT(watchdog_ms) changes the timeout.
    reply = h.ok(m.HeartbeatRequest(watchdog_ms=500))
    assert reply.watchdog_ms == 500 and h.hello().watchdog_ms == 500
    clock.t += 0.45
    assert h.poll() == []
    clock.t += 0.1
    assert [f.opcode for f in h.poll()] == [Opcode.EV_WATCHDOG]
    h.engine.boot()  # a reset restores the default timeout
    h.hello()
    assert h.ok(m.HeartbeatRequest()).watchdog_ms == 2000


def test_watchdog_is_armed_by_hello_and_fed_by_every_valid_request() -> None:
    clock = FakeClock()
    h = Host(make_engine(clock=clock))
    h.poll()
    for _ in range(3):  # before HELLO nothing arms it (requests are refused HANDSHAKE_REQUIRED)
        assert h.status(m.ReadRequest(0, 0, 100))[0] == Status.HANDSHAKE_REQUIRED
        clock.t += 10.0
        assert h.poll() == []
    h.hello()
    retry = m.SetRequest(0, 0, 1200, 100, 1000).to_frame(50).encode()
    h.send_raw(retry)
    refused = [
        m.SetRequest(0, 0, 3500, 100, 1000).to_frame(51).encode(),  # OUT_OF_RANGE
        Frame(FrameType.REQUEST, 52, 0x7F).encode(),  # UNKNOWN_OPCODE
        Frame(FrameType.REQUEST, 53, Opcode.READ, payload=b"\x01").encode(),  # BAD_LENGTH
        retry,  # a cache hit
    ]
    for wire in refused * 3:
        clock.t += 1.5
        assert all(f.type == FrameType.RESPONSE for f in h.send_raw(wire))
    clock.t += 1.5
    assert h.poll() == []
    # Garbage is not a valid request: it is NAKed but does not feed the watchdog.
    h.send_raw(b"\x05garbage\x00")
    clock.t += 0.6
    assert [f.opcode for f in h.poll()] == [Opcode.EV_WATCHDOG]


def test_watchdog_does_not_count_execution_time(formed: Host) -> None:
    clock = FakeClock()
    h = formed
    h.engine._clock = clock
    h.ok(m.HeartbeatRequest())
    slow_read = h.engine.array.read_current

    def read_current(*args: object) -> np.ndarray:
        clock.t += 5.0  # an operation that takes longer than the 2 s timeout
        return slow_read(*args)

    h.engine.array.read_current = read_current  # type: ignore[method-assign]
    items = h.send_raw(m.ReadRequest(0, 0, 100).to_frame(60).encode())
    assert [(f.type, f.status) for f in items] == [(FrameType.RESPONSE, Status.OK)]
    clock.t += 1.9
    assert h.poll() == []
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE


def test_watchdog_stops_a_running_stream(formed: Host) -> None:
    clock = FakeClock()
    h = formed
    h.engine._clock = clock  # the fixture's engine was made with the real clock
    h.ok(m.HeartbeatRequest(watchdog_ms=1000))
    started = h.ok(endurance_request(100_000, 100))
    assert len(stream_items(h.events)) == h.engine.config.stream_window
    h.ok(m.StreamAck(started.stream_id, 2))
    clock.t += 1.01
    items = h.poll()
    assert [f.opcode for f in items] == [Opcode.EV_ENDURANCE_END, Opcode.EV_WATCHDOG]
    end, wd = decode_payload(items[0]), decode_payload(items[1])
    assert end.reason == StreamEnd.WATCHDOG and end.stream_id == started.stream_id and end.cycles_done < 100_000
    assert wd.stream_id == started.stream_id and wd.timestamp_us >= end.timestamp_us
    assert h.ok(m.HeartbeatRequest()).state == BoardState.SAFE_IDLE
    assert h.ok(m.HeartbeatRequest()).state == BoardState.IDLE
    assert h.status(m.StreamAck(started.stream_id, 4))[0] == Status.BAD_ARGUMENT
    assert h.status(m.SetRequest(0, 0, 1200, 100, 1000))[0] == Status.OK


# ------------------------------------------------------------------------------------- one host per board
HOST_B = 0xB0B  # host nonce of a second host (the Host helper's HELLO has nonce 0)


def hello_b(flags: int = 0) -> m.HelloRequest:
    return m.HelloRequest(2, 0, flags, HOST_B)


def test_a_second_host_hello_is_refused_and_never_clears_the_first_hosts_cache(formed: Host) -> None:
    a, b = formed, Host(formed.engine)
    set_wire = m.SetRequest(2, 3, 1200, 100, 1300).to_frame(700).encode()
    first = a.engine.feed(set_wire)
    sets = a.counters().set_pulses
    for seq in (700, 701, 702):  # 700 is the seq of A's cached SET: a refused HELLO must not replace that entry
        frame, items = b.exchange(hello_b(), seq=seq)
        assert frame.status == Status.SESSION_ACTIVE and len(items) == 1  # nothing but the refusal
        busy = m.HelloInfo.decode(frame.payload)  # the payload tells the new host whose board it is, how long to wait
        assert (busy.board_id, busy.watchdog_ms, busy.session_id) == ("SIM-RRAM", 2000, a.engine.session_id)
    assert a.engine.feed(set_wire) == first  # A's retry is still answered from the cache: no second pulse
    assert a.counters().set_pulses == sets
    assert a.ok(m.HelloRequest(2, 0)).session_id == a.engine.session_id  # the owner (same nonce) may HELLO again


def test_a_refused_hello_neither_feeds_the_watchdog_nor_stops_a_stream(formed: Host) -> None:
    clock = FakeClock()
    a, b = formed, Host(formed.engine)
    a.engine._clock = clock
    started = a.ok(endurance_request(100_000, 100))
    for _ in range(4):  # B keeps knocking 0.45 .. 1.8 s after A's last request
        clock.t += 0.45
        assert b.status(hello_b())[0] == Status.SESSION_ACTIVE
        assert a.engine.state == BoardState.STREAMING
    assert b.poll() == []
    clock.t += 0.21  # 2.01 s after A's last request: its watchdog fires although B sent four HELLOs meanwhile
    assert [f.opcode for f in b.poll()] == [Opcode.EV_ENDURANCE_END, Opcode.EV_WATCHDOG]
    info = b.ok(hello_b())
    assert (info.prev_session_end, info.prev_stream_id) == (SessionEnd.WATCHDOG, started.stream_id)
    assert b.status(m.SetRequest(0, 0, 1200, 100, 1000))[0] == Status.OK  # no "stream 1 is running"
    assert a.status(m.HelloRequest(2, 0))[0] == Status.SESSION_ACTIVE  # now A is the other host


def test_a_request_with_the_reserved_seq_is_only_answered_and_does_not_feed_the_watchdog() -> None:
    clock = FakeClock()
    h = Host(make_engine(clock=clock))
    h.poll()
    h.hello()
    clock.t += 1.5
    items = h.send_raw(m.ReadRequest(0, 0, 100).to_frame(SEQ_UNKNOWN).encode())
    assert [(f.seq, f.status) for f in items] == [(SEQ_UNKNOWN, Status.BAD_ARGUMENT)]  # type: ignore[union-attr]
    clock.t += 0.51  # 2.01 s after HELLO
    assert [f.opcode for f in h.poll()] == [Opcode.EV_WATCHDOG]


def test_a_host_whose_watchdog_fired_resumes_its_session_with_its_next_request(formed: Host) -> None:
    clock = FakeClock()
    a, b = formed, Host(formed.engine)
    a.engine._clock = clock
    a.ok(m.HeartbeatRequest())
    clock.t += 2.01
    assert [f.opcode for f in a.poll()] == [Opcode.EV_WATCHDOG]
    assert a.ok(m.HeartbeatRequest()).state == BoardState.SAFE_IDLE  # 3.7: back to IDLE, and its session goes on
    assert b.status(hello_b())[0] == Status.SESSION_ACTIVE


def test_release_ends_the_session_stops_the_stream_and_lets_the_next_host_in(formed: Host) -> None:
    clock = FakeClock()
    a, b = formed, Host(formed.engine)
    a.engine._clock = clock
    started = a.ok(endurance_request(100_000, 100))
    release = m.ReleaseRequest().to_frame(800).encode()
    items = a.send_raw(release)
    reply = decode_payload(items[-2])
    assert isinstance(reply, m.ReleaseReply) and reply.stream_id == started.stream_id
    end = decode_payload(items[-1])  # the stream stops as with ABORT: its end event follows the reply
    assert isinstance(end, m.EnduranceEnd) and end.reason == StreamEnd.ABORTED
    assert a.engine.feed(release) == items[-2].encode()  # a retry is answered from the cache
    status, text = a.status(m.ReadRequest(0, 0, 100))
    assert status == Status.HANDSHAKE_REQUIRED and "released" in text
    clock.t += 60.0  # released: the watchdog is disarmed
    assert a.poll() == []
    info = b.ok(hello_b())
    assert (info.prev_session_end, info.prev_stream_id) == (SessionEnd.RELEASED, started.stream_id)
    assert b.ok(m.ReleaseRequest()).stream_id == 0xFFFF


def test_take_over_ends_a_session_whose_watchdog_is_disabled() -> None:
    clock = FakeClock()
    a = Host(make_engine(clock=clock, watchdog_ms=0))
    b = Host(a.engine)
    a.poll()
    a.hello()
    started = a.ok(endurance_request(100_000, 100))
    clock.t += 3600.0  # no watchdog: the session never ends on its own
    assert a.poll() == [] and b.status(hello_b())[0] == Status.SESSION_ACTIVE
    frame, items = b.exchange(hello_b(HelloFlag.TAKE_OVER))
    events = [decode_payload(f) for f in items if isinstance(f, Frame) and f.type == FrameType.EVENT]
    assert [type(e) for e in events] == [m.EnduranceEnd, m.WatchdogEvent]  # as the watchdog would, before the answer
    assert events[0].reason == StreamEnd.WATCHDOG and events[1].stream_id == started.stream_id
    info = decode_payload(frame)
    assert frame.status == Status.OK and info.prev_session_end == SessionEnd.TAKEN_OVER
    assert info.prev_stream_id == started.stream_id
    assert a.status(m.StreamAck(started.stream_id, 2))[0] == Status.BAD_ARGUMENT  # A's stream is gone
    assert b.status(m.SetRequest(0, 0, 1200, 100, 1000))[0] == Status.OK


def test_a_hello_that_opens_no_session_changes_nothing(formed: Host) -> None:
    a = formed
    set_wire = m.SetRequest(2, 3, 1200, 100, 1300).to_frame(900).encode()
    first = a.engine.feed(set_wire)
    # A 1.x host's HELLO (its 2-byte layout) and a 3.x one are version probes: answered, nothing else (3.6).
    for version in (0x10, 0x30):
        probe = Frame(FrameType.REQUEST, 900, Opcode.HELLO, payload=b"\x01\x00", version=version)
        frame = Frame.decode(a.engine.feed(probe.encode()))
        assert frame.status == Status.OK and decode_payload(frame).proto_major == 2
    short = Frame(FrameType.REQUEST, 900, Opcode.HELLO, payload=b"\x02\x00")  # a 2.0 HELLO has 7 bytes
    assert Frame.decode(a.engine.feed(short.encode())).status == Status.BAD_LENGTH
    assert a.engine.feed(set_wire) == first  # still the cached answer: none of them cleared the cache
    assert Host(a.engine).status(hello_b())[0] == Status.SESSION_ACTIVE  # nor ended A's session


# ------------------------------------------------------------------------------------- write-verify
def test_write_verify_reaches_targets_on_formed_cells(formed: Host) -> None:
    h = formed
    healthy = healthy_mask(h.engine)
    assert healthy.sum() >= 55
    rng = np.random.default_rng(11)
    target = rng.uniform(4e-6, 36e-6, ROWS * COLS)
    tol = 1e-6
    before = h.counters()
    a = h.engine.array
    t0_ns, formed = a.clock_ns, a.formed.copy()
    res = h.ok(wv_request(ALL_ROWS, ALL_COLS, target, tol))
    r = res.results
    assert res.n == 64
    status = r["status"]
    converged = status == CellResult.CONVERGED
    assert converged[healthy].mean() > 0.95
    assert (np.abs(r["final_s"] - target)[converged] <= tol * (1 + 1e-6)).all()
    # Time slots (firmware docstring): each formed cell owns read + 100 x (pulse + read), in batch order.
    step_ns = a.pulse_ns(WV_KW["width_ns"]) + a.read_ns
    slot_ns = np.where(formed, a.read_ns + 100 * step_ns, 0)
    last_read_ns = t0_ns + np.cumsum(slot_ns) - slot_ns + a.read_ns + r["pulses"].astype(np.int64) * step_ns
    assert a.clock_ns == t0_ns + int(slot_ns.sum())
    # The cell's true conductance at its last verify read is within tolerance plus that read's noise.
    g_true = a.conductance(ALL_ROWS, ALL_COLS, at_ns=last_read_ns)
    assert (np.abs(g_true - target)[converged] <= tol + 4 * READ_NOISE_S).all()
    assert np.median(np.abs(g_true - target)[converged]) < tol
    # final_code is the raw code of the last read, consistent with final_s via the nominal calibration.
    rd = h.engine.chain.read
    np.testing.assert_allclose(
        g_from_code(r["final_code"], rd.amps_per_code, rd.offset_code, 100), r["final_s"], rtol=1e-5
    )
    # Pulse bookkeeping: every pulse reported is a counted SET or RESET.
    after = h.counters()
    assert (after.set_pulses - before.set_pulses) + (after.reset_pulses - before.reset_pulses) == int(r["pulses"].sum())
    assert (r["pulses"] <= 100).all()
    # Unformed or stuck cells do not converge but are reported as such.
    assert set(status[~healthy]) <= {
        CellResult.NOT_FORMED,
        CellResult.STUCK,
        CellResult.MAX_PULSES,
        CellResult.CONVERGED,
    }


def test_write_verify_on_unformed_cells_reports_not_formed(host: Host) -> None:
    h = host
    before = h.counters()
    res = h.ok(wv_request(ALL_ROWS[:10], ALL_COLS[:10], np.full(10, 20e-6), 1e-6))
    assert (res.results["status"] == CellResult.NOT_FORMED).all()
    assert (res.results["pulses"] == 0).all()
    assert (res.results["final_s"] == 0).all() and (res.results["final_code"] == 0).all()
    after = h.counters()
    assert (after.set_pulses, after.reset_pulses) == (before.set_pulses, before.reset_pulses)
    # A batch that lists a cell twice is malformed.
    status, text = h.status(wv_request(np.array([1, 1]), np.array([2, 2]), np.full(2, 20e-6), 1e-6))
    assert status == Status.BAD_ARGUMENT and "more than once" in text  # PROTOCOL.md 7.4 (the host checks it too)


def test_abort_queued_behind_write_verify_aborts_it(formed: Host) -> None:
    h = formed
    before = h.counters()
    target = np.full(16, 3e-6)  # formed cells sit near 20 uS: far from target, nothing converges at once
    wire = (
        wv_request(ALL_ROWS[:16], ALL_COLS[:16], target, 0.5e-6).to_frame(900).encode()
        + m.AbortRequest().to_frame(901).encode()
    )
    items = h.send_raw(wire)
    assert [(f.seq, f.opcode) for f in items] == [(900, Opcode.WRITE_VERIFY), (901, Opcode.ABORT)]
    wv, ab = items
    assert wv.status == Status.ABORTED
    res = decode_payload(wv)
    assert isinstance(res, m.WriteVerifyResult) and res.n == 16
    assert (res.results["status"] == CellResult.ABORTED).all()
    assert (res.results["final_s"] > 5e-6).all()  # the cells were read, not moved
    assert ab.status == Status.OK and decode_payload(ab).stream_id == 0xFFFF
    after = h.counters()
    assert (after.set_pulses, after.reset_pulses) == (before.set_pulses, before.reset_pulses)
    assert after.reads == before.reads + 16
    # Without the ABORT the same batch runs.
    res = h.ok(wv_request(ALL_ROWS[:16], ALL_COLS[:16], target, 0.5e-6))
    assert (res.results["pulses"] > 0).all()


# ------------------------------------------------------------------------------------- form, read, clock
def test_form_ramps_until_formed() -> None:
    h = Host(make_engine(seed=1))  # this chip has cells that never form
    h.poll()
    h.hello()
    arr = h.engine.array
    formable = np.flatnonzero(arr.can_form & ~arr.stuck_start_lrs & ~arr.stuck_start_hrs)
    never = np.flatnonzero(~arr.can_form & ~arr.stuck_start_lrs & ~arr.stuck_start_hrs)
    assert formable.size >= 50 and never.size >= 1
    kw = FORM_KW
    for idx in formable[:12]:
        r, c = divmod(int(idx), COLS)
        before = h.counters().form_pulses
        res = h.ok(m.FormRequest(r, c, **kw))
        assert res.formed == 1 and arr.formed[idx]
        assert res.pulses == (res.v_final_mv - kw["v_start_mv"]) // kw["v_step_mv"] + 1
        # It stopped at the first voltage at or above the cell's forming threshold (1 us pulses).
        assert res.v_final_mv / 1000 >= arr.v_form[idx] > (res.v_final_mv - kw["v_step_mv"]) / 1000
        g = g_from_code(res.read_code, res.amps_per_code, res.offset_code, res.v_read_mv)
        assert g >= kw["g_formed_ns"] * 1e-9
        assert h.counters().form_pulses - before == res.pulses
        again = h.ok(m.FormRequest(r, c, **kw))  # already formed: no pulse
        assert (again.formed, again.pulses) == (1, 0)
    r, c = divmod(int(never[0]), COLS)
    res = h.ok(m.FormRequest(r, c, **kw))
    full_ramp = (kw["v_stop_mv"] - kw["v_start_mv"]) // kw["v_step_mv"] + 1
    assert (res.formed, res.pulses, res.v_final_mv) == (0, full_ramp, kw["v_stop_mv"])
    assert g_from_code(res.read_code, res.amps_per_code, res.offset_code, 100) < 1e-6


def test_read_of_a_saturating_cell_reports_adc_saturated_with_its_result(formed: Host) -> None:
    h = formed
    assert h.ok(m.ReadRequest(2, 2, 100)).code < 65535
    # A full SET with the gate at 2.0 V: I_cc = 50 uA/V^2 * 1.4^2 = 98 uA -> G ~ 245 uS, 24 uA at 0.1 V,
    # above the read range's ~7.9 uA full scale.
    h.ok(m.SetRequest(2, 2, 1500, 1000, 2000))
    frame, _ = h.exchange(m.ReadRequest(2, 2, 100))
    assert frame.status == Status.ADC_SATURATED
    res = decode_payload(frame)
    assert isinstance(res, m.ReadResult) and res.code == 65535 and res.v_read_mv == 100
    # Reads of other cells are unaffected, and so is a READ_BLOCK (codes clip at the rail).
    assert h.status(m.ReadRequest(2, 3, 100))[0] == Status.OK
    block = h.ok(m.ReadBlockRequest(2, 0, 1, 8, 100))
    assert block.codes[2] == 65535 and (np.delete(block.codes, 2) < 65535).all()


def test_advance_clock_moves_timestamps(formed: Host) -> None:
    h = formed
    t0 = h.ok(m.HeartbeatRequest()).timestamp_us
    reply = h.ok(m.AdvanceClockRequest(5_000_000))
    assert reply.timestamp_us == t0 + 5_000_000
    assert h.ok(m.HeartbeatRequest()).timestamp_us == t0 + 5_000_000
    read = h.ok(m.ReadRequest(0, 0, 100))
    assert read.timestamp_us == t0 + 5_000_000 + 10  # a read costs 10 us of device time
    h.ok(m.AdvanceClockRequest(86_400_000_000))
    assert h.ok(m.CountersRequest()).timestamp_us == read.timestamp_us + 86_400_000_000


def test_without_virtual_clock_capability_advance_clock_is_unknown() -> None:
    caps = Capability.WRITE_VERIFY | Capability.STREAMING
    h = Host(make_engine(capabilities=caps))
    h.poll()
    info = h.hello()
    assert info.capabilities == int(caps)
    status, text = h.status(m.AdvanceClockRequest(1000))
    assert status == Status.UNKNOWN_OPCODE and "0x60" in text
    assert h.status(m.IvSweepRequest(0, 0, -1000, 1000, 11, 100, 3300, 0))[0] == Status.UNKNOWN_OPCODE
    assert h.ok(m.HeartbeatRequest()).timestamp_us == 0
