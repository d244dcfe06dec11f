"""The C firmware (sim_backend/c_firmware.py over firmware_protocol/c/) answers byte for byte as the Python one.

Both engines get the same seeded request sequence (every opcode, refusals of every kind, corrupted frames,
retries, an abort, streams, the watchdog); every chunk of board output must be identical, and so must the
chip at the end. Error texts are compared too: the C core words them as the Python does.
"""

from __future__ import annotations

import numpy as np
import pytest

from firmware_protocol import Frame, FrameDecoder, FrameType, Opcode, Status, decode_payload
from firmware_protocol import messages as m
from firmware_protocol.constants import HelloFlag
from firmware_protocol.limits import CLOCK_MAX_NS
from sim_backend.board_config import BoardConfig
from sim_backend.c_firmware import CFirmwareEngine, CFirmwareUnavailable, c_firmware_available, make_engine
from sim_backend.firmware import FirmwareEngine
from tests.sim_backend.test_firmware import FORM_KW, WV_KW, FakeClock

pytestmark = pytest.mark.skipif(c_firmware_available() is not None, reason=f"C firmware: {c_firmware_available()}")


class Twin:
    """The Python and the C firmware side by side: every input goes to both, their outputs must be equal."""

    def __init__(self, fast_paths: bool = True, **config: object) -> None:
        cfg = BoardConfig(**{"rows": 8, "cols": 8, "seed": 3, **config})  # type: ignore[arg-type]
        self.clock = FakeClock()
        self.py = FirmwareEngine(cfg, wall_clock=self.clock)
        self.c = CFirmwareEngine(cfg, wall_clock=self.clock, fast_paths=fast_paths)
        self.seq = 0
        self.chunks = 0
        self.decoder = FrameDecoder()
        self.events: list[m.Message] = []  # stream events seen so far

    def _same(self, a: bytes, b: bytes, what: str) -> bytes:
        if a != b:
            fa = [(f.opcode, f.status, f.payload[:80]) for f in FrameDecoder().feed(a) if isinstance(f, Frame)]
            fb = [(f.opcode, f.status, f.payload[:80]) for f in FrameDecoder().feed(b) if isinstance(f, Frame)]
            raise AssertionError(f"{what}: python {fa}\n c {fb}")
        self.chunks += 1
        return a

    def feed(self, wire: bytes) -> bytes:
        return self._same(self.py.feed(wire), self.c.feed(wire), f"feed {wire[:24].hex()}")

    def poll(self) -> bytes:
        return self._same(self.py.poll(), self.c.poll(), "poll")

    def send(self, msg: m.Message, seq: int | None = None) -> list[Frame]:
        if seq is None:
            self.seq = self.seq % 0xFFFE + 1
            seq = self.seq
        return self.frames(self.feed(msg.to_frame(seq).encode()))

    def frames(self, out: bytes) -> list[Frame]:
        frames = [f for f in self.decoder.feed(out) if isinstance(f, Frame)]
        self.events += [decode_payload(f) for f in frames if f.opcode in (0x82, 0x83)]
        return frames

    def response(self, msg: m.Message) -> Frame:
        return next(f for f in self.send(msg) if f.type == FrameType.RESPONSE)

    def state_equal(self) -> None:
        a, b = self.py.export_state(), self.c.export_state()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert (self.py.session_id, self.py.state, self.py.watchdog_ms) == (
            self.c.session_id,
            self.c.state,
            self.c.watchdog_ms,
        )


def wv(rows: list[int], cols: list[int], target: list[float], tol: float, max_pulses: int = 60) -> m.WriteVerifyRequest:
    e = np.zeros(len(rows), m.WV_ENTRY)
    e["row"], e["col"], e["target_s"], e["tol_s"], e["max_pulses"] = rows, cols, target, tol, max_pulses
    return m.WriteVerifyRequest(**WV_KW, n=len(rows), entries=e)  # type: ignore[arg-type]


def endurance(n_cycles: int, read_every: int, nrows: int = 2, ncols: int = 4, per_event: int = 0) -> m.EnduranceRequest:
    return m.EnduranceRequest(
        0, 0, nrows, ncols, n_cycles, read_every, 1200, 100, 1200, -1500, 100, 3300, 100, per_event
    )


def run_stream(t: Twin, req: m.EnduranceRequest, resend: bool = True) -> None:
    """Start a stream, acknowledge it to the end, asking for one re-send on the way."""
    started = decode_payload(t.response(req))
    assert isinstance(started, m.EnduranceStarted)
    acked, asked = 0, False
    for _ in range(10_000):
        t.send(m.HeartbeatRequest())
        t.frames(t.poll())
        if resend and not asked:
            t.send(m.StreamResend(started.stream_id, 0))
            asked = True
        nums = [
            e.event_no
            for e in t.events
            if isinstance(e, (m.EnduranceData, m.EnduranceEnd)) and e.stream_id == started.stream_id
        ]
        if nums:
            acked = max(nums) + 1
        t.send(m.StreamAck(started.stream_id, acked))
        if acked > started.n_events:
            return
    raise AssertionError("stream did not end")


