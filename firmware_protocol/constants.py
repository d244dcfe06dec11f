"""Protocol constants: version, frame types, opcodes, status codes, capability flags and sizes."""

from __future__ import annotations

import enum

PROTOCOL_MAJOR = 2
PROTOCOL_MINOR = 0

HEADER_SIZE = 8
MAX_PAYLOAD = 8192
# Every frame ends with a CRC-32 (protocol 2.0; 1.x used a CRC-16 on payloads up to 256 bytes).
CRC_SIZE = 4
# Sequence number reserved for "unknown" (a NAK for a frame whose header could not be trusted).
SEQ_UNKNOWN = 0xFFFF
SEQ_MAX = 0xFFFE
DELIMITER = 0x00
# Smallest and largest un-encoded frame, and the largest COBS-encoded one (one byte per 254, plus one).
MIN_FRAME_SIZE = HEADER_SIZE + CRC_SIZE
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED_SIZE = MAX_FRAME_SIZE + MAX_FRAME_SIZE // 254 + 2


class FrameType(enum.IntEnum):
    """Bits 0-1 of the header's type byte."""

    REQUEST = 0
    RESPONSE = 1
    EVENT = 2
    NAK = 3


TYPE_MASK = 0x03
# Bits 2-7 of the type byte must be 0; bit 7 was the 1.x BULK flag (CRC-32 instead of CRC-16).
RESERVED_TYPE_BITS = 0xFC


class Opcode(enum.IntEnum):
    """Operation codes. Requests and their responses share an opcode; events have their own."""

    HELLO = 0x01
    HEARTBEAT = 0x02
    GET_COUNTERS = 0x03
    RELEASE = 0x04  # the host ends its session (PROTOCOL.md 3.5, 6.16)
    FORM = 0x10
    SET = 0x11
    RESET = 0x12
    READ = 0x20
    READ_BLOCK = 0x21
    IV_SWEEP = 0x22
    ENDURANCE = 0x30
    STREAM_ACK = 0x31
    STREAM_RESEND = 0x32
    WRITE_VERIFY = 0x40
    ABORT = 0x50
    ADVANCE_CLOCK = 0x60
    # Events (frame type EVENT), sent by the board without a request.
    EV_BOOT = 0x80
    EV_WATCHDOG = 0x81
    EV_ENDURANCE_DATA = 0x82
    EV_ENDURANCE_END = 0x83


class Status(enum.IntEnum):
    """Status byte of responses and NAKs (0 in requests and events)."""

    OK = 0
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_OPCODE = 3
    BAD_ARGUMENT = 4
    OUT_OF_RANGE = 5
    BUSY = 6
    COMPLIANCE_HIT = 7
    ADC_SATURATED = 8
    ABORTED = 9
    INTERNAL = 10
    HANDSHAKE_REQUIRED = 11
    VERSION_MISMATCH = 12
    SESSION_ACTIVE = 13  # HELLO refused: another host's session is alive (PROTOCOL.md 3.5)


class Capability(enum.IntFlag):
    """Capability flags announced in HELLO."""

    WRITE_VERIFY = 0x01
    STREAMING = 0x02
    VIRTUAL_CLOCK = 0x04
    IV_SWEEP = 0x08
    # GET_COUNTERS reports lifetime counts kept across resets (retained memory): after a reboot the host
    # learns from them what the request in flight applied (PROTOCOL.md 6.3).
    LIFETIME_COUNTERS = 0x10


class BoardState(enum.IntEnum):
    """Board state reported by HEARTBEAT and EV_WATCHDOG."""

    IDLE = 0
    STREAMING = 1
    SAFE_IDLE = 2  # the watchdog expired: outputs grounded, stream stopped


class CellResult(enum.IntEnum):
    """Per-cell outcome of WRITE_VERIFY."""

    CONVERGED = 0
    MAX_PULSES = 1
    NOT_FORMED = 2
    STUCK = 3
    ABORTED = 4


class StreamEnd(enum.IntEnum):
    """Why an ENDURANCE stream ended (payload of EV_ENDURANCE_END)."""

    COMPLETE = 0
    ABORTED = 1
    WATCHDOG = 2


class HelloFlag(enum.IntFlag):
    """HelloRequest `flags`: how the host asks for the board's session (PROTOCOL.md 3.5)."""

    TAKE_OVER = 0x01  # end a live session of another host as its watchdog would, then open this one


class SessionEnd(enum.IntEnum):
    """How the session before this one ended (HelloInfo `prev_session_end`), so a new host learns it."""

    NONE = 0  # no session since boot
    RELEASED = 1  # its host sent RELEASE
    WATCHDOG = 2  # its host went silent: the watchdog grounded the outputs
    TAKEN_OVER = 3  # a HELLO with TAKE_OVER ended it
