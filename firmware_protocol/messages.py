"""Typed message payloads: one dataclass per (frame type, opcode), each with encode()/decode().

All layouts are fixed little-endian `struct` formats, optionally followed by arrays whose length
is given by a field of the fixed part. Units on the wire: millivolts (signed 16-bit), nanoseconds,
siemens (float32), microseconds since boot (u64). Every request is a `Request[Answer]` naming the
message its response decodes to, so a client call is typed end to end; answers are defined above their requests.
"""

from __future__ import annotations

import struct
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

import numpy as np

from firmware_protocol.constants import FrameType, Opcode, Status
from firmware_protocol.errors import PayloadError
from firmware_protocol.frame import Frame

M = TypeVar("M", bound="Message")


class Message:
    """Base of all payloads. Subclasses are dataclasses whose fields follow `FORMAT` in order."""

    OPCODE: ClassVar[Opcode]
    KIND: ClassVar[FrameType]
    FORMAT: ClassVar[str] = "<"
    _STRUCT: ClassVar[struct.Struct]
    _TEXT_FIELDS: ClassVar[tuple[str, ...]] = ()
    _FIXED_NAMES: ClassVar[list[str]]
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass on every subclass

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._STRUCT = struct.Struct(cls.FORMAT)

    # --- fixed part -------------------------------------------------------------------------
    def _fixed_values(self) -> tuple:
        values = []
        for name in self._fixed_fields():
            value = getattr(self, name)
            values.append(str(value).encode("ascii") if name in self._TEXT_FIELDS else value)
        return tuple(values)

    @classmethod
    def _fixed_fields(cls) -> list[str]:
        cached = cls.__dict__.get("_FIXED_NAMES")
        if cached is None:
            cached = [f.name for f in fields(cls) if f.metadata.get("array") is None]
            cls._FIXED_NAMES = cached
        return cached

    def encode(self) -> bytes:
        try:
            return self._STRUCT.pack(*self._fixed_values()) + self._encode_arrays()
        except struct.error as exc:
            raise PayloadError(f"{type(self).__name__}: field out of its wire range ({exc})") from None

    @classmethod
    def _array_fields(cls) -> list[tuple[str, np.dtype]]:
        """(name, dtype) of the arrays that follow the fixed part, in wire order."""
        return [(f.name, np.dtype(f.metadata["array"])) for f in fields(cls) if f.metadata.get("array") is not None]

    @classmethod
    def _count(cls, fixed: dict) -> int:
        """Entries in each array, from the fixed part (the field `n` unless a subclass says otherwise)."""
        return int(fixed["n"])

    def _encode_arrays(self) -> bytes:
        fields_ = self._array_fields()
        if not fields_:
            return b""
        count = self._count({name: getattr(self, name) for name in self._fixed_fields()})
        out = b""
        for name, dtype in fields_:
            arr = np.asarray(getattr(self, name))
            if arr.dtype != dtype:
                arr = arr.astype(dtype)
            if arr.size != count:
                raise PayloadError(f"{type(self).__name__}: {name} has {arr.size} entries, the header says {count}")
            out += arr.tobytes()
        return out

    @classmethod
    def _decode_arrays(cls, fixed: dict, rest: bytes) -> dict:
        arrays, off = {}, 0
        fields_ = cls._array_fields()
        count = cls._count(fixed) if fields_ else 0
        for name, dtype in fields_:
            arrays[name], off = _take(rest, off, dtype, count, cls.__name__)
        if len(rest) != off:
            raise PayloadError(f"{cls.__name__} payload has {len(rest) - off} unexpected trailing bytes")
        return arrays

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        for f in fields(self):
            x, y = getattr(self, f.name), getattr(other, f.name)
            if isinstance(x, np.ndarray):  # byte equality: NaN payloads compare equal, as on the wire
                if not (isinstance(y, np.ndarray) and x.dtype == y.dtype and x.tobytes() == y.tobytes()):
                    return False
            elif x != y:
                return False
        return True

    @classmethod
    def decode(cls: type[M], payload: bytes) -> M:
        size = cls._STRUCT.size
        if len(payload) < size:
            raise PayloadError(f"{cls.__name__} payload is {len(payload)} bytes, expected at least {size}")
        values = list(cls._STRUCT.unpack_from(payload))
        names = cls._fixed_fields()
        for i, name in enumerate(names):
            if name in cls._TEXT_FIELDS:
                values[i] = values[i].rstrip(b"\x00").decode("ascii", errors="replace")
        kwargs = dict(zip(names, values))
        kwargs.update(cls._decode_arrays(kwargs, payload[size:]))
        return cls(**kwargs)

    def to_frame(self, seq: int, status: Status = Status.OK) -> Frame:
        return Frame(self.KIND, seq, self.OPCODE, status, self.encode())