def test_the_c_firmware_answers_a_whole_session_byte_for_byte() -> None:
    t = Twin()
    t.poll()  # EV_BOOT
    assert t.response(m.ReadRequest(0, 0, 100)).status == Status.HANDSHAKE_REQUIRED
    t.send(m.HelloRequest(2, 0, 0, 0x1234))
    t.send(m.ReadRequest(0, 0, 100))  # pristine
    for k in range(12):
        t.send(m.FormRequest(k // 8, k % 8, **FORM_KW))  # type: ignore[arg-type]
    t.send(m.FormRequest(7, 7, 2400, 2600, 100, 1000, 1000, 100, 5000))  # a ramp too short to form
    for k in range(8):
        t.send(m.SetRequest(0, k, 1200, 100, 900 + 40 * k))
        t.send(m.ResetRequest(1, k, -1000 - 50 * k, 100, 3300))
        t.send(m.ReadRequest(0, k, 50 + 20 * k))
    t.send(m.SetRequest(0, 0, 3000, 1_000_000, 3300))  # a strong SET: compliance or not, both say the same
    t.send(m.ReadBlockRequest(0, 0, 8, 8, 100))
    t.send(m.ReadBlockRequest(1, 2, 3, 5, 200))
    t.send(m.IvSweepRequest(0, 3, -1500, 1500, 31, 100, 1000, 0))
    t.send(m.IvSweepRequest(0, 4, 1500, -1400, 7, 2000, 1200, 1))
    t.send(m.IvSweepRequest(1, 4, 0, 3000, 1024, 10, 3300, 0))
    rng = np.random.default_rng(7)
    rows, cols = [0, 0, 0, 0, 1, 1, 1, 7, 1], [0, 1, 2, 3, 0, 1, 2, 6, 3]  # (7, 6) is not formed
    t.send(wv(rows, cols, list(rng.uniform(5e-6, 30e-6, 9)), 1e-6))
    t.send(wv(rows, cols, list(rng.uniform(5e-6, 30e-6, 9)), 2e-8, max_pulses=7))  # MAX_PULSES / STUCK
    # an ABORT in the same chunk as a WRITE_VERIFY: heard before its first pulse
    t.seq += 2
    both = wv(rows, cols, [20e-6] * 9, 1e-7).to_frame(t.seq - 1).encode() + m.AbortRequest().to_frame(t.seq).encode()
    out = t.frames(t.feed(both))
    assert [f.status for f in out] == [Status.ABORTED, Status.OK]
    t.send(m.AdvanceClockRequest(3_600_000_000))
    t.send(m.ReadBlockRequest(0, 0, 2, 8, 100))
    run_stream(t, endurance(2000, 100))
    run_stream(t, endurance(95, 10, 4, 8, per_event=5))  # several events per read point, trailing cycles
    t.response(endurance(1000, 1))
    t.frames(t.poll())
    t.send(m.ReadRequest(0, 0, 100))  # BUSY
    t.send(m.AbortRequest())
    t.send(m.StreamAck(1, 1))  # no running stream
    t.send(m.HeartbeatRequest(0))
    t.send(m.CountersRequest())
    t.state_equal()


def test_refusals_corrupt_frames_and_retries_agree() -> None:
    t = Twin()
    t.poll()
    t.send(m.HelloRequest(2, 0, 0, 7))
    t.send(m.FormRequest(0, 0, **FORM_KW))  # type: ignore[arg-type]
    refused = [
        m.SetRequest(0, 0, 3500, 100, 1000),
        m.SetRequest(8, 0, 1200, 100, 1000),
        m.SetRequest(0, 0, 1200, 15, 1000),
        m.SetRequest(0, 0, 1200, 5, 1000),
        m.SetRequest(0, 0, 1200, 100, 3400),
        m.ResetRequest(0, 0, 200, 100, 3300),
        m.FormRequest(0, 0, 100, 50, 10, 1000, 1000, 100, 5000),
        m.FormRequest(0, 0, 0, 5000, 0, 1000, 1000, 100, 5000),
        m.FormRequest(0, 0, 1000, 2000, 100, 1000, 1000, 0, 5000),
        m.FormRequest(0, 0, 1000, 2000, 100, 1000, 1000, -5, 5000),
        m.ReadRequest(0, 0, 0),
        m.ReadRequest(0, 0, 301),
        m.ReadBlockRequest(0, 0, 0, 4, 100),
        m.ReadBlockRequest(6, 0, 4, 4, 100),
        m.IvSweepRequest(0, 0, -3500, 100, 10, 100, 1000, 0),
        m.IvSweepRequest(0, 0, 0, 100, 1, 100, 1000, 0),
        m.IvSweepRequest(0, 0, 0, 100, 10, 100, 1000, 2),
        m.IvSweepRequest(0, 0, 0, 100, 10, 20_000_000, 1000, 1),
        m.IvSweepRequest(0, 0, 0, 100, 1024, 1_000_000, 1000, 0),  # 1.03 s: fits; then a longer one
        m.IvSweepRequest(0, 0, 0, 100, 1000, 10_000_000, 1000, 1),
        endurance(0, 1),
        endurance(10, 11),
        m.EnduranceRequest(0, 0, 8, 8, 2**32 - 1, 1, 1200, 100, 1200, -1500, 100, 3300, 100, 1),
        wv([0], [0], [1e-5], 0.0),
        wv([0, 0], [0, 0], [1e-5, 2e-5], 1e-6),
        wv([0], [9], [1e-5], 1e-6),
        wv([r for r in range(8) for _ in range(8)], list(range(8)) * 8, [1e-5] * 64, 1e-6, max_pulses=65535),
        m.AdvanceClockRequest(2**63),
        m.StreamResend(3, 0),
    ]
    for msg in refused:
        t.send(msg)
    nan = wv([0], [0], [float("nan")], 1e-6)
    t.send(nan)
    for raw in (
        m.Frame(FrameType.REQUEST, 50, 0x77, 0, b"").encode(),  # unknown opcode
        m.Frame(FrameType.REQUEST, 51, Opcode.EV_BOOT, 0, b"").encode(),  # an event opcode as a request
        m.Frame(FrameType.REQUEST, 52, Opcode.READ, 0, b"\x00\x00").encode(),  # BAD_LENGTH
        m.Frame(FrameType.REQUEST, 53, Opcode.GET_COUNTERS, 0, b"\x01").encode(),  # trailing bytes
        m.Frame(FrameType.REQUEST, 54, Opcode.WRITE_VERIFY, 0, bytes(28 + 13)[:26] + b"\x01\x00" + bytes(13)).encode(),
        m.Frame(FrameType.REQUEST, 55, Opcode.READ, 0, b"\x00" * 6, version=0x30).encode(),  # VERSION_MISMATCH
        m.Frame(FrameType.REQUEST, 0xFFFF, Opcode.READ, 0, b"\x00\x00\x00\x00\x64\x00").encode(),  # reserved seq
        m.Frame(FrameType.RESPONSE, 56, Opcode.READ, 0, b"").encode(),  # not a request: ignored
        m.Frame(FrameType.REQUEST, 57, Opcode.HELLO, 0, b"\x02\x00", version=0x10).encode(),  # version probe
        m.Frame(FrameType.REQUEST, 58, Opcode.HELLO, 0, b"\x02\x00").encode(),  # malformed HELLO
        b"\x00\x00",  # flushes
        b"\x05\x01\x02\x03\x00",  # a block past the end
        b"\x03\x01\x02\x00",  # too short
        bytes([0xFF] * 9000) + b"\x00",  # overlong run
    ):
        t.feed(raw)
    good = m.ReadRequest(0, 0, 100).to_frame(60).encode()
    bad = bytearray(good)
    bad[-2] ^= 0x10
    t.feed(bytes(bad))  # CRC
    t.feed(good[:-6] + b"\x00")  # truncated
    flagged = bytearray(m.Frame(FrameType.REQUEST, 61, Opcode.READ, 0, b"\x00" * 6).to_bytes())
    flagged[1] |= 0x80  # the 1.x bulk flag, with a valid CRC
    from firmware_protocol.cobs import cobs_encode
    from firmware_protocol.crc import crc32_ieee

    flagged[-4:] = crc32_ieee(bytes(flagged[:-4])).to_bytes(4, "little")
    t.feed(cobs_encode(bytes(flagged)) + b"\x00")
    for _ in range(3):
        t.feed(good)  # retries: answered from the cache
    t.send(m.SetRequest(0, 0, 1200, 100, 1000), seq=60)  # same seq, another request: executed anew
    t.send(m.HelloRequest(2, 0, 0, 99))  # another host: SESSION_ACTIVE
    t.send(m.HelloRequest(2, 0, int(HelloFlag.TAKE_OVER), 99))  # takes over: EV_WATCHDOG then HelloInfo
    t.send(m.ReleaseRequest())
    t.send(m.ReadRequest(0, 0, 100))  # released: HANDSHAKE_REQUIRED
    t.send(m.HelloRequest(2, 0, 0, 5))
    for engine in (t.py, t.c):
        engine.array.advance_to_ns(CLOCK_MAX_NS - 50_000)  # 50 us left on the clock
    t.send(m.ReadRequest(0, 0, 100))  # fits
    t.send(m.ReadBlockRequest(0, 0, 8, 8, 100))  # would pass the clock's range
    t.send(m.AdvanceClockRequest(50))
    t.send(m.AdvanceClockRequest(1))
    t.state_equal()


def test_watchdog_expiry_stops_a_stream_and_the_heartbeat_tells_it() -> None:
    t = Twin()
    t.poll()
    t.send(m.HelloRequest(2, 0, 0, 1))
    t.response(endurance(10_000, 1))
    t.poll()
    t.clock.t += 1.999
    t.poll()
    t.clock.t += 0.002  # past the 2 s timeout: stream ended (WATCHDOG), EV_WATCHDOG
    t.poll()
    assert t.c.state.name == "SAFE_IDLE"
    t.send(m.HeartbeatRequest(500))  # reports SAFE_IDLE, sets a new timeout
    t.clock.t += 0.6
    t.poll()
    t.send(m.HelloRequest(2, 0, 0, 2))  # another host gets in after the expiry
    t.state_equal()


def test_random_corruptions_of_valid_requests_agree() -> None:
    """Seeded bit flips, truncations and splices of valid requests: the same NAKs and answers from both."""
    t = Twin()
    t.poll()
    t.send(m.HelloRequest(2, 0, 0, 3))
    t.send(m.FormRequest(1, 1, **FORM_KW))  # type: ignore[arg-type]
    rng = np.random.default_rng(11)
    msgs = [
        m.ReadRequest(1, 1, 100),
        m.SetRequest(1, 1, 1200, 100, 1000),
        m.ReadBlockRequest(0, 0, 2, 2, 100),
        m.HeartbeatRequest(0),
        wv([1], [1], [1e-5], 1e-6, 5),
    ]
    for i in range(300):
        wire = bytearray(msgs[i % len(msgs)].to_frame(100 + i).encode())
        kind = rng.integers(4)
        if kind == 0:
            wire[rng.integers(len(wire) - 1)] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            wire = wire[: rng.integers(1, len(wire))] + b"\x00"
        elif kind == 2:
            wire = wire[: rng.integers(1, len(wire))] + bytes(wire[rng.integers(1, len(wire)) :])
        t.feed(bytes(wire))
    t.state_equal()


def test_the_per_cell_hal_path_gives_the_same_records() -> None:
    """With the HAL's fast paths off the core runs its own per-cell loops (as on a real board): same bytes."""
    t = Twin(fast_paths=False)
    t.poll()
    t.send(m.HelloRequest(2, 0, 0, 1))
    for k in range(6):
        t.send(m.FormRequest(0, k, **FORM_KW))  # type: ignore[arg-type]
    t.send(m.ReadBlockRequest(0, 0, 2, 8, 100))
    rng = np.random.default_rng(3)
    t.send(wv([0, 0, 0, 0, 1], [0, 1, 2, 3, 7], list(rng.uniform(5e-6, 30e-6, 5)), 1e-6))
    t.state_equal()


def test_make_engine_names_the_firmware_and_refuses_unknown_ones() -> None:
    assert isinstance(make_engine("c", BoardConfig(rows=4, cols=4)), CFirmwareEngine)
    assert type(make_engine("python", BoardConfig(rows=4, cols=4))) is FirmwareEngine
    with pytest.raises(ValueError, match="unknown firmware 'rust'"):
        make_engine("rust")


def test_a_board_beyond_the_c_buffers_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="stream_window 40 is outside 1 .. 32.*firmware=python"):
        CFirmwareEngine(BoardConfig(rows=4, cols=4, stream_window=40))


def test_a_missing_compiler_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import sim_backend.c_firmware as cf

    monkeypatch.setenv("CC", "no-such-cc-xyz")
    with pytest.raises(CFirmwareUnavailable, match="no C compiler .*no-such-cc-xyz.*firmware=python"):
        cf.library_path()


def test_a_sim_url_names_its_firmware_or_is_refused_in_one_line() -> None:
    from sim_backend.sim_url import parse_sim_options

    assert parse_sim_options("sim://?seed=1&firmware=c").firmware == "c"
    assert parse_sim_options("sim://?seed=1").firmware == "python"
    with pytest.raises(
        ValueError, match=r"^sim:// option firmware='rust' is not one of python, c \(e\.g\. firmware=c\)$"
    ):
        parse_sim_options("sim://?seed=1&firmware=rust")
