"""Board session: handshake, sequence numbers, retries with the same seq, NAK/corrupt handling, reset recovery.

Robustness rules (PROTOCOL.md): a retried request re-sends the identical bytes with the same sequence
number, so the firmware answers it from its response cache and never pulses twice. A board reset
(EV_BOOT, HANDSHAKE_REQUIRED or a new session id) is never retried blindly: the session handshakes
again and raises `BoardResetError` so the caller can re-read the state it depends on.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

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
    Status,
    VersionError,
    error_for_status,
    error_text,
)
from firmware_protocol import messages as m
from hil.hardware.transport import BoardConnectionError, ByteLink

log = logging.getLogger(__name__)

R = TypeVar("R", bound=m.Message)
_S = TypeVar("_S", bound="BoardSession")

NOISY_TRIES_FACTOR = 10  # a request answered only by NAKs/damaged frames is tried this many times `retries + 1`


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

    def __init__(
        self,
        link: ByteLink,
        *,
        port: str = "",
        timeout_s: float = 0.25,
        retries: int = 20,
        on_event: Callable[[Frame], None] | None = None,
    ) -> None:
        self.link = link
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

    def close(self) -> None:
        self.link.close()

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
        """A request needed several tries: the link is lossy. Subclasses shrink their bulk transfers here."""

    def _recover_from_reset(self) -> None:
        self._pending.reset = False
        self._pending.events.clear()
        self.handshake()
        raise BoardResetError(f"board on {self.port or 'link'} was reset (new session {self.info.session_id:08x})")