R_co = TypeVar("R_co", bound=Message, covariant=True)


class Request(Message, Generic[R_co]):
    """A host-to-board message; `Request[X]` says its answer decodes to `X` (kept in RESPONSE at run time)."""

    KIND = FrameType.REQUEST
    RESPONSE: ClassVar[type[Message]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Request):
                (arg,) = get_args(base)
                response = arg.__bound__ if isinstance(arg, TypeVar) else arg
                if not (isinstance(response, type) and issubclass(response, Message)):
                    raise TypeError(f"{cls.__name__}: Request[...] takes a message class, got {response!r}")
                cls.RESPONSE = response

    def decode_response(self, frame: Frame) -> R_co:
        """The typed answer to this request; a frame that decodes to another message type is a PayloadError."""
        msg = decode_payload(frame)
        if not isinstance(msg, self.RESPONSE):
            raise PayloadError(
                f"{type(self).__name__} answered by {type(msg).__name__}, expected {self.RESPONSE.__name__}"
            )
        return cast(R_co, msg)  # RESPONSE is the class R_co stands for, checked just above


def _array(dtype: str | np.dtype) -> np.ndarray:
    """Dataclass field holding a numpy array that follows the fixed part."""
    return field(default_factory=lambda: np.zeros(0, dtype=dtype), metadata={"array": np.dtype(dtype)})


def _take(rest: bytes, offset: int, dtype: np.dtype, count: int, owner: str) -> tuple[np.ndarray, int]:
    nbytes = dtype.itemsize * count
    if len(rest) < offset + nbytes:
        raise PayloadError(f"{owner} payload truncated: needs {nbytes} bytes of array data at offset {offset}")
    return np.frombuffer(rest, dtype=dtype, count=count, offset=offset).copy(), offset + nbytes


U16 = np.dtype("<u2")
I16 = np.dtype("<i2")


# ------------------------------------------------------------------------------- handshake
@dataclass
class HelloInfo(Message):
    """Board identity, capabilities, geometry, converter widths and safety limits."""

    OPCODE = Opcode.HELLO
    KIND = FrameType.RESPONSE
    FORMAT = "<BBBBB16sIIHHBBhhhhhhhhHHIIIIHHBHIIIBH"
    _TEXT_FIELDS = ("board_id",)
    proto_major: int
    proto_minor: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    board_id: str
    session_id: int
    capabilities: int
    rows: int
    cols: int
    dac_bits: int
    adc_bits: int
    set_v_min_mv: int
    set_v_max_mv: int
    reset_v_min_mv: int
    reset_v_max_mv: int
    form_v_min_mv: int
    form_v_max_mv: int
    read_v_min_mv: int
    read_v_max_mv: int
    gate_v_min_mv: int
    gate_v_max_mv: int
    width_min_ns: int
    width_max_ns: int
    width_step_ns: int
    max_compliance_na: int
    max_payload: int
    watchdog_ms: int
    stream_window: int
    max_wv_batch: int
    # Duration limits (PROTOCOL.md 7.5): the per-operation cost of the duration rule, its bound, the DC hold bound.
    op_overhead_ns: int
    max_request_ms: int
    max_hold_ns: int
    # How the session before this one ended (SessionEnd) and the stream it stopped (0xFFFF: none), PROTOCOL.md 3.5.
    prev_session_end: int = 0
    prev_stream_id: int = 0xFFFF


@dataclass
class HelloRequest(Request[HelloInfo]):
    """Host's protocol version and session request; the board answers with HelloInfo (PROTOCOL.md 3.5, 6.1).

    `host_nonce` is random per host connection: it tells the session's owner from another host, and makes two
    hosts' HELLOs differ even at the same seq, so one is never answered from the cache with the other's.
    """

    OPCODE = Opcode.HELLO
    FORMAT = "<BBBI"
    host_major: int
    host_minor: int
    flags: int = 0  # HelloFlag
    host_nonce: int = 0


@dataclass
class HeartbeatReply(Message):
    OPCODE = Opcode.HEARTBEAT
    KIND = FrameType.RESPONSE
    FORMAT = "<IQBH"
    session_id: int
    timestamp_us: int
    state: int
    watchdog_ms: int


@dataclass
class HeartbeatRequest(Request[HeartbeatReply]):
    """Keeps the watchdog fed; a non-zero value also sets its timeout."""

    OPCODE = Opcode.HEARTBEAT
    FORMAT = "<H"
    watchdog_ms: int = 0


