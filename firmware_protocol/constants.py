"""Protocol constants: version, frame types, opcodes, status codes, capability flags and sizes."""

from __future__ import annotations

import enum

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

HEADER_SIZE = 8
MAX_PAYLOAD = 8192
# Payloads longer than this are "bulk" frames: they carry a CRC-32 instead of a CRC-16.
BULK_THRESHOLD = 256
# Sequence number reserved for "unknown" (a NAK for a frame whose header could not be trusted).
SEQ_UNKNOWN = 0xFFFF
SEQ_MAX = 0xFFFE
DELIMITER = 0x00
# Largest un-encoded frame and its COBS-encoded size (one overhead byte per 254 bytes, plus one).
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD + 4
MAX_ENCODED_SIZE = MAX_FRAME_SIZE + MAX_FRAME_SIZE // 254 + 2


class FrameType(enum.IntEnum):
    """Bits 0-1 of the header's type byte."""

    REQUEST = 0
    RESPONSE = 1
    EVENT = 2
    NAK = 3


TYPE_MASK = 0x03
BULK_FLAG = 0x80
RESERVED_TYPE_BITS = 0x7C


class Opcode(enum.IntEnum):
    """Operation codes. Requests and their responses share an opcode; events have their own."""

    HELLO = 0x01
    HEARTBEAT = 0x02
    GET_COUNTERS = 0x03
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


class Capability(enum.IntFlag):
    """Capability flags announced in HELLO."""

    WRITE_VERIFY = 0x01
    STREAMING = 0x02
    VIRTUAL_CLOCK = 0x04
    IV_SWEEP = 0x08


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
