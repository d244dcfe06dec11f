"""Sans-IO firmware of the simulated board: bytes in, bytes out, exactly as PROTOCOL.md specifies.

`FirmwareEngine.feed(data)` consumes whatever arrived on the link and returns everything the board
sends back (responses, NAKs, events). `poll()` lets time pass on the link side (watchdog, queued
stream events) without new input. Behind the protocol sits the device physics of `RRAMArray` and
the read chain that turns currents into raw ADC codes.

Determinism: a request's numbers depend only on the chip's state and the request, never on link
timing, retries (answered from the response cache, never executed twice) or how the host split a
batch. Requests add no time of their own: the virtual clock moves only by the array's pulses and
reads (served one after the other, so a row-major block read in several READ_BLOCKs gets the same
time stamps), ADVANCE_CLOCK, and WRITE_VERIFY's fixed time slots (see `_write_verify`). An
ENDURANCE stream generates its read points in groups fixed by the request and the stream window,
not by when the host acknowledges.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from firmware_protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SEQ_UNKNOWN,
    BoardError,
    BoardLimits,
    BoardState,
    Capability,
    CellResult,
    DecodeError,
    Frame,
    FrameDecoder,
    FrameType,
    LimitError,
    Opcode,
    PayloadError,
    Status,
    StreamEnd,
)
from firmware_protocol import messages as m
from firmware_protocol.constants import HelloFlag, SessionEnd
from firmware_protocol.errors import (
    AbortedError,
    BadArgumentError,
    BadLengthError,
    BusyError,
    ComplianceHitError,
    HandshakeRequiredError,
    OutOfRangeError,
    UnknownOpcodeError,
    VersionMismatchError,
)
from firmware_protocol.frame import VERSION_BYTE
from firmware_protocol.limits import SemanticLimitError
from sim_backend.board_config import DEFAULT_BOARD, FIRMWARE_VERSION, BoardConfig
from sim_backend.device_model import RRAMArray, VerifyRamps
from sim_backend.read_chain import Conversion, ReadChain

log = logging.getLogger(__name__)

# Requests that a running ENDURANCE stream does not block.
_ALLOWED_WHILE_STREAMING = {
    Opcode.HELLO,
    Opcode.HEARTBEAT,
    Opcode.GET_COUNTERS,
    Opcode.STREAM_ACK,
    Opcode.STREAM_RESEND,
    Opcode.ABORT,
    Opcode.RELEASE,
}
# WRITE_VERIFY looks for a queued ABORT after every this many pulses per cell (an MCU polls its UART).
_WV_ABORT_POLL = 1
_STUCK_MIN_PULSES = 4
_CONVERGED, _MAX_PULSES, _ABORTED = int(CellResult.CONVERGED), int(CellResult.MAX_PULSES), int(CellResult.ABORTED)
_U64_MAX = 2**64 - 1
_I64_MAX = 2**63 - 1


@dataclass
class PulseCounters:
    """Every operation the board applied since power-up (survives firmware reboots: it is the chip's truth)."""

    form: int = 0
    set: int = 0
    reset: int = 0
    reads: int = 0


@dataclass
class _Stream:
    """State of a running ENDURANCE stream."""

    stream_id: int
    req: m.EnduranceRequest
    rows: np.ndarray
    cols: np.ndarray
    n_points: int
    cells_per_event: int
    events_per_point: int
    next_point: int = 0  # next read point to generate
    next_event: int = 0  # next event number to send for the first time
    acked: int = 0  # every event below this is acknowledged
    cycles_done: int = 0
    ended: bool = False
    sent: dict[int, bytes] = field(default_factory=dict)  # unacknowledged events, for STREAM_RESEND
    ready: deque = field(default_factory=deque)  # generated event frames not yet sent

    @property
    def n_events(self) -> int:
        return self.n_points * self.events_per_point


@dataclass(frozen=True)
class _HeardEarly:
    """A request that arrived while another request ran (3.7): it fed the watchdog then and is answered after it."""

    frame: Frame


class _ReadAdc:
    """The read chain of `FirmwareEngine._read_g` for the verify reads of one write-verify batch, its constants
    taken once: reference resistors in place of their cells, the read range's ADC, the nominal conductance."""

    def __init__(self, engine: FirmwareEngine, rows: np.ndarray, cols: np.ndarray, v_read: float) -> None:
        self.engine = engine
        self.v_read = v_read
        rd = engine.chain.read
        self._range = rd
        self._true_offset, self._true_apc = rd.true_offset_code, rd.true_amps_per_code
        self._offset, self._apc, self._max = rd.offset_code, rd.amps_per_code, rd.max_code
        wired = engine._reference_override(rows, cols, v_read, np.full(rows.size, np.nan))  # NaN: not a reference
        self._ref = ~np.isnan(wired)
        self._any_ref = bool(self._ref.any())
        self._ref_current = wired  # V/R where a reference resistor is wired

    def __call__(self, pos: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, conductance) of batch positions pos read as `current` (A); counts the reads."""
        if self._any_ref:
            ref = self._ref[pos]
            if np.count_nonzero(ref):
                current = current.copy()
                current[ref] = self._ref_current[pos[ref]]
        self.engine.counters.reads += pos.size
        if np.count_nonzero(np.isfinite(current)) != current.size:
            raise ValueError(f"{self._range.config.name} range: currents must be finite")
        raw = np.rint(self._true_offset + current / self._true_apc)
        codes = np.minimum(np.maximum(raw, 0), self._max).astype(np.uint16)  # `clip`, for finite raw
        return codes, (codes.astype(float) - self._offset) * self._apc / self.v_read


def no_pristine_steps() -> tuple[int, bool, tuple[np.ndarray, np.ndarray]]:
    """What `FirmwareEngine._pristine_form_steps` gives when it takes no step (the FORM loop makes them all)."""
    return 0, False, (np.zeros(1, dtype=np.uint16), np.zeros(1))


class FirmwareEngine:
    """The board's firmware: decodes frames, enforces limits, drives the array, answers."""

    _array_class: type[RRAMArray] = RRAMArray  # the physics (`reference_ops.ReferenceEngine` swaps in its own)

    def __init__(
        self,
        config: BoardConfig = DEFAULT_BOARD,
        wall_clock: Callable[[], float] = time.monotonic,
        poll_input: Callable[[], bytes] | None = None,
    ):
        self.config = config
        self._limits_cache: tuple[BoardConfig, BoardLimits] | None = None
        self._handler_cache: tuple[BoardConfig, dict[int, Callable]] | None = None
        # Bytes the host sent while a long request runs (PROTOCOL.md 3.7): the MCU polls its UART between pulses.
        # Without it the engine cannot hear keepalives mid-request, so it never stops one for silence.
        self.poll_input = poll_input
        self._op_expired = False  # the watchdog expired during the request being executed
        self.array = self._array_class(config.rows, config.cols, config.device, seed=config.seed)
        self.chain = ReadChain(config.read_chain, seed=config.seed)
        self.counters = PulseCounters()
        self._clock = wall_clock
        self._boots = 0
        self._out = bytearray()
        self._event_seq = 0
        self._stream_ids = 0
        self._resend_frame: bytes | None = None  # an event frame STREAM_RESEND asked for, sent after the reply
        self._pending_abort_end = False  # an aborted stream's end event is due after the reply
        self._answered_only = False  # the last frame was only answered (reserved seq, a HELLO opening no session)
        self.boot()

    # ------------------------------------------------------------------------- lifecycle
    def boot(self) -> None:
        """Power-up or reset: new session id, empty cache, no stream, handshake required, EV_BOOT sent."""
        self._boots += 1
        rng = np.random.default_rng([self.config.seed, self._boots, 0xB007])
        self.session_id = int(rng.integers(1, 2**32))
        self.decoder = FrameDecoder()
        self._cache: OrderedDict[int, tuple[int, bytes, bytes]] = OrderedDict()
        self._stream: _Stream | None = None
        self._handshaken = False
        # One host per board (PROTOCOL.md 3.5): the live session's owner, and how the session before it ended.
        self._session_alive = False
        self._owner_nonce = 0
        self._prev_end = SessionEnd.NONE
        self._prev_stream = 0xFFFF
        self.state = BoardState.IDLE
        self._state_on_arrival = BoardState.IDLE
        self.watchdog_ms = self.config.watchdog_ms
        self._deadline: float | None = None
        self._queue: deque[Frame | DecodeError | _HeardEarly] = deque()
        self._out.clear()
        self._event_seq = 0  # the event counter restarts at every boot: EV_BOOT is seq 0
        self._emit_event(m.BootEvent(self.session_id, *FIRMWARE_VERSION, self._now_us()))

    # ------------------------------------------------------------------------- persistent state
    def export_state(self) -> dict[str, np.ndarray]:
        """The chip (array state, clock) and the board's lifetime pulse counters and boot count, to persist."""
        state = {f"array/{k}": v for k, v in self.array.export_state().items()}
        c = self.counters
        state["counters"] = np.array([min(x, _I64_MAX) for x in (c.form, c.set, c.reset, c.reads)], dtype=np.int64)
        state["boots"] = np.array(self._boots, dtype=np.int64)
        return state

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a persisted chip, then boot as a board that was powered off in between (new session id)."""
        self.array.import_state({k[len("array/") :]: v for k, v in state.items() if k.startswith("array/")})
        form, set_, reset, reads = (int(x) for x in np.asarray(state["counters"]).ravel()[:4])
        self.counters.form, self.counters.set, self.counters.reset, self.counters.reads = form, set_, reset, reads
        self._boots = int(np.asarray(state["boots"]))
        self.boot()

    @property
    def hello_info(self) -> m.HelloInfo:
        c = self.config
        info = m.HelloInfo(
            PROTOCOL_MAJOR,
            PROTOCOL_MINOR,
            *FIRMWARE_VERSION,
            c.board_id,
            self.session_id,
            int(c.capabilities),
            c.rows,
            c.cols,
            c.dac_bits,
            c.adc_bits,
            *c.set_v_mv,
            *c.reset_v_mv,
            *c.form_v_mv,
            *c.read_v_mv,
            *c.gate_v_mv,
            c.width_min_ns,
            c.width_max_ns,
            c.width_step_ns,
            c.max_compliance_na,
            c.max_payload,
            self.watchdog_ms,
            c.stream_window,
            c.max_wv_batch,
            op_overhead_ns=self.array.op_overhead_ns,
            max_request_ms=c.max_request_ms,
            max_hold_ns=c.max_hold_ns,
        )
        return replace(info, prev_session_end=int(self._prev_end), prev_stream_id=self._prev_stream)

    @property
    def limits(self) -> BoardLimits:
        """The envelope HELLO declares; built once per configuration (it holds none of HELLO's session fields)."""
        cached = self._limits_cache
        if cached is None or cached[0] is not self.config:
            cached = self._limits_cache = (self.config, BoardLimits.from_hello(self.hello_info))
        return cached[1]

    # ------------------------------------------------------------------------- byte interface
    def feed(self, data: bytes) -> bytes:
        """Consume bytes from the host; return every byte the board sends in reaction."""
        self._check_watchdog()
        self._queue.extend(self.decoder.iter_feed(data))
        fed = False
        while self._queue:
            item = self._queue.popleft()
            self._answered_only = False  # set by _handle when it only answered (3.9 steps 1-2): no watchdog feed
            self._handle(item)
            fed |= isinstance(item, Frame) and item.type == FrameType.REQUEST and not self._answered_only
        self._pump_stream_safely()
        if fed and self.state != BoardState.SAFE_IDLE:  # (SAFE_IDLE: it expired during the last request)
            self._feed_watchdog()  # the stream events it released went out with the answer
        return self._take()

    def poll(self) -> bytes:
        """Let the link-side clock run: fire the watchdog if due, flush pending stream events."""
        self._check_watchdog()
        self._pump_stream_safely()
        return self._take()

    def _take(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _now_us(self) -> int:
        return (self.array.clock_ns + 500) // 1000

    def _emit_event(self, msg: m.Message) -> bytes:
        frame = msg.to_frame(self._event_seq).encode()
        self._event_seq = (self._event_seq + 1) & 0xFFFF
        self._out += frame
        return frame

    # ------------------------------------------------------------------------- watchdog
    def _feed_watchdog(self) -> None:
        """Restart the timer; armed only once HELLO has been received (PROTOCOL.md 3.7)."""
        self._deadline = self._clock() + self.watchdog_ms / 1000 if (self.watchdog_ms and self._handshaken) else None
        if self.state == BoardState.SAFE_IDLE:
            self.state = BoardState.IDLE

    def _keep_going(self) -> bool:
        """Between two pulses of a long request (3.7): hear the host, feed the watchdog from each request frame
        that arrived (keepalive HEARTBEATs, an ABORT), and say whether the host is still there.

        What arrives is queued and answered after the running request; nothing here moves the virtual clock.
        """
        if self.poll_input is None:
            return True
        data = self.poll_input()
        if data:
            for item in self.decoder.iter_feed(data):
                if isinstance(item, Frame) and item.type == FrameType.REQUEST and item.seq != SEQ_UNKNOWN:
                    if item.opcode != Opcode.HELLO:  # another host's HELLO never feeds the session's watchdog (3.5)
                        self._feed_watchdog()
                    self._queue.append(_HeardEarly(item))
                else:
                    self._queue.append(item)
        if self._deadline is not None and self._clock() >= self._deadline:
            self._op_expired = True
        return not self._op_expired

    def _check_watchdog(self) -> None:
        if self._deadline is None or self.state == BoardState.SAFE_IDLE or self._clock() < self._deadline:
            return
        self._end_session(SessionEnd.WATCHDOG)

    def _end_session(self, how: SessionEnd) -> None:
        """What the watchdog does (3.7), also for a take-over: ground the outputs, stop a stream, EV_WATCHDOG."""
        stream_id = 0xFFFF
        if self._stream is not None:
            stream_id = self._stream.stream_id
            self._end_stream(StreamEnd.WATCHDOG, numbered=False)
        self.state = BoardState.SAFE_IDLE  # outputs grounded: nothing is driven until the next request
        self._emit_event(m.WatchdogEvent(self._now_us(), stream_id))
        self._session_alive = False
        self._prev_end, self._prev_stream = how, stream_id

    # ------------------------------------------------------------------------- dispatch
    def _handle(self, item: Frame | DecodeError | _HeardEarly) -> None:
        early = isinstance(item, _HeardEarly)  # arrived during the last request: its arrival was handled then (3.7)
        if isinstance(item, _HeardEarly):
            item = item.frame
        if isinstance(item, DecodeError):
            self._out += Frame(FrameType.NAK, SEQ_UNKNOWN, 0, item.status, item.reason.encode()[:120]).encode()
            return
        frame = item
        if frame.type != FrameType.REQUEST:
            return  # the board ignores anything but requests
        if frame.seq == SEQ_UNKNOWN:  # PROTOCOL.md 3.1: reserved, never a request's; refused, never executed or cached
            reason = f"sequence number 0x{SEQ_UNKNOWN:04X} is reserved for NAKs: request not executed"
            self._out += Frame(
                FrameType.RESPONSE, SEQ_UNKNOWN, frame.opcode, Status.BAD_ARGUMENT, reason.encode()
            ).encode()
            self._answered_only = True  # not even the watchdog is fed (feed() reads this)
            return
        raw = frame.to_bytes()
        cached = self._cache.get(frame.seq)
        hit = cached is not None and cached[0] == frame.opcode and cached[1] == raw
        if not hit and frame.opcode == Opcode.HELLO:
            answer = self._hello_without_session(frame)
            if answer is not None:  # PROTOCOL.md 3.9 step 2: answered, and nothing else changes
                self._out += answer.encode()
                self._answered_only = True
                return
        if early:  # fed the watchdog when it arrived; an expiry since then must not be undone by it
            self._state_on_arrival = BoardState.IDLE
        else:
            # PROTOCOL.md 3.9 step 3: every other valid request feeds the watchdog (cache hits and refusals too).
            self._state_on_arrival = self.state  # HEARTBEAT reports SAFE_IDLE once, then the request re-arms
            self._feed_watchdog()
            if self._handshaken and not self._session_alive and frame.opcode != Opcode.HELLO:
                self._session_alive = True  # 3.7: the host whose watchdog expired is back, its session goes on
        if cached is not None and hit:
            self._out += cached[2]  # a retry: answer from the cache, never execute twice
        else:
            response = self._execute(frame).encode()
            self._cache[frame.seq] = (frame.opcode, raw, response)
            self._cache.move_to_end(frame.seq)
            while len(self._cache) > self.config.response_cache:
                self._cache.popitem(last=False)
            self._out += response
            self._flush_after_response()
        if self._op_expired:  # 3.7: the host fell silent during a long request: stopped, answered, now the watchdog
            self._op_expired = False
            self._check_watchdog()
        elif not early:
            self._feed_watchdog()  # the timer restarts once the answer is out

    def _execute(self, frame: Frame) -> Frame:
        try:
            if frame.major != PROTOCOL_MAJOR and frame.opcode != Opcode.HELLO:
                raise VersionMismatchError(f"request major {frame.major}, board speaks {PROTOCOL_MAJOR}")
            handler = self._handlers().get(frame.opcode)
            if handler is None:
                raise UnknownOpcodeError(f"unknown opcode 0x{frame.opcode:02x}")
            if not self._handshaken and frame.opcode != Opcode.HELLO:
                why = "the session was released" if self._prev_end == SessionEnd.RELEASED else "board was reset"
                raise HandshakeRequiredError(f"{why}: send HELLO first")
            if self._stream is not None and frame.opcode not in _ALLOWED_WHILE_STREAMING:
                raise BusyError(f"endurance stream {self._stream.stream_id} is running")
            cls = m.MESSAGE_TYPES[(FrameType.REQUEST, frame.opcode)]
            try:
                req = cls.decode(frame.payload)
            except PayloadError as exc:
                raise BadLengthError(str(exc)) from None
            try:  # PROTOCOL.md 3.9 steps 9-10: everything is validated before the first pulse
                self.limits.check(req, clock_ns=self.array.clock_ns)
            except SemanticLimitError as exc:
                raise BadArgumentError(str(exc)) from None
            except LimitError as exc:
                raise OutOfRangeError(str(exc)) from None
            result = handler(req)
            status = Status.OK
            if isinstance(result, tuple):  # (message, non-OK status that still carries the result)
                result, status = result
            return Frame(FrameType.RESPONSE, frame.seq, frame.opcode, status, result.encode(), VERSION_BYTE)
        except BoardError as exc:
            payload = exc.result.encode() if isinstance(exc.result, m.Message) else str(exc).encode()[:200]
            return Frame(FrameType.RESPONSE, frame.seq, frame.opcode, exc.status, payload)
        except Exception as exc:  # a firmware never crashes on input: report INTERNAL and stay up
            return Frame(
                FrameType.RESPONSE, frame.seq, frame.opcode, Status.INTERNAL, f"internal error: {exc}".encode()[:200]
            )

    def _handlers(self) -> dict[int, Callable]:
        """Handler of each opcode the board's capabilities offer (built once per configuration)."""
        cached = self._handler_cache
        if cached is None or cached[0] is not self.config:
            cached = self._handler_cache = (self.config, self._build_handlers())
        return cached[1]

    def _build_handlers(self) -> dict[int, Callable]:
        h: dict[int, Callable] = {
            Opcode.HELLO: self._hello,
            Opcode.HEARTBEAT: self._heartbeat,
            Opcode.GET_COUNTERS: self._get_counters,
            Opcode.FORM: self._form,
            Opcode.SET: self._set,
            Opcode.RESET: self._reset,
            Opcode.READ: self._read,
            Opcode.READ_BLOCK: self._read_block,
            Opcode.ABORT: self._abort,
            Opcode.RELEASE: self._release,
        }
        caps = self.config.capabilities
        if caps & Capability.IV_SWEEP:
            h[Opcode.IV_SWEEP] = self._iv_sweep
        if caps & Capability.STREAMING:
            h.update(
                {Opcode.ENDURANCE: self._endurance, Opcode.STREAM_ACK: self._ack, Opcode.STREAM_RESEND: self._resend}
            )
        if caps & Capability.WRITE_VERIFY:
            h[Opcode.WRITE_VERIFY] = self._write_verify
        if caps & Capability.VIRTUAL_CLOCK:
            h[Opcode.ADVANCE_CLOCK] = self._advance_clock
        return h

    # ------------------------------------------------------------------------- measurement helpers
    def _read_g(
        self, rows: np.ndarray, cols: np.ndarray, v_read: float, at_ns: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read cells (at explicit times at_ns, or one after the other now); return (codes, saturated mask,
        conductance from the board's nominal calibration)."""
        return self._digitize(rows, cols, v_read, self.array.read_current(rows, cols, v_read, at_ns))

    def _digitize(
        self, rows: np.ndarray, cols: np.ndarray, v_read: float, current: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The read chain on cell currents read at v_read: (codes, saturated mask, nominal conductance); counts the reads."""
        conv = self._convert_reads(rows, cols, v_read, current)
        g = self.chain.read.to_current(conv.codes) / v_read
        return conv.codes, conv.saturated, g

    def _convert_reads(self, rows: np.ndarray, cols: np.ndarray, v_read: float, current: np.ndarray) -> Conversion:
        """Reference resistors in place of their cells, then the read range's ADC; counts the reads."""
        current = self._reference_override(rows, cols, v_read, current)
        self.counters.reads += rows.size
        return self.chain.read.convert(current)

    def _reference_override(self, rows: np.ndarray, cols: np.ndarray, v_read: float, current: np.ndarray) -> np.ndarray:
        """Calibration fixture: cells wired to a precision resistor conduct exactly V/R (no RRAM physics)."""
        refs = self.config.reference_cells
        if not refs:
            return current
        keys = np.array([r * self.config.cols + c for r, c, _ in refs], dtype=np.int64)
        ohms = np.array([o for _, _, o in refs], dtype=float)
        idx = np.asarray(rows, dtype=np.int64) * self.config.cols + np.asarray(cols, dtype=np.int64)
        hit = np.isin(idx, keys)
        if not hit.any():
            return current
        out = np.array(current, dtype=float, copy=True)
        order = np.argsort(keys)
        out[hit] = v_read / ohms[order][np.searchsorted(keys[order], idx[hit])]
        return out

    def _pulse_codes(self, current: np.ndarray, what: str) -> np.ndarray:
        if (np.abs(current) > self.config.max_compliance_na * 1e-9).any():
            raise ComplianceHitError(f"{what} current {np.max(np.abs(current)) * 1e6:.1f} uA hit the board's limit")
        return self.chain.pulse.codes(current)

    # ------------------------------------------------------------------------- handlers
    def _hello_without_session(self, frame: Frame) -> Frame | None:
        """The answer to a HELLO that opens no session (PROTOCOL.md 3.9 step 2), or None if it does."""
        if frame.major != PROTOCOL_MAJOR:  # a version probe (3.6): the host learns the board's versions
            return self.hello_info.to_frame(frame.seq)
        try:
            req = m.HelloRequest.decode(frame.payload)
        except PayloadError as exc:
            return Frame(FrameType.RESPONSE, frame.seq, frame.opcode, Status.BAD_LENGTH, str(exc).encode()[:200])
        if not self._session_alive or req.host_nonce == self._owner_nonce or req.flags & HelloFlag.TAKE_OVER:
            return None
        return self.hello_info.to_frame(frame.seq, Status.SESSION_ACTIVE)  # another host's session is alive

    def _hello(self, req: m.HelloRequest) -> m.HelloInfo:
        if self._session_alive and req.host_nonce != self._owner_nonce:  # TAKE_OVER (refused in _handle otherwise)
            self._end_session(SessionEnd.TAKEN_OVER)
        self._cache.clear()  # a handshake starts a new conversation (PROTOCOL.md 3.3)
        self._handshaken = True
        self._session_alive, self._owner_nonce = True, req.host_nonce
        self._feed_watchdog()
        return self.hello_info

    def _release(self, req: m.ReleaseRequest) -> m.ReleaseReply:
        """End the session (PROTOCOL.md 6.16): a stream stops as with ABORT, the watchdog is disarmed."""
        stream_id = 0xFFFF
        if self._stream is not None:
            stream_id = self._stream.stream_id
            self._pending_abort_end = True  # its end event (reason ABORTED) follows the reply
        self._handshaken = self._session_alive = False
        self._prev_end, self._prev_stream = SessionEnd.RELEASED, stream_id
        return m.ReleaseReply(stream_id, self._now_us())

    def _heartbeat(self, req: m.HeartbeatRequest) -> m.HeartbeatReply:
        if req.watchdog_ms:
            self.watchdog_ms = req.watchdog_ms
            self._feed_watchdog()
        state = BoardState.STREAMING if self._stream is not None else self._state_on_arrival
        return m.HeartbeatReply(self.session_id, self._now_us(), int(state), self.watchdog_ms)

    def _get_counters(self, req: m.CountersRequest) -> m.Counters:
        c = self.counters
        sat = [min(x, _U64_MAX) for x in (c.form, c.set, c.reset, c.reads)]  # u64 fields saturate, never wrap
        return m.Counters(self._now_us(), *sat)

    def _form(self, req: m.FormRequest) -> m.FormResult | tuple[m.FormResult, Status]:
        """Ramped forming; stopped between two pulses (ABORTED, with what was done) if the host falls silent."""
        r, c = np.array([req.row]), np.array([req.col])
        v_read = req.v_read_mv / 1000
        if v_read <= 0:
            raise BadArgumentError("FORM needs a positive read voltage")
        threshold = req.g_formed_ns * 1e-9
        codes, _, g = self._read_g(r, c, v_read)
        pulses, v_mv, v_last = 0, req.v_start_mv, 0
        stopped = False
        if g[0] < threshold:  # the pulses below the cell's forming voltage at once, then the loop from there on
            pulses, stopped, read = self._pristine_form_steps(req, v_read, threshold)
            if pulses:
                codes, g = read
                v_last = req.v_start_mv + (pulses - 1) * req.v_step_mv
                v_mv = v_last + req.v_step_mv
        while not stopped and g[0] < threshold and v_mv <= req.v_stop_mv:
            if not self._keep_going():
                stopped = True
                break
            current = self.array.form(r, c, v_mv / 1000, req.width_ns, req.gate_mv / 1000)
            self.counters.form += 1
            pulses, v_last = pulses + 1, v_mv
            self._pulse_codes(current, "FORM")
            codes, _, g = self._read_g(r, c, v_read)
            if g[0] >= threshold:
                break
            v_mv += req.v_step_mv
        formed = int(g[0] >= threshold)
        rd = self.chain.read
        res = m.FormResult(
            self._now_us(), formed, pulses, v_last, int(codes[0]), req.v_read_mv, rd.amps_per_code, rd.offset_code
        )
        return (res, Status.ABORTED) if stopped else res

    def _pristine_form_steps(
        self, req: m.FormRequest, v_read: float, threshold: float
    ) -> tuple[int, bool, tuple[np.ndarray, np.ndarray]]:
        """The loop of `_form` over the leading pulses that leave a pristine cell pristine, in one pass
        (`RRAMArray.pristine_steps`): (pulses done, stopped by the host's silence, (codes, conductance) of the
        last read). The host is heard before every pulse, as in the loop; a pulse over the compliance limit, or
        a read at the threshold, ends the pass there, and the loop goes on as if it had made every step itself."""
        none = no_pristine_steps()
        refs = {(row, col) for row, col, _ in self.config.reference_cells}
        if req.v_step_mv <= 0 or (req.row, req.col) in refs:  # a fixture resistor is no RRAM cell
            return none
        volts = [mv / 1000 for mv in range(req.v_start_mv, req.v_stop_mv + 1, req.v_step_mv)]
        steps = self.array.pristine_steps(req.row, req.col, np.array(volts), req.width_ns, req.gate_mv / 1000, v_read)
        if steps is None:
            return none
        conv = self.chain.read.convert(steps.read_current)
        g = self.chain.read.to_current(conv.codes) / v_read
        over = np.abs(steps.pulse_current) > self.config.max_compliance_na * 1e-9
        n, stopped = 0, False
        for k in range(steps.read_current.size):
            if over[k]:  # the loop hears the host, then gives this pulse and its error
                break
            if not self._keep_going():
                stopped = True
                break
            n = k + 1
            if g[k] >= threshold:
                break
        self.array.apply_pristine_steps(steps, n)
        self.counters.form += n
        self.counters.reads += n
        return (n, stopped, (conv.codes[n - 1 : n], g[n - 1 : n])) if n else (0, stopped, none[2])

    def _pulse(self, req: m.PulseRequest, reset: bool) -> m.PulseResult:
        r, c = np.array([req.row]), np.array([req.col])
        fn = self.array.reset_pulse if reset else self.array.set_pulse
        current = fn(r, c, req.v_mv / 1000, req.width_ns, req.gate_mv / 1000)
        if reset:
            self.counters.reset += 1
        else:
            self.counters.set += 1
        codes = self._pulse_codes(current, "RESET" if reset else "SET")
        cls = m.ResetResult if reset else m.SetResult
        p = self.chain.pulse
        return cls(self._now_us(), int(codes[0]), p.amps_per_code, p.offset_code)

    def _set(self, req: m.SetRequest) -> m.PulseResult:
        return self._pulse(req, reset=False)

    def _reset(self, req: m.ResetRequest) -> m.PulseResult:
        return self._pulse(req, reset=True)

    def _check_read_v(self, mv: int) -> float:
        if mv <= 0:
            raise BadArgumentError("read voltage must be positive")
        return mv / 1000

    def _read(self, req: m.ReadRequest) -> m.ReadResult | tuple[m.ReadResult, Status]:
        v = self._check_read_v(req.v_read_mv)
        codes, sat, _ = self._read_g(np.array([req.row]), np.array([req.col]), v)
        rd = self.chain.read
        res = m.ReadResult(self._now_us(), req.v_read_mv, int(codes[0]), rd.amps_per_code, rd.offset_code)
        return (res, Status.ADC_SATURATED) if sat[0] else res

    def _read_block(self, req: m.ReadBlockRequest) -> m.ReadBlockResult:
        v = self._check_read_v(req.v_read_mv)
        rr = np.repeat(np.arange(req.row0, req.row0 + req.nrows), req.ncols)  # row-major, as the payload
        cc = np.tile(np.arange(req.col0, req.col0 + req.ncols), req.nrows)
        codes = self._convert_reads(rr, cc, v, self.array.read_current(rr, cc, v)).codes
        rd = self.chain.read
        return m.ReadBlockResult(
            self._now_us(),
            req.v_read_mv,
            req.row0,
            req.col0,
            req.nrows,
            req.ncols,
            rd.amps_per_code,
            rd.offset_code,
            codes,
        )

    def _iv_sweep(self, req: m.IvSweepRequest) -> m.IvSweepResult | tuple[m.IvSweepResult, Status]:
        """Point by point: stops at a compliance hit (COMPLIANCE_HIT), or between two points when the host falls
        silent (ABORTED, with the points done)."""
        volts_mv = np.rint(np.linspace(req.v_start_mv, req.v_stop_mv, req.n_points)).astype(np.int16)
        width = self.limits.iv_point_ns(req)
        row, col = np.array([req.row]), np.array([req.col])
        codes = np.zeros(req.n_points, dtype=np.uint16)
        done = 0
        while done < req.n_points and self._keep_going():
            v = volts_mv[done : done + 1]
            current = self.array.iv_sweep(row, col, v / 1000, width, req.gate_mv / 1000)[:, 0]
            self.counters.set += int(v[0] > 0)
            self.counters.reset += int(v[0] < 0)
            codes[done] = self._pulse_codes(current, "I-V sweep")[0]  # a compliance hit stops the sweep here
            done += 1
        p = self.chain.pulse
        res = m.IvSweepResult(self._now_us(), done, p.amps_per_code, p.offset_code, volts_mv[:done], codes[:done])
        return (res, Status.ABORTED) if done < req.n_points else res

    def _advance_clock(self, req: m.AdvanceClockRequest) -> m.AdvanceClockReply:
        self.array.advance_ns(1000 * int(req.microseconds))
        return m.AdvanceClockReply(self._now_us())

    def _abort(self, req: m.AbortRequest) -> m.AbortReply:
        stream_id = 0xFFFF
        if self._stream is not None:
            stream_id = self._stream.stream_id
            self._pending_abort_end = True
        return m.AbortReply(stream_id, self._now_us())

    # ------------------------------------------------------------------------- write-verify
    def _abort_queued(self) -> bool:
        """True if an ABORT request is waiting in the input (the MCU polls its UART between pulses)."""
        frames = (q.frame if isinstance(q, _HeardEarly) else q for q in self._queue)
        return any(isinstance(f, Frame) and f.type == FrameType.REQUEST and f.opcode == Opcode.ABORT for f in frames)

    def _write_verify(self, req: m.WriteVerifyRequest) -> m.WriteVerifyResult | tuple[m.WriteVerifyResult, Status]:
        """Closed-loop programming of a batch in lockstep: read, then pulse + verify read until in tolerance.

        Timing model (a modelling choice that makes the numbers independent of batch sizes): every
        formed cell owns a fixed time slot, in batch order, of one read plus max_pulses x (pulse +
        verify read); cells that are not formed get none. Slot starts are cumulative from the clock
        at arrival, so a batch split over two requests gives the same starts. Inside its slot a cell's
        first read completes at start + read, its k-th pulse (k = 0, 1, ...) at start + read +
        k x step + pulse and the verify read after it at start + read + (k + 1) x step, with step =
        pulse + read, however many cells are still converging. The clock then moves to the end of the
        last slot (also after an ABORT), so a batch costs its full pulse budget on the clock.

        The physics runs in `RRAMArray.verify_batch` rounds (one pass per round over every cell still
        converging); `reference_ops.write_verify_reference` is the same loop on the separate SET, RESET and
        read calls, and gives the same records bit for bit (tests/sim_backend/test_batch_speed_equivalence.py).
        """
        e = req.entries
        v_read = self._check_read_v(req.v_read_mv)
        rows, cols = e["row"].astype(np.int64), e["col"].astype(np.int64)
        if np.unique(rows * self.config.cols + cols).size != rows.size:
            raise BadArgumentError("write-verify batch lists a cell more than once")
        n = rows.size
        tol = e["tol_s"].astype(float)
        max_p = e["max_pulses"].astype(np.int64)
        status = np.full(n, CellResult.MAX_PULSES, dtype=np.uint8)
        pulses = np.zeros(n, dtype=np.int64)
        formed = self.array.formed[rows * self.config.cols + cols]
        status[~formed] = CellResult.NOT_FORMED
        codes = np.zeros(n, dtype=np.uint16)
        g = np.zeros(n)
        moved = np.zeros(n)
        read_ns = self.array.read_ns
        pulse_ns = int(self.array.pulse_ns(req.width_ns))
        step_ns = pulse_ns + read_ns
        slot_ns = np.where(formed, read_ns + max_p * step_ns, 0).astype(np.int64)
        t0 = self.array.clock_ns
        slot_end = t0 + np.cumsum(slot_ns)
        first_read = slot_end - slot_ns + read_ns  # completion of each cell's first read
        ent = formed.nonzero()[0]  # the entries programmed: batch position -> entry
        aborted = False
        if ent.size:
            out = self._write_verify_batch(req, v_read, rows[ent], cols[ent], first_read[ent], e[ent])
            aborted, (status[ent], codes[ent], g[ent], pulses[ent], moved[ent]) = out[0], out[1:]
        if n:
            self.array.advance_to_ns(int(slot_end[-1]))
        stuck = (status == CellResult.MAX_PULSES) & (pulses >= _STUCK_MIN_PULSES) & (moved <= tol)
        status[stuck] = CellResult.STUCK
        results = np.zeros(n, dtype=m.WV_RESULT)
        results["final_s"], results["final_code"], results["pulses"], results["status"] = g, codes, pulses, status
        res = m.WriteVerifyResult(self._now_us(), n, results)
        if aborted:
            raise AbortedError(result=res)
        return res

    def _write_verify_batch(
        self,
        req: m.WriteVerifyRequest,
        v_read: float,
        rows: np.ndarray,
        cols: np.ndarray,
        first_read: np.ndarray,
        entries: np.ndarray,
    ) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The rounds of section 10 for the formed cells of a batch: (aborted, then per cell status, final code,
        final conductance, pulses, largest move from the first read).

        Every cell still converging gets one pulse per round, so in round j every active cell has had j pulses.
        """
        n = rows.size
        target, tol = entries["target_s"].astype(float), entries["tol_s"].astype(float)
        max_p = entries["max_pulses"].astype(np.int64)
        k = np.arange(int(max_p.max()))  # the ramp steps a cell can reach: s, r < pulses < max_pulses
        ramps = VerifyRamps(
            width_ns=float(req.width_ns),
            set_v=np.minimum(req.set_v_start_mv + k * req.set_v_step_mv, req.set_v_stop_mv) / 1000,
            set_gate=np.minimum(req.set_gate_start_mv + k * req.set_gate_step_mv, req.set_gate_stop_mv) / 1000,
            reset_v=np.maximum(req.reset_v_start_mv + k * req.reset_v_step_mv, req.reset_v_stop_mv) / 1000,
        )
        status = np.full(n, CellResult.MAX_PULSES, dtype=np.uint8)
        codes_out = np.zeros(n, dtype=np.uint16)
        g_out = np.zeros(n)
        moved_out = np.zeros(n)
        adc = _ReadAdc(self, rows, cols, v_read)
        batch = self.array.verify_batch(rows, cols, first_read, ramps)
        aborted = False
        try:
            slot = np.arange(n)  # batch position of each cell still converging; the arrays below follow it
            codes, g = adc(slot, batch.begin(v_read))
            g_start, moved = g.copy(), np.zeros(n)
            run = np.zeros(n, dtype=np.int64)  # pulses in the current run of SETs or RESETs: the next one's ramp step
            last_up = np.zeros(n, dtype=bool)  # the direction of that run
            fewest = int(max_p.min())
            j = 0  # the round: every cell still converging has had j pulses
            while slot.size:
                done = np.abs(g - target) <= tol
                leave = done | (max_p <= j) if j >= fewest else done
                if np.count_nonzero(leave):
                    gone = leave.nonzero()[0]
                    out = slot[gone]
                    status[out] = np.where(done[gone], _CONVERGED, _MAX_PULSES)
                    codes_out[out], g_out[out], moved_out[out] = codes[gone], g[gone], moved[gone]
                    keep = ~leave
                    batch.retire(keep)
                    stay = keep.nonzero()[0]  # positions, not the mask: taking by index is the faster gather
                    slot, codes, g, g_start, moved, run, last_up = (
                        x[stay] for x in (slot, codes, g, g_start, moved, run, last_up)
                    )
                    target, tol, max_p = target[stay], tol[stay], max_p[stay]
                    if not slot.size:
                        break
                if not self._keep_going() or self._abort_queued():  # the host fell silent, or sent ABORT
                    status[slot] = _ABORTED
                    aborted = True
                    break
                up = g < target
                level = run * (up == last_up)  # a turn starts the other ramp again (s = 0 or r = 0)
                run, last_up = level + 1, up
                current = batch.pulse_and_read(up, level)
                n_up = int(np.count_nonzero(up))
                self.counters.set += n_up
                self.counters.reset += up.size - n_up
                j += 1
                codes, g = adc(slot, current)
                moved = np.maximum(moved, np.abs(g - g_start))
            codes_out[slot], g_out[slot], moved_out[slot] = codes, g, moved  # the cells an ABORT stopped
        finally:
            batch.close()
        return aborted, status, codes_out, g_out, batch.rounds, moved_out

    # ------------------------------------------------------------------------- endurance stream
    def _endurance(self, req: m.EnduranceRequest) -> m.EnduranceStarted:
        if req.read_every > req.n_cycles:
            raise BadArgumentError(f"read_every {req.read_every} exceeds n_cycles {req.n_cycles}")
        rr, cc = np.meshgrid(
            np.arange(req.row0, req.row0 + req.nrows), np.arange(req.col0, req.col0 + req.ncols), indexing="ij"
        )
        n_cells = rr.size
        per_event = min(n_cells, m.max_event_cells(self.config.max_payload))
        if req.cells_per_event:
            per_event = min(per_event, req.cells_per_event)
        self._stream_ids = self._stream_ids % 0xFFFE + 1  # 1 .. 0xFFFE: 0xFFFF means "no stream" (6.13)
        self._stream = _Stream(
            stream_id=self._stream_ids,
            req=req,
            rows=rr.ravel(),
            cols=cc.ravel(),
            n_points=req.n_cycles // req.read_every,
            cells_per_event=per_event,
            events_per_point=math.ceil(n_cells / per_event),
        )
        self._pending_abort_end = False
        self.state = BoardState.STREAMING
        return m.EnduranceStarted(self._stream.stream_id, self._stream.n_events, n_cells, self._now_us())

    def _stream_check(self, stream_id: int) -> _Stream:
        s = self._stream
        if s is None or s.stream_id != stream_id:
            raise BadArgumentError(f"no running stream {stream_id}")
        return s

    def _ack(self, req: m.StreamAck) -> m.StreamAckReply:
        s = self._stream_check(req.stream_id)
        if req.next_event > s.next_event:
            raise BadArgumentError(f"ack {req.next_event} is beyond the last event sent ({s.next_event - 1})")
        for k in range(s.acked, req.next_event):
            s.sent.pop(k, None)
        s.acked = max(s.acked, req.next_event)
        if s.ended and s.acked > s.n_events:
            self._stream = None
            self.state = BoardState.IDLE
        return m.StreamAckReply(req.stream_id, s.acked)

    def _resend(self, req: m.StreamResend) -> m.StreamResendReply:
        s = self._stream_check(req.stream_id)
        frame = s.sent.get(req.event_no)
        if frame is None:
            raise BadArgumentError(f"event {req.event_no} is not in the window [{s.acked}, {s.next_event})")
        self._resend_frame = frame
        return m.StreamResendReply(req.stream_id, req.event_no)

    def _flush_after_response(self) -> None:
        """Things a response must precede: a re-sent event, the end event of an aborted stream."""
        frame = self._resend_frame
        if frame is not None:
            self._out += frame
            self._resend_frame = None
        if self._pending_abort_end and self._stream is not None:
            self._pending_abort_end = False
            self._end_stream(StreamEnd.ABORTED, numbered=False)

    def _end_stream(self, reason: StreamEnd, numbered: bool) -> None:
        s = self._stream
        assert s is not None
        end = m.EnduranceEnd(
            s.stream_id, s.n_events if numbered else s.next_event, s.cycles_done, int(reason), self._now_us()
        )
        frame = self._emit_event(end)
        if numbered:
            s.sent[s.n_events] = frame
            s.next_event = s.n_events + 1
            s.ended = True
        else:
            self._stream = None
            self.state = BoardState.IDLE

    def _generate_points(self, s: _Stream, k: int) -> None:
        """Cycle the block through the next k read points (one vectorised call) and queue their events."""
        req = s.req
        res = self.array.cycle(
            s.rows,
            s.cols,
            k * req.read_every,
            req.read_every,
            req.set_v_mv / 1000,
            req.set_width_ns,
            req.set_gate_mv / 1000,
            req.reset_v_mv / 1000,
            req.reset_width_ns,
            req.reset_gate_mv / 1000,
            req.v_read_mv / 1000,
        )
        self.counters.set += res.set_pulses
        self.counters.reset += res.reset_pulses
        self.counters.reads += res.read_ops
        rd = self.chain.read
        lrs, hrs = rd.codes(res.lrs_current), rd.codes(res.hrs_current)
        base_cycle = s.cycles_done
        s.cycles_done += k * req.read_every
        n_cells = s.rows.size
        for p in range(k):
            for e in range(s.events_per_point):
                lo = e * s.cells_per_event
                hi = min(lo + s.cells_per_event, n_cells)
                event_no = (s.next_point + p) * s.events_per_point + e
                s.ready.append(
                    m.EnduranceData(
                        s.stream_id,
                        event_no,
                        base_cycle + int(res.cycles[p]),
                        self._now_us(),
                        lo,
                        hi - lo,
                        rd.amps_per_code,
                        rd.offset_code,
                        lrs[p, lo:hi],
                        hrs[p, lo:hi],
                    )
                )
        s.next_point += k

    def _pump_stream_safely(self) -> None:
        """A firmware never crashes: a fault while cycling ends the stream (reason ABORTED) and the board stays up."""
        try:
            self._pump_stream()
        except Exception:
            log.exception("endurance stream stopped by an internal fault")
            if self._stream is not None:
                self._end_stream(StreamEnd.ABORTED, numbered=False)

    def _pump_stream(self) -> None:
        """Send stream events while the window has room; finish the stream after its last read point."""
        s = self._stream
        if s is None or s.ended:
            return
        window = self.config.stream_window
        while s.next_event - s.acked < window:
            if not s.ready:
                if s.next_point < s.n_points:
                    # a fixed group size: when the host acknowledges never changes how the points are cycled
                    points_per_group = max(1, window // s.events_per_point)
                    self._generate_points(s, min(points_per_group, s.n_points - s.next_point))
                    continue
                rest = s.req.n_cycles - s.cycles_done  # cycles after the last read point
                if rest > 0:
                    r = s.req
                    res = self.array.cycle(
                        s.rows,
                        s.cols,
                        rest,
                        rest + 1,
                        r.set_v_mv / 1000,
                        r.set_width_ns,
                        r.set_gate_mv / 1000,
                        r.reset_v_mv / 1000,
                        r.reset_width_ns,
                        r.reset_gate_mv / 1000,
                        r.v_read_mv / 1000,
                    )
                    self.counters.set += res.set_pulses
                    self.counters.reset += res.reset_pulses
                    self.counters.reads += res.read_ops
                    s.cycles_done += rest
                self._end_stream(StreamEnd.COMPLETE, numbered=True)
                return
            frame = self._emit_event(s.ready.popleft())
            s.sent[s.next_event] = frame
            s.next_event += 1