@dataclass
class Counters(Message):
    """Operations the board has applied since boot: the ground truth for duplicate-pulse checks."""

    OPCODE = Opcode.GET_COUNTERS
    KIND = FrameType.RESPONSE
    FORMAT = "<QQQQQ"
    timestamp_us: int
    form_pulses: int
    set_pulses: int
    reset_pulses: int
    reads: int


@dataclass
class CountersRequest(Request[Counters]):
    OPCODE = Opcode.GET_COUNTERS
    FORMAT = "<"


# ------------------------------------------------------------------------------- pulses
@dataclass
class FormResult(Message):
    OPCODE = Opcode.FORM
    KIND = FrameType.RESPONSE
    FORMAT = "<QBHhHhff"
    timestamp_us: int
    formed: int
    pulses: int
    v_final_mv: int
    read_code: int
    v_read_mv: int
    amps_per_code: float
    offset_code: float


@dataclass
class FormRequest(Request[FormResult]):
    """Ramped forming of one cell: pulses from v_start to v_stop until the read conductance exceeds g_formed."""

    OPCODE = Opcode.FORM
    FORMAT = "<HHhhhIHhI"
    row: int
    col: int
    v_start_mv: int
    v_stop_mv: int
    v_step_mv: int
    width_ns: int
    gate_mv: int
    v_read_mv: int
    g_formed_ns: int  # threshold conductance in nanosiemens


@dataclass
class PulseResult(Message):
    """Current sampled at the end of the pulse, as a code of the pulse-current range."""

    OPCODE = Opcode.SET
    KIND = FrameType.RESPONSE
    FORMAT = "<QHff"
    timestamp_us: int
    i_code: int
    amps_per_code: float
    offset_code: float


@dataclass
class SetResult(PulseResult):
    OPCODE = Opcode.SET


@dataclass
class ResetResult(PulseResult):
    OPCODE = Opcode.RESET


P_co = TypeVar("P_co", bound=PulseResult, covariant=True)


@dataclass
class PulseRequest(Request[P_co]):
    """One SET (positive) or RESET (negative) pulse of `width_ns` with the NMOS gate at `gate_mv`."""

    OPCODE = Opcode.SET
    FORMAT = "<HHhIH"
    row: int
    col: int
    v_mv: int
    width_ns: int
    gate_mv: int


@dataclass
class SetRequest(PulseRequest[SetResult]):
    OPCODE = Opcode.SET


@dataclass
class ResetRequest(PulseRequest[ResetResult]):
    OPCODE = Opcode.RESET


# ------------------------------------------------------------------------------- reads
@dataclass
class ReadResult(Message):
    """Raw ADC code; current = (code - offset_code) * amps_per_code, G = current / v_read."""

    OPCODE = Opcode.READ
    KIND = FrameType.RESPONSE
    FORMAT = "<QhHff"
    timestamp_us: int
    v_read_mv: int
    code: int
    amps_per_code: float
    offset_code: float


@dataclass
class ReadRequest(Request[ReadResult]):
    OPCODE = Opcode.READ
    FORMAT = "<HHh"
    row: int
    col: int
    v_read_mv: int


@dataclass(eq=False)
class ReadBlockResult(Message):
    """Codes of a rectangular block, row-major."""

    OPCODE = Opcode.READ_BLOCK
    KIND = FrameType.RESPONSE
    FORMAT = "<QhHHHHff"
    timestamp_us: int
    v_read_mv: int
    row0: int
    col0: int
    nrows: int
    ncols: int
    amps_per_code: float
    offset_code: float
    codes: np.ndarray = _array("<u2")

    @classmethod
    def _count(cls, fixed: dict) -> int:
        return int(fixed["nrows"]) * int(fixed["ncols"])


@dataclass
class ReadBlockRequest(Request[ReadBlockResult]):
    OPCODE = Opcode.READ_BLOCK
    FORMAT = "<HHHHh"
    row0: int
    col0: int
    nrows: int
    ncols: int
    v_read_mv: int


@dataclass(eq=False)
class IvSweepResult(Message):
    OPCODE = Opcode.IV_SWEEP
    KIND = FrameType.RESPONSE
    FORMAT = "<QHff"
    timestamp_us: int
    n: int
    amps_per_code: float
    offset_code: float
    v_mv: np.ndarray = _array("<i2")
    codes: np.ndarray = _array("<u2")


