"""Board client: handshake, typed operations, retries with the same sequence number, stream handling.

Robustness rules (PROTOCOL.md): a retried request re-sends the identical bytes with the same sequence
number, so the firmware answers it from its response cache and never pulses twice. A board reset
(EV_BOOT, HANDSHAKE_REQUIRED or a new session id) is never retried blindly: the client handshakes
again and raises `BoardResetError` so the caller can re-read the state it depends on.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from firmware_protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SEQ_MAX,
    BoardError,
    BoardLimits,
    Capability,
    DecodeError,
    Frame,
    FrameDecoder,
    FrameType,
    Opcode,
    Status,
    StreamEnd,
    VersionError,
    decode_payload,
    error_for_status,
    error_text,
)
from firmware_protocol import messages as m
from hil.hardware.transport import DEFAULT_PORT, BoardConnectionError, ByteLink, open_link

log = logging.getLogger(__name__)


NOISY_TRIES_FACTOR = 10  # a request answered only by NAKs/damaged frames is tried this many times `retries + 1`


class BoardTimeoutError(BoardConnectionError):
    """The board did not answer a request after every retry."""


class BoardResetError(RuntimeError):
    """The board rebooted (new session): the request in flight may or may not have been applied."""


def _mv(volts: float, what: str) -> int:
    if not np.isfinite(volts):
        raise ValueError(f"{what} must be a finite voltage, got {volts!r}")
    mv = int(round(volts * 1000))
    if not -32768 <= mv <= 32767:
        raise ValueError(f"{what} {volts} V is outside anything a board can apply")
    return mv


@dataclass(frozen=True)
class Measurement:
    """A read of one cell: raw code plus what it means."""

    timestamp_s: float
    code: int
    current_a: float
    conductance_s: float
    saturated: bool


@dataclass(frozen=True)
class BlockMeasurement:
    timestamp_s: float
    codes: np.ndarray  # (nrows, ncols) uint16
    current_a: np.ndarray
    conductance_s: np.ndarray
    saturated: np.ndarray


@dataclass(frozen=True)
class PulseMeasurement:
    timestamp_s: float
    code: int
    current_a: float


@dataclass(frozen=True)
class FormOutcome:
    timestamp_s: float
    formed: bool
    pulses: int
    v_final: float
    conductance_s: float


@dataclass(frozen=True)
class SweepMeasurement:
    timestamp_s: float
    voltage_v: np.ndarray
    current_a: np.ndarray


@dataclass(frozen=True)
class WriteVerifyOutcome:
    timestamp_s: float
    final_s: np.ndarray
    pulses: np.ndarray
    status: np.ndarray  # CellResult codes


@dataclass(frozen=True)
class EnduranceChunk:
    """One read point of an endurance stream: LRS/HRS of every cell after `cycle` cycles."""

    cycle: int
    timestamp_s: float
    lrs_s: np.ndarray  # (n_cells,) conductance after SET
    hrs_s: np.ndarray  # (n_cells,) conductance after RESET
    lrs_codes: np.ndarray
    hrs_codes: np.ndarray


@dataclass(frozen=True)
class PulseRamp:
    """Write-verify pulse ramps (volts): SET voltage and gate grow per SET pulse, RESET grows more negative."""

    set_v_start: float = 0.7
    set_v_stop: float = 1.6
    set_v_step: float = 0.02
    set_gate_start: float = 1.3
    set_gate_stop: float = 1.3
    set_gate_step: float = 0.0
    reset_v_start: float = -0.6
    reset_v_stop: float = -1.8
    reset_v_step: float = -0.02
    reset_gate: float = 3.0
    width_ns: int = 100


@dataclass
class LinkStats:
    """What the link has cost: useful to judge a cable or a baud rate."""

    requests: int = 0
    retries: int = 0
    naks: int = 0
    corrupt_frames: int = 0
    timeouts: int = 0
    resends: int = 0


@dataclass
class _Adaptive:
    """Chunk size that halves when a large transaction needed retries and slowly grows back."""

    limit: int
    size: int = 0
    floor: int = 1

    def __post_init__(self) -> None:
        self.size = self.size or self.limit

    def failed(self) -> None:
        self.size = max(self.floor, self.size // 2)

    def succeeded(self) -> None:
        self.size = min(self.limit, self.size + max(1, self.size // 8))


@dataclass
class _Pending:
    responses: dict[int, Frame] = field(default_factory=dict)
    events: deque = field(default_factory=deque)
    nak: bool = False
    corrupt: bool = False
    reset: bool = False


class Board:
    """A connected board (real or simulated), after a successful HELLO."""

    def __init__(self, link: ByteLink, *, port: str = "", timeout_s: float = 0.25, retries: int = 20,
                 on_event: Callable[[Frame], None] | None = None, calibration: object | None = None) -> None:  # fmt: skip
        self.link = link
        # Read-path correction from `rram board calibrate` (an object with apply(current_a) -> current_a).
        self.calibration = calibration
        self.port = port
        self.base_timeout_s = timeout_s
        self.retries = retries
        self.stats = LinkStats()
        self._decoder = FrameDecoder()
        self._pending = _Pending()
        self._seq = int.from_bytes(os.urandom(2), "little") % SEQ_MAX  # PROTOCOL.md 3.1: random start
        self._on_event = on_event
        self.info: m.HelloInfo
        self.limits: BoardLimits
        self.handshake()
        self._block = _Adaptive(m.max_block_cells(self.info.max_payload))
        self._wv = _Adaptive(self.limits.max_wv_batch)

    @classmethod
    def open(cls, url: str = DEFAULT_PORT, **kwargs: object) -> "Board":
        link = open_link(url)
        try:
            return cls(link, port=url, **kwargs)  # type: ignore[arg-type]
        except BaseException:
            link.close()
            raise

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ identity
    @property
    def session_id(self) -> int:
        return self.info.session_id

    @property
    def capabilities(self) -> Capability:
        return Capability(self.info.capabilities)

    @property
    def rows(self) -> int:
        return self.info.rows

    @property
    def cols(self) -> int:
        return self.info.cols

    def describe(self) -> dict:
        """Identity, capabilities and limits as plain data (for run files and `rram board info`)."""
        i = self.info
        return {
            "board_id": i.board_id,
            "port": self.port,
            "protocol": f"{i.proto_major}.{i.proto_minor}",
            "firmware": f"{i.fw_major}.{i.fw_minor}.{i.fw_patch}",
            "session_id": i.session_id,
            "capabilities": [c.name for c in Capability if c & self.capabilities],
            "rows": i.rows,
            "cols": i.cols,
            "dac_bits": i.dac_bits,
            "adc_bits": i.adc_bits,
            "set_v": [i.set_v_min_mv / 1000, i.set_v_max_mv / 1000],
            "reset_v": [i.reset_v_min_mv / 1000, i.reset_v_max_mv / 1000],
            "form_v": [i.form_v_min_mv / 1000, i.form_v_max_mv / 1000],
            "read_v": [i.read_v_min_mv / 1000, i.read_v_max_mv / 1000],
            "gate_v": [i.gate_v_min_mv / 1000, i.gate_v_max_mv / 1000],
            "pulse_width_ns": [i.width_min_ns, i.width_max_ns, i.width_step_ns],
            "max_compliance_a": i.max_compliance_na * 1e-9,
            "max_payload": i.max_payload,
            "watchdog_ms": i.watchdog_ms,
            "stream_window": i.stream_window,
            "max_wv_batch": i.max_wv_batch,
        }

    def handshake(self) -> m.HelloInfo:
        """HELLO; refuses a board with another protocol major version."""
        old = getattr(self, "info", None)
        frame = self._transact_raw(m.HelloRequest(PROTOCOL_MAJOR, PROTOCOL_MINOR), handshake=True)
        info = m.HelloInfo.decode(frame.payload)
        if info.proto_major != PROTOCOL_MAJOR:
            raise VersionError(
                f"board on {self.port or 'link'} speaks protocol {info.proto_major}.{info.proto_minor}; "
                f"this host speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} (major versions must match)"
            )
        self.info = info
        self.limits = BoardLimits.from_hello(info)
        self._pending.reset = False
        if old is not None and old.session_id != info.session_id:
            log.warning("board session changed %08x -> %08x: it was reset", old.session_id, info.session_id)
        return info

    # ------------------------------------------------------------------------------ transport core
    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < SEQ_MAX else 0
        return self._seq

    def _pump(self, deadline: float) -> bool:
        """Read and sort whatever arrives until `deadline`; True if anything was read."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.link.timeout = min(remaining, 0.05)
        waiting = self.link.in_waiting
        data = self.link.read(max(1, waiting))
        if not data:
            return False
        for item in self._decoder.iter_feed(data):
            if isinstance(item, DecodeError):
                self.stats.corrupt_frames += 1
                self._pending.corrupt = True
            elif item.type == FrameType.RESPONSE:
                self._pending.responses[item.seq] = item
            elif item.type == FrameType.NAK:
                self.stats.naks += 1
                self._pending.nak = True
            elif item.type == FrameType.EVENT:
                if item.opcode == Opcode.EV_BOOT:
                    self._pending.reset = True
                    self._pending.events.clear()
                elif item.opcode in (Opcode.EV_ENDURANCE_DATA, Opcode.EV_ENDURANCE_END):
                    self._pending.events.append(item)
                if self._on_event is not None:
                    self._on_event(item)
        return True

    def expected_duration_s(self, msg: m.Message) -> float:
        """Upper estimate of how long the board needs for `msg` (timeouts scale with it)."""
        pulse_s = 2e-6
        if isinstance(msg, m.PulseRequest):
            pulse_s += msg.width_ns * 1e-9
        if isinstance(msg, m.FormRequest):
            steps = max(1, (msg.v_stop_mv - msg.v_start_mv) // max(1, msg.v_step_mv) + 1)
            return steps * (msg.width_ns * 1e-9 + 50e-6)
        if isinstance(msg, m.ReadBlockRequest):
            return msg.nrows * msg.ncols * 20e-6
        if isinstance(msg, m.IvSweepRequest):
            return msg.n_points * (msg.width_ns * 1e-9 + 20e-6)
        if isinstance(msg, m.WriteVerifyRequest):
            return float(np.sum(msg.entries["max_pulses"])) * (msg.width_ns * 1e-9 + 30e-6)
        return pulse_s

    def _transact_raw(self, msg: m.Message, handshake: bool = False) -> Frame:
        """Send a request and return its response frame (any status), retrying with the same seq."""
        if not handshake:
            self.limits.check(msg)  # host-side safety: raises LimitError, nothing is sent
        seq = self._next_seq()
        wire = msg.to_frame(seq).encode()
        timeout = self.base_timeout_s + 2.0 * self.expected_duration_s(msg) + len(wire) * 10 / 921_600
        self.stats.requests += 1
        # `retries` bounds the tries that got no answer at all (a dead link); tries answered by a NAK or a
        # damaged frame prove the link alive, only noisy, and may go on up to NOISY_TRIES_FACTOR times longer.
        attempt = silent = 0
        while silent <= self.retries and attempt < NOISY_TRIES_FACTOR * (self.retries + 1):
            if attempt:
                self.stats.retries += 1
            attempt += 1
            self._pending.nak = self._pending.corrupt = False
            self.link.write(wire)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = self._pump(deadline)
                frame = self._pending.responses.pop(seq, None)
                if frame is not None:
                    self._pending.responses.clear()  # stale answers to earlier retries
                    if attempt >= 3 and not handshake:
                        self._link_trouble()
                    if frame.status == Status.HANDSHAKE_REQUIRED and not handshake:
                        self._recover_from_reset()
                    return frame
                if self._pending.reset and not handshake:
                    self._recover_from_reset()
                if self._pending.nak or (self._pending.corrupt and not got):
                    break  # resend at once: the cache answers a request that was already executed
                if self._pending.corrupt:
                    # a corrupted frame: possibly our answer; wait briefly for more, then resend
                    deadline = min(deadline, time.monotonic() + 0.02)
            else:
                self.stats.timeouts += 1
                silent += 1
        raise BoardTimeoutError(
            f"no valid answer from the board on {self.port or 'link'} to {type(msg).__name__} after {attempt} tries"
        )

    def _link_trouble(self) -> None:
        """Any request that needed several tries shows a lossy link: shrink every bulk transfer before it stalls."""
        self._block.failed()
        self._wv.failed()

    def _recover_from_reset(self) -> None:
        self._pending.reset = False
        self._pending.events.clear()
        self.handshake()
        raise BoardResetError(f"board on {self.port or 'link'} was reset (new session {self.info.session_id:08x})")

    def _call(self, msg: m.Message, allow: tuple[Status, ...] = ()) -> tuple[m.Message, Status]:
        frame = self._transact_raw(msg)
        status = Status(frame.status) if frame.status in Status._value2member_map_ else Status.INTERNAL
        if status != Status.OK and status not in allow:
            raise error_for_status(frame.status, error_text(frame))
        return decode_payload(frame), status

    # ------------------------------------------------------------------------------ operations
    def heartbeat(self, watchdog_ms: int = 0) -> m.HeartbeatReply:
        return self._call(m.HeartbeatRequest(watchdog_ms))[0]  # type: ignore[return-value]

    def counters(self) -> m.Counters:
        return self._call(m.CountersRequest())[0]  # type: ignore[return-value]

    def advance_clock(self, seconds: float) -> float:
        """Simulator only: let `seconds` of device time pass at once; returns the board time (s)."""
        if not self.capabilities & Capability.VIRTUAL_CLOCK:
            raise ValueError("this board has no virtual clock (ADVANCE_CLOCK is for simulated boards)")
        if not seconds >= 0:
            raise ValueError(f"cannot advance the clock by {seconds} s")
        reply = self._call(m.AdvanceClockRequest(int(round(seconds * 1e6))))[0]
        return reply.timestamp_us / 1e6  # type: ignore[attr-defined]

    def wait(self, seconds: float) -> None:
        """Let time pass on the board: ADVANCE_CLOCK on a simulator, a real wait (with heartbeats) otherwise."""
        if self.capabilities & Capability.VIRTUAL_CLOCK:
            self.advance_clock(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, self.info.watchdog_ms / 2000))
            self.heartbeat()

    def abort(self) -> int:
        return self._call(m.AbortRequest())[0].stream_id  # type: ignore[attr-defined]

    def _correct(self, current: np.ndarray) -> np.ndarray:
        return current if self.calibration is None else self.calibration.apply(current)  # type: ignore[attr-defined]

    def _g(self, code: np.ndarray | int, apc: float, off: float, v_read_mv: int) -> tuple[np.ndarray, np.ndarray]:
        """Current and conductance from raw read codes, with the host-side read-path correction."""
        current = self._correct((np.asarray(code, dtype=float) - off) * apc)
        return current, current / (v_read_mv / 1000)

    def read(self, row: int, col: int, v_read: float = 0.1) -> Measurement:
        mv = _mv(v_read, "read voltage")
        res, status = self._call(m.ReadRequest(row, col, mv), allow=(Status.ADC_SATURATED,))
        i, g = self._g(res.code, res.amps_per_code, res.offset_code, mv)  # type: ignore[attr-defined]
        return Measurement(res.timestamp_us / 1e6, res.code, float(i), float(g), status == Status.ADC_SATURATED)  # type: ignore[attr-defined]

    def read_block(self, row0: int, col0: int, nrows: int, ncols: int, v_read: float = 0.1) -> BlockMeasurement:
        """Read a rectangle, split into as many READ_BLOCK requests as the payload size and the link allow."""
        mv = _mv(v_read, "read voltage")
        self.limits.check_block(row0, col0, nrows, ncols)
        codes = np.zeros((nrows, ncols), dtype=np.uint16)
        apc = off = 0.0
        ts = 0.0
        r = 0
        while r < nrows:
            per_row_cells = max(1, min(ncols, self._block.size))
            band = max(1, min(nrows - r, self._block.size // ncols)) if self._block.size >= ncols else 1
            c = 0
            while c < ncols:
                w = ncols if band > 1 else min(per_row_cells, ncols - c)
                before = self.stats.retries
                res, _ = self._call(m.ReadBlockRequest(row0 + r, col0 + c, band, w, mv))
                if self.stats.retries - before <= 1:  # trouble already shrank it in _transact_raw
                    self._block.succeeded()
                codes[r : r + band, c : c + w] = res.codes.reshape(band, w)  # type: ignore[attr-defined]
                apc, off, ts = res.amps_per_code, res.offset_code, res.timestamp_us / 1e6  # type: ignore[attr-defined]
                c += w
            r += band
        i, g = self._g(codes, apc, off, mv)
        sat = (codes == 0) | (codes == (1 << self.info.adc_bits) - 1)
        return BlockMeasurement(ts, codes, i, g, sat)

    def _pulse(self, cls: type[m.PulseRequest], row: int, col: int, v: float, width_ns: int, v_gate: float) -> PulseMeasurement:
        res, _ = self._call(cls(row, col, _mv(v, "pulse voltage"), int(width_ns), _mv(v_gate, "gate voltage")))
        i = (res.i_code - res.offset_code) * res.amps_per_code  # type: ignore[attr-defined]
        return PulseMeasurement(res.timestamp_us / 1e6, res.i_code, float(i))  # type: ignore[attr-defined]

    def set_pulse(self, row: int, col: int, v: float, width_ns: int, v_gate: float) -> PulseMeasurement:
        return self._pulse(m.SetRequest, row, col, v, width_ns, v_gate)

    def reset_pulse(self, row: int, col: int, v: float, width_ns: int, v_gate: float = 3.0) -> PulseMeasurement:
        return self._pulse(m.ResetRequest, row, col, v, width_ns, v_gate)

    def form(self, row: int, col: int, v_start: float = 2.0, v_stop: float = 4.5, v_step: float = 0.1,
             width_ns: int = 1000, v_gate: float = 1.2, v_read: float = 0.1, g_formed: float = 5e-6) -> FormOutcome:  # fmt: skip
        mv = _mv(v_read, "read voltage")
        req = m.FormRequest(row, col, _mv(v_start, "FORM start voltage"), _mv(v_stop, "FORM stop voltage"),
                            _mv(v_step, "FORM step"), int(width_ns), _mv(v_gate, "gate voltage"), mv,
                            int(round(g_formed * 1e9)))  # fmt: skip
        res, _ = self._call(req)
        _, g = self._g(res.read_code, res.amps_per_code, res.offset_code, mv)  # type: ignore[attr-defined]
        return FormOutcome(res.timestamp_us / 1e6, bool(res.formed), res.pulses, res.v_final_mv / 1000, float(g))  # type: ignore[attr-defined]

    def iv_sweep(self, row: int, col: int, v_start: float, v_stop: float, n_points: int, width_ns: int = 1000,
                 v_gate: float = 1.2, dc: bool = False) -> SweepMeasurement:  # fmt: skip
        req = m.IvSweepRequest(row, col, _mv(v_start, "sweep start"), _mv(v_stop, "sweep stop"), int(n_points),
                               int(width_ns), _mv(v_gate, "gate voltage"), 1 if dc else 0)  # fmt: skip
        res, _ = self._call(req)
        i = (res.codes.astype(float) - res.offset_code) * res.amps_per_code  # type: ignore[attr-defined]
        return SweepMeasurement(res.timestamp_us / 1e6, res.v_mv / 1000, i)  # type: ignore[attr-defined]

    def write_verify(self, rows: np.ndarray, cols: np.ndarray, targets_s: np.ndarray, tol_s: float | np.ndarray,
                     max_pulses: int = 100, ramp: PulseRamp = PulseRamp(), v_read: float = 0.1) -> WriteVerifyOutcome:  # fmt: skip
        """On-board closed-loop programming of many cells, in batches the board and the link accept."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        n = rows.size
        targets = np.broadcast_to(np.asarray(targets_s, dtype=float), (n,))
        tols = np.broadcast_to(np.asarray(tol_s, dtype=float), (n,))
        final, pulses, status = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.uint8)
        ts = 0.0
        i = 0
        while i < n:
            k = min(self._wv.size, n - i)
            e = np.zeros(k, dtype=m.WV_ENTRY)
            e["row"], e["col"], e["target_s"], e["tol_s"], e["max_pulses"] = (
                rows[i : i + k], cols[i : i + k], targets[i : i + k], tols[i : i + k], max_pulses)  # fmt: skip
            req = m.WriteVerifyRequest(
                _mv(v_read, "read voltage"), int(ramp.width_ns),
                _mv(ramp.set_v_start, "SET ramp start"), _mv(ramp.set_v_stop, "SET ramp stop"), _mv(ramp.set_v_step, "SET ramp step"),
                _mv(ramp.set_gate_start, "gate ramp start"), _mv(ramp.set_gate_stop, "gate ramp stop"), _mv(ramp.set_gate_step, "gate ramp step"),
                _mv(ramp.reset_v_start, "RESET ramp start"), _mv(ramp.reset_v_stop, "RESET ramp stop"), _mv(ramp.reset_v_step, "RESET ramp step"),
                _mv(ramp.reset_gate, "RESET gate"), k, e,
            )  # fmt: skip
            before = self.stats.retries
            res, _ = self._call(req)
            if self.stats.retries - before <= 1:  # trouble already shrank it in _transact_raw
                self._wv.succeeded()
            r = res.results  # type: ignore[attr-defined]
            v = v_read
            final[i : i + k] = self._correct(r["final_s"].astype(float) * v) / v
            pulses[i : i + k], status[i : i + k] = r["pulses"], r["status"]
            ts = res.timestamp_us / 1e6  # type: ignore[attr-defined]
            i += k
        return WriteVerifyOutcome(ts, final, pulses, status)

    # ------------------------------------------------------------------------------ endurance stream
    def endurance(self, row0: int, col0: int, nrows: int, ncols: int, n_cycles: int, read_every: int,
                  set_v: float = 1.5, set_width_ns: int = 200, set_gate: float = 1.4,
                  reset_v: float = -1.6, reset_width_ns: int = 200, reset_gate: float = 3.0,
                  v_read: float = 0.1, cells_per_event: int = 0) -> Iterator[EnduranceChunk]:  # fmt: skip
        """Run an ENDURANCE stream and yield one chunk per read point, in order, with ack/resend."""
        mv_read = _mv(v_read, "read voltage")
        req = m.EnduranceRequest(row0, col0, nrows, ncols, int(n_cycles), int(read_every),
                                 _mv(set_v, "SET voltage"), int(set_width_ns), _mv(set_gate, "SET gate"),
                                 _mv(reset_v, "RESET voltage"), int(reset_width_ns), _mv(reset_gate, "RESET gate"),
                                 mv_read, int(cells_per_event))  # fmt: skip
        self._pending.events.clear()
        started = self._call(req)[0]
        sid, n_events, n_cells = started.stream_id, started.n_events, started.n_cells  # type: ignore[attr-defined]
        window = self.info.stream_window
        received: dict[int, Frame] = {}
        expected = 0  # next event number to deliver
        acked = 0
        point_parts: list[m.EnduranceData] = []
        finished = False
        idle_deadline = time.monotonic() + self.base_timeout_s * 4
        try:
            while not finished:
                while self._pending.events:
                    ev = self._pending.events.popleft()
                    msg = decode_payload(ev)
                    if msg.stream_id != sid:  # type: ignore[attr-defined]
                        continue
                    if isinstance(msg, m.EnduranceEnd) and msg.reason != StreamEnd.COMPLETE:
                        raise BoardError(f"endurance stream ended early: {StreamEnd(msg.reason).name.lower()}")
                    if msg.event_no >= expected:  # type: ignore[attr-defined]
                        received[msg.event_no] = msg  # type: ignore[attr-defined,assignment]
                    idle_deadline = time.monotonic() + self.base_timeout_s * 4
                progressed = False
                while expected in received:
                    msg = received.pop(expected)
                    expected += 1
                    progressed = True
                    if isinstance(msg, m.EnduranceEnd):
                        finished = True
                        break
                    point_parts.append(msg)  # type: ignore[arg-type]
                    if sum(p.n for p in point_parts) == n_cells:
                        yield self._assemble(point_parts, mv_read)
                        point_parts = []
                if finished or (expected - acked >= max(1, window // 2)) or (progressed and expected == n_events + 1):
                    self._call(m.StreamAck(sid, expected))
                    acked = expected
                    continue
                if not self._pump(time.monotonic() + 0.05) and time.monotonic() > idle_deadline:
                    self.stats.timeouts += 1
                    self._stream_recover(sid, expected, acked)
                    acked = expected
                    idle_deadline = time.monotonic() + self.base_timeout_s * 4
                elif (self._pending.corrupt or (received and min(received) > expected)) and not self._pending.events:
                    # a damaged frame, or a gap (the line never reorders, so a later event means this one was lost)
                    self._pending.corrupt = False
                    if received and min(received) > expected or not received:
                        self._stream_recover(sid, expected, acked)
                        acked = expected
        except BaseException:
            if not finished:
                try:
                    self.abort()
                except (BoardError, BoardConnectionError, BoardResetError):
                    pass
            raise

    def _stream_recover(self, sid: int, expected: int, acked: int) -> None:
        """Nothing (valid) arrived: re-acknowledge, then ask for the missing event again."""
        self.stats.resends += 1
        self._call(m.StreamAck(sid, expected))
        try:
            self._call(m.StreamResend(sid, expected))
        except BoardError:
            pass  # not sent yet: the window was simply closed by a lost ack, now reopened

    def _assemble(self, parts: list[m.EnduranceData], v_read_mv: int) -> EnduranceChunk:
        parts.sort(key=lambda p: p.cell_offset)
        lrs = np.concatenate([p.lrs_codes for p in parts])
        hrs = np.concatenate([p.hrs_codes for p in parts])
        p0 = parts[0]
        _, g_l = self._g(lrs, p0.amps_per_code, p0.offset_code, v_read_mv)
        _, g_h = self._g(hrs, p0.amps_per_code, p0.offset_code, v_read_mv)
        return EnduranceChunk(p0.cycle, p0.timestamp_us / 1e6, g_l, g_h, lrs, hrs)
