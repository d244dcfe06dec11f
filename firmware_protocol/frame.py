"""Frames: the 8-byte header, payload and CRC-32, wrapped in COBS and terminated by 0x00."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from firmware_protocol.cobs import CobsError, cobs_decode, cobs_encode
from firmware_protocol.constants import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MIN_FRAME_SIZE,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    RESERVED_TYPE_BITS,
    TYPE_MASK,
    FrameType,
    Status,
)
from firmware_protocol.crc import crc32_ieee
from firmware_protocol.errors import FrameError

HEADER = struct.Struct("<BBHBBH")  # version, type|flags, seq, opcode, status, payload length
_CRC32 = struct.Struct("<I")
VERSION_BYTE = (PROTOCOL_MAJOR << 4) | PROTOCOL_MINOR
_V1_BULK_FLAG = 0x80  # protocol 1.x marked CRC-32 frames with this bit; reserved since 2.0


@dataclass(frozen=True)
class Frame:
    """One protocol frame; `payload` is the raw message body (see messages.py)."""

    type: FrameType
    seq: int
    opcode: int
    status: int = Status.OK
    payload: bytes = b""
    version: int = VERSION_BYTE

    @property
    def major(self) -> int:
        return self.version >> 4

    def to_bytes(self) -> bytes:
        """The un-stuffed frame: header, payload, CRC-32 of both."""
        n = len(self.payload)
        if n > MAX_PAYLOAD:
            raise FrameError(f"payload of {n} bytes exceeds the maximum of {MAX_PAYLOAD}")
        if not 0 <= self.seq <= 0xFFFF:
            raise FrameError(f"sequence number {self.seq} is not a 16-bit value")
        body = HEADER.pack(self.version, int(self.type), self.seq, self.opcode, self.status, n) + bytes(self.payload)
        return body + _CRC32.pack(crc32_ieee(body))

    def encode(self) -> bytes:
        """Wire bytes: COBS(frame) followed by the 0x00 delimiter."""
        return cobs_encode(self.to_bytes()) + b"\x00"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Frame:
        """Parse an un-stuffed frame, checking length, CRC and then the reserved type bits."""
        if len(raw) < MIN_FRAME_SIZE:
            raise FrameError(f"frame of {len(raw)} bytes is shorter than a header and CRC-32", Status.BAD_LENGTH)
        version, type_byte, seq, opcode, status, n = HEADER.unpack_from(raw)
        if n > MAX_PAYLOAD:
            raise FrameError(f"declared payload {n} exceeds the maximum of {MAX_PAYLOAD}", Status.BAD_LENGTH)
        if len(raw) != HEADER_SIZE + n + CRC_SIZE:
            hint = " (a protocol 1.x frame with a CRC-16?)" if len(raw) == HEADER_SIZE + n + 2 else ""
            raise FrameError(
                f"frame length {len(raw)} does not match declared payload {n} + header + CRC-32{hint}",
                Status.BAD_LENGTH,
            )
        end = HEADER_SIZE + n
        if _CRC32.unpack_from(raw, end)[0] != crc32_ieee(raw[:end]):
            raise FrameError("CRC mismatch", Status.BAD_CRC)
        # Checked after the CRC so that a corrupted frame is always reported as a CRC error.
        if type_byte & RESERVED_TYPE_BITS:
            hint = " (the protocol 1.x bulk flag)" if type_byte & RESERVED_TYPE_BITS == _V1_BULK_FLAG else ""
            raise FrameError(f"reserved type bits set (0x{type_byte:02x}){hint}", Status.BAD_LENGTH, seq)
        return cls(FrameType(type_byte & TYPE_MASK), seq, opcode, status, bytes(raw[HEADER_SIZE:end]), version)

    @classmethod
    def decode(cls, wire: bytes) -> Frame:
        """Parse one COBS-stuffed frame (with or without its trailing delimiter)."""
        if wire.endswith(b"\x00"):
            wire = wire[:-1]
        try:
            raw = cobs_decode(wire)
        except CobsError as exc:
            raise FrameError(str(exc), Status.BAD_LENGTH) from None
        return cls.from_bytes(raw)