@dataclass
class IvSweepRequest(Request[IvSweepResult]):
    """I-V sweep of one cell: n_points voltages from v_start to v_stop, pulsed (mode 0) or DC (mode 1)."""

    OPCODE = Opcode.IV_SWEEP
    FORMAT = "<HHhhHIHB"
    row: int
    col: int
    v_start_mv: int
    v_stop_mv: int
    n_points: int
    width_ns: int
    gate_mv: int
    mode: int


# ------------------------------------------------------------------------------- endurance stream
@dataclass
class EnduranceStarted(Message):
    OPCODE = Opcode.ENDURANCE
    KIND = FrameType.RESPONSE
    FORMAT = "<HIHQ"
    stream_id: int
    n_events: int  # data events to expect, the end event not counted
    n_cells: int
    timestamp_us: int


@dataclass
class EnduranceRequest(Request[EnduranceStarted]):
    """n_cycles SET/RESET cycles on a block, reading LRS (after SET) and HRS (after RESET) every read_every cycles."""

    OPCODE = Opcode.ENDURANCE
    FORMAT = "<HHHHIIhIHhIHhH"
    row0: int
    col0: int
    nrows: int
    ncols: int
    n_cycles: int
    read_every: int
    set_v_mv: int
    set_width_ns: int
    set_gate_mv: int
    reset_v_mv: int
    reset_width_ns: int
    reset_gate_mv: int
    v_read_mv: int
    cells_per_event: int = 0  # most cells per data event (0 = as many as fit); small on a noisy link


@dataclass(eq=False)
class EnduranceData(Message):
    """Reads of cells [cell_offset, cell_offset + n) (row-major in the block) after `cycle` cycles."""

    OPCODE = Opcode.EV_ENDURANCE_DATA
    KIND = FrameType.EVENT
    FORMAT = "<HIIQHHff"
    stream_id: int
    event_no: int
    cycle: int
    timestamp_us: int
    cell_offset: int
    n: int
    amps_per_code: float
    offset_code: float
    lrs_codes: np.ndarray = _array("<u2")
    hrs_codes: np.ndarray = _array("<u2")


@dataclass
class EnduranceEnd(Message):
    """Last numbered event of a stream; acknowledged like the data events."""

    OPCODE = Opcode.EV_ENDURANCE_END
    KIND = FrameType.EVENT
    FORMAT = "<HIIBQ"
    stream_id: int
    event_no: int
    cycles_done: int
    reason: int
    timestamp_us: int


@dataclass
class StreamAckReply(Message):
    OPCODE = Opcode.STREAM_ACK
    KIND = FrameType.RESPONSE
    FORMAT = "<HI"
    stream_id: int
    next_event: int


@dataclass
class StreamAck(Request[StreamAckReply]):
    """Cumulative acknowledgement: every event numbered below next_event has arrived."""

    OPCODE = Opcode.STREAM_ACK
    FORMAT = "<HI"
    stream_id: int
    next_event: int


@dataclass
class StreamResendReply(Message):
    OPCODE = Opcode.STREAM_RESEND
    KIND = FrameType.RESPONSE
    FORMAT = "<HI"
    stream_id: int
    event_no: int


@dataclass
class StreamResend(Request[StreamResendReply]):
    """Ask the board to send one event of its window again."""

    OPCODE = Opcode.STREAM_RESEND
    FORMAT = "<HI"
    stream_id: int
    event_no: int


# ------------------------------------------------------------------------------- write-verify
WV_ENTRY = np.dtype([("row", "<u2"), ("col", "<u2"), ("target_s", "<f4"), ("tol_s", "<f4"), ("max_pulses", "<u2")])
WV_RESULT = np.dtype([("final_s", "<f4"), ("final_code", "<u2"), ("pulses", "<u2"), ("status", "u1")])


@dataclass(eq=False)
class WriteVerifyResult(Message):
    OPCODE = Opcode.WRITE_VERIFY
    KIND = FrameType.RESPONSE
    FORMAT = "<QH"
    timestamp_us: int
    n: int
    results: np.ndarray = _array(WV_RESULT)


@dataclass(eq=False)
class WriteVerifyRequest(Request[WriteVerifyResult]):
    """Closed-loop programming of a batch of cells on the board (see PROTOCOL.md for the ramp rules)."""

    OPCODE = Opcode.WRITE_VERIFY
    FORMAT = "<hIhhhHHHhhhHH"
    v_read_mv: int
    width_ns: int
    set_v_start_mv: int
    set_v_stop_mv: int
    set_v_step_mv: int
    set_gate_start_mv: int
    set_gate_stop_mv: int
    set_gate_step_mv: int
    reset_v_start_mv: int
    reset_v_stop_mv: int
    reset_v_step_mv: int
    reset_gate_mv: int
    n: int
    entries: np.ndarray = _array(WV_ENTRY)


