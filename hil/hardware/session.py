"""Board session: handshake, sequence numbers, retries with the same seq, NAK/corrupt handling, reset recovery.

Robustness rules (PROTOCOL.md): a retried request re-sends the identical bytes with the same sequence
number, so the firmware answers it from its response cache and never pulses twice. A board reset
(EV_BOOT, HANDSHAKE_REQUIRED or a new session id) is never retried blindly: the session handshakes
again and raises `BoardResetError` so the caller can re-read the state it depends on. One host per board
(PROTOCOL.md 3.5): HELLO waits out another host's live session until its watchdog ends it, `close()` releases
the session, and a link that breaks (port closed, cable pulled) is one `BoardConnectionError` line.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from firmware_protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SEQ_MAX,
    BoardLimits,
    Capability,
    DecodeError,
    Frame,
    FrameDecoder,
    FrameType,
    Opcode,
    ProtocolError,
    Status,
    VersionError,
    error_for_status,
    error_text,
)
from firmware_protocol import messages as m
from firmware_protocol.constants import HelloFlag, SessionEnd
from firmware_protocol.errors import SessionActiveError
from hil.hardware.transport import BoardConnectionError, ByteLink

log = logging.getLogger(__name__)

R = TypeVar("R", bound=m.Message)
_S = TypeVar("_S", bound="BoardSession")

NOISY_TRIES_FACTOR = 10  # a request answered only by NAKs/damaged frames is tried this many times `retries + 1`
# Another host's session is waited out for its watchdog timeout x 1.1 + 0.5 s (the two clocks may differ by
# 10 %, the board checks its watchdog between requests and the refusal takes a round trip); HELLO every 0.1 s.
SESSION_WAIT_FACTOR, SESSION_WAIT_MARGIN_S, SESSION_RETRY_S = 1.1, 0.5, 0.1
RELEASE_TIMEOUT_S, RELEASE_TRIES = 0.2, 2  # close() never waits longer than this for the board's RELEASE reply
LINK_LOST_S = 0.1  # reads that fail this long without a clean one: the port is gone (closed, unplugged)


class BoardTimeoutError(BoardConnectionError):
    """The board did not answer a request after every retry."""


class BoardResetError(RuntimeError):
    """The board rebooted (new session): the request in flight may or may not have been applied."""


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
    """What arrived and is not consumed yet: responses by seq, stream events, and what went wrong meanwhile."""

    responses: dict[int, Frame] = field(default_factory=dict)
    events: deque[Frame] = field(default_factory=deque)
    nak: bool = False
    corrupt: bool = False
    reset: bool = False


class BoardSession:
    """A link to a board (real or simulated) after a successful HELLO: typed request/response with retries."""

    # (session id, timeout) of the last HEARTBEAT that set the watchdog: it holds until the board's next reset.
    _watchdog_set: tuple[int, int] = (-1, 0)

    def __init__(
        self,
        link: ByteLink,
        *,
        port: str = "",
        timeout_s: float = 0.25,
        retries: int = 20,
        on_event: Callable[[Frame], None] | None = None,
        take_over: bool = False,
    ) -> None:
        self.link = link
        self.port = port
        self._nonce = int.from_bytes(os.urandom(4), "little")  # tells this host's HELLOs from another's (6.1)
        self._take_over = take_over  # end another host's live session (`rram board release`), PROTOCOL.md 3.5
        self._released = False
        self._link_error = ""  # set once the link broke: every later call fails with this line
        self._read_error_since: float | None = None  # first of a run of failed reads (_read_failed)
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

    def close(self) -> None:
        """Release the board's session (best effort: a short wait, errors swallowed), then close the link."""
        if getattr(self, "info", None) is not None and not (self._released or self._link_error):
            self._released = True
            try:
                self._release()
            except (ProtocolError, OSError):  # the board or link is gone: nothing to release
                pass
        try:
            self.link.close()
        except OSError:
            pass

    def _release(self) -> None:
        """RELEASE, tried RELEASE_TRIES times for RELEASE_TIMEOUT_S each; any answer (or a reboot) will do."""
        seq = self._next_seq()
        wire = m.ReleaseRequest().to_frame(seq).encode()
        for _ in range(RELEASE_TRIES):
            self._pending.nak = False
            self._write(wire)
            deadline = time.monotonic() + RELEASE_TIMEOUT_S
            while time.monotonic() < deadline and not self._pending.nak:
                self._pump(deadline)
                if self._pending.responses.pop(seq, None) is not None or self._pending.reset:
                    return

    def __enter__(self: _S) -> _S:
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
            "max_request_s": i.max_request_ms / 1000,
            "max_hold_ns": i.max_hold_ns,
        }

    def handshake(self) -> m.HelloInfo:
        """HELLO; refuses a board with another protocol major version, waits out another host's session (3.5)."""
        old = getattr(self, "info", None)
        flags = HelloFlag.TAKE_OVER if self._take_over else HelloFlag(0)
        refused_at: float | None = None  # when another host's session first refused us
        wait_s = 0.0
        while True:
            hello = m.HelloRequest(PROTOCOL_MAJOR, PROTOCOL_MINOR, int(flags), self._nonce)
            frame = self._transact_raw(hello, handshake=True)
            info = self._hello_info(frame)
            if frame.status != Status.SESSION_ACTIVE:
                break
            now = time.monotonic()
            if refused_at is None:
                refused_at = now
                wait_s = (
                    info.watchdog_ms / 1000 * SESSION_WAIT_FACTOR + SESSION_WAIT_MARGIN_S if info.watchdog_ms else 0.0
                )
                if wait_s:
                    log.warning(
                        "board %s on %s is in use by another host; waiting up to %.1f s for its watchdog",
                        info.board_id,
                        self.port or "link",
                        wait_s,
                    )
            if now - refused_at >= wait_s:
                raise SessionActiveError(self._session_active_text(info, wait_s))
            time.sleep(min(SESSION_RETRY_S, refused_at + wait_s - now))
        self.info = info
        self.limits = BoardLimits.from_hello(info)
        self._pending.reset = False
        self._released = False
        self._take_over = False  # once: a later re-handshake must never take the board from a newer host
        if old is not None and old.session_id != info.session_id:
            log.warning("board session changed %08x -> %08x: it was reset", old.session_id, info.session_id)
        self._report_previous_session(info)
        return info

    def _hello_info(self, frame: Frame) -> m.HelloInfo:
        """The HelloInfo of an OK or SESSION_ACTIVE answer; the protocol major is checked before the layout."""
        if frame.status not in (Status.OK, Status.SESSION_ACTIVE):
            raise error_for_status(frame.status, error_text(frame))
        major, minor = (frame.payload + bytes(2))[:2]
        if major != PROTOCOL_MAJOR:
            raise VersionError(
                f"board on {self.port or 'link'} speaks protocol {major}.{minor}; "
                f"this host speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} (major versions must match)"
            )
        return m.HelloInfo.decode(frame.payload)

    def _session_active_text(self, info: m.HelloInfo, wait_s: float) -> str:
        port = self.port or "link"
        why = f"its session did not end within {wait_s:.1f} s" if wait_s else "its watchdog is disabled"
        return (
            f"board {info.board_id} on {port} is in use by another host ({why}); close that program, "
            f"or if it is gone run `rram board release --port {port}`"
        )

    def _report_previous_session(self, info: m.HelloInfo) -> None:
        """Warn when the session before this one did not end cleanly (PROTOCOL.md 3.5)."""
        stream = f" (stream {info.prev_stream_id} stopped)" if info.prev_stream_id != 0xFFFF else ""
        if info.prev_session_end == SessionEnd.WATCHDOG:
            log.warning(
                "the previous host stopped without closing; the board's watchdog grounded its outputs%s", stream
            )
        elif info.prev_session_end == SessionEnd.TAKEN_OVER:
            log.warning("took the board over from another host's session; its outputs were grounded%s", stream)

    # ------------------------------------------------------------------------------ typed calls
    def call(self, req: m.Request[R], allow: tuple[Status, ...] = ()) -> R:
        """Send `req` and return its typed answer; a status other than OK and `allow` raises its BoardError."""
        return self.call_status(req, allow)[0]

    def call_status(self, req: m.Request[R], allow: tuple[Status, ...] = ()) -> tuple[R, Status]:
        """As `call`, also returning the status (OK or one of `allow`) the answer came with."""
        frame = self._transact_raw(req)
        status = Status(frame.status) if frame.status in Status._value2member_map_ else Status.INTERNAL
        if status != Status.OK and status not in allow:
            raise error_for_status(frame.status, error_text(frame))
        return req.decode_response(frame), status

    # ------------------------------------------------------------------------------ transport core
    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < SEQ_MAX else 0
        return self._seq

    def _pump(self, deadline: float) -> bool:
        """Read and sort whatever arrives until `deadline`; True if anything was read."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._check_link()
        try:
            self.link.timeout = min(remaining, 0.05)
            waiting = self.link.in_waiting
            data = self.link.read(max(1, waiting))
        except OSError as exc:  # serial.SerialException is an OSError
            self._read_failed(exc)
            return False
        self._read_error_since = None
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

    def _write(self, data: bytes) -> None:
        self._check_link()
        try:
            self.link.write(data)
        except OSError as exc:
            raise self._link_lost(exc) from None

    def _read_failed(self, exc: OSError) -> None:
        """A read failed: the link is lost once reads fail for LINK_LOST_S with no clean read in between.

        (pyserial also says "readiness to read but returned no data" when another program took the bytes.)
        """
        now = time.monotonic()
        if self._read_error_since is None:
            self._read_error_since = now
        elif now - self._read_error_since >= LINK_LOST_S:
            raise self._link_lost(exc) from None
        time.sleep(0.002)

    def _check_link(self) -> None:
        if self._link_error:
            raise BoardConnectionError(self._link_error)

    def _link_lost(self, exc: OSError) -> BoardConnectionError:
        """One line for a link that broke under us (port closed, USB unplugged); later calls repeat it."""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._link_error = f"board on {self.port or 'link'} stopped answering: the link was closed ({reason})"
        return BoardConnectionError(self._link_error)

    def expected_duration_s(self, msg: m.Message) -> float:
        """How long the board may need for `msg` (timeouts scale with it): the worst case of PROTOCOL.md 7.5.

        ENDURANCE is answered before its stream runs and ADVANCE_CLOCK moves a virtual clock: neither waits.
        """
        if isinstance(msg, (m.EnduranceRequest, m.AdvanceClockRequest)) or not hasattr(self, "limits"):
            return 0.0
        return self.limits.worst_case_ns(msg) * 1e-9

    def _keepalive_s(self) -> float | None:
        """How often HEARTBEAT(0) keeps the watchdog fed while a request is outstanding (3.7): a third of it."""
        info = getattr(self, "info", None)
        if info is None:
            return None
        session, ms = self._watchdog_set
        ms = ms if session == info.session_id else info.watchdog_ms
        return ms / 3000 if ms else None

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
        # While the request is outstanding, a keepalive HEARTBEAT(0) every third of the watchdog timeout tells the
        # board the host is still there (3.7): one seq per request, re-sent identically, so it costs one cache entry.
        keepalive_s = None if handshake else self._keepalive_s()
        keepalive: bytes | None = None
        while silent <= self.retries and attempt < NOISY_TRIES_FACTOR * (self.retries + 1):
            if attempt:
                self.stats.retries += 1
            attempt += 1
            self._pending.nak = self._pending.corrupt = False
            self._write(wire)
            sent = time.monotonic()
            deadline = sent + timeout
            while time.monotonic() < deadline:
                got = self._pump(deadline)
                if keepalive_s is not None and time.monotonic() - sent >= keepalive_s:
                    if keepalive is None:
                        keepalive = m.HeartbeatRequest(0).to_frame(self._next_seq()).encode()
                    self._write(keepalive)  # its answers come after the request's and are ignored (by seq)
                    sent = time.monotonic()
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
        """A request needed several tries: the link is lossy. Subclasses shrink their bulk transfers here."""

    def _recover_from_reset(self) -> None:
        old_id = self.info.session_id
        self._pending.reset = False
        self._pending.events.clear()
        self.handshake()
        if self.info.session_id == old_id:  # no reboot: HANDSHAKE_REQUIRED because our session was released
            raise BoardResetError(
                f"board on {self.port or 'link'}: another host ended this host's session (`rram board release`); "
                "reconnected"
            )
        raise BoardResetError(f"board on {self.port or 'link'} was reset (new session {self.info.session_id:08x})")