# ------------------------------------------------------------------------------- control
@dataclass
class AbortReply(Message):
    """stream_id of the stream that was stopped, 0xFFFF if none was running."""

    OPCODE = Opcode.ABORT
    KIND = FrameType.RESPONSE
    FORMAT = "<HQ"
    stream_id: int
    timestamp_us: int


@dataclass
class AbortRequest(Request[AbortReply]):
    OPCODE = Opcode.ABORT
    FORMAT = "<"


@dataclass
class ReleaseReply(Message):
    """The session is over; stream_id of the stream RELEASE stopped, 0xFFFF if none was running."""

    OPCODE = Opcode.RELEASE
    KIND = FrameType.RESPONSE
    FORMAT = "<HQ"
    stream_id: int
    timestamp_us: int


@dataclass
class ReleaseRequest(Request[ReleaseReply]):
    """Ends the host's session (PROTOCOL.md 6.16): the next host's HELLO is accepted at once."""

    OPCODE = Opcode.RELEASE
    FORMAT = "<"


@dataclass
class AdvanceClockReply(Message):
    OPCODE = Opcode.ADVANCE_CLOCK
    KIND = FrameType.RESPONSE
    FORMAT = "<Q"
    timestamp_us: int


@dataclass
class AdvanceClockRequest(Request[AdvanceClockReply]):
    """Simulator only (capability VIRTUAL_CLOCK): let `microseconds` of device time pass at once."""

    OPCODE = Opcode.ADVANCE_CLOCK
    FORMAT = "<Q"
    microseconds: int


@dataclass
class BootEvent(Message):
    """Sent once after every power-up or reset, before anything else."""

    OPCODE = Opcode.EV_BOOT
    KIND = FrameType.EVENT
    FORMAT = "<IBBBQ"
    session_id: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    timestamp_us: int


@dataclass
class WatchdogEvent(Message):
    """The watchdog expired: the board is in safe idle (outputs grounded, any stream stopped)."""

    OPCODE = Opcode.EV_WATCHDOG
    KIND = FrameType.EVENT
    FORMAT = "<QH"
    timestamp_us: int
    stream_id: int


ALL_MESSAGES: tuple[type[Message], ...] = (
    HelloRequest,
    HelloInfo,
    HeartbeatRequest,
    HeartbeatReply,
    CountersRequest,
    Counters,
    FormRequest,
    FormResult,
    SetRequest,
    ResetRequest,
    SetResult,
    ResetResult,
    ReadRequest,
    ReadResult,
    ReadBlockRequest,
    ReadBlockResult,
    IvSweepRequest,
    IvSweepResult,
    EnduranceRequest,
    EnduranceStarted,
    EnduranceData,
    EnduranceEnd,
    StreamAck,
    StreamAckReply,
    StreamResend,
    StreamResendReply,
    WriteVerifyRequest,
    WriteVerifyResult,
    AbortRequest,
    AbortReply,
    ReleaseRequest,
    ReleaseReply,
    AdvanceClockRequest,
    AdvanceClockReply,
    BootEvent,
    WatchdogEvent,
)

MESSAGE_TYPES: dict[tuple[FrameType, int], type[Message]] = {(m.KIND, int(m.OPCODE)): m for m in ALL_MESSAGES}


def decode_payload(frame: Frame) -> Message:
    """Decode a frame's payload into its typed message (OK-status frames and ADC_SATURATED results)."""
    try:
        cls = MESSAGE_TYPES[(frame.type, frame.opcode)]
    except KeyError:
        raise PayloadError(f"no message type for {frame.type.name} opcode 0x{frame.opcode:02x}") from None
    return cls.decode(frame.payload)


def error_text(frame: Frame) -> str:
    """The human-readable reason carried by a non-OK response or a NAK."""
    return frame.payload.decode("utf-8", errors="replace")


def max_block_cells(max_payload: int) -> int:
    """How many cells one READ_BLOCK response can carry."""
    return (max_payload - ReadBlockResult._STRUCT.size) // U16.itemsize


def max_event_cells(max_payload: int) -> int:
    """How many cells one ENDURANCE data event can carry."""
    return (max_payload - EnduranceData._STRUCT.size) // (2 * U16.itemsize)


def max_wv_entries(max_payload: int) -> int:
    """How many cells one WRITE_VERIFY request/response pair can carry."""
    by_req = (max_payload - WriteVerifyRequest._STRUCT.size) // WV_ENTRY.itemsize
    by_rsp = (max_payload - WriteVerifyResult._STRUCT.size) // WV_RESULT.itemsize
    return min(by_req, by_rsp)
