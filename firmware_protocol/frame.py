"""Frames: the 8-byte header, payload and CRC, wrapped in COBS and terminated by 0x00."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from firmware_protocol.cobs import CobsError, cobs_decode, cobs_encode
from firmware_protocol.constants import (
    BULK_FLAG,
    BULK_THRESHOLD,
    HEADER_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    RESERVED_TYPE_BITS,
    TYPE_MASK,
    FrameType,
    Status,
)
from firmware_protocol.crc import crc16_ccitt, crc32_ieee
from firmware_protocol.errors import FrameError

HEADER = struct.Struct("<BBHBBH")  # version, type|flags, seq, opcode, status, payload length
_CRC16 = struct.Struct("<H")
_CRC32 = struct.Struct("<I")
VERSION_BYTE = (PROTOCOL_MAJOR << 4) | PROTOCOL_MINOR


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
    def bulk(self) -> bool:
        return len(self.payload) > BULK_THRESHOLD

    @property
    def major(self) -> int:
        return self.version >> 4

    def to_bytes(self) -> bytes:
        """The un-stuffed frame: header, payload, CRC."""
        n = len(self.payload)
        if n > MAX_PAYLOAD:
            raise FrameError(f"payload of {n} bytes exceeds the maximum of {MAX_PAYLOAD}")
        if not 0 <= self.seq <= 0xFFFF:
            raise FrameError(f"sequence number {self.seq} is not a 16-bit value")
        type_byte = int(self.type) | (BULK_FLAG if self.bulk else 0)
        body = HEADER.pack(self.version, type_byte, self.seq, self.opcode, self.status, n) + bytes(self.payload)
        if self.bulk:
            return body + _CRC32.pack(crc32_ieee(body))
        return body + _CRC16.pack(crc16_ccitt(body))

    def encode(self) -> bytes:
        """Wire bytes: COBS(frame) followed by the 0x00 delimiter."""
        return cobs_encode(self.to_bytes()) + b"\x00"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Frame:
        """Parse an un-stuffed frame, checking length, reserved bits, bulk rule and CRC."""
        if len(raw) < HEADER_SIZE + 2:
            raise FrameError(f"frame of {len(raw)} bytes is shorter than a header and CRC", Status.BAD_LENGTH)
        version, type_byte, seq, opcode, status, n = HEADER.unpack_from(raw)
        if n > MAX_PAYLOAD:
            raise FrameError(f"declared payload {n} exceeds the maximum of {MAX_PAYLOAD}", Status.BAD_LENGTH)
        bulk = bool(type_byte & BULK_FLAG)
        crc_size = 4 if bulk else 2
        if len(raw) != HEADER_SIZE + n + crc_size:
            raise FrameError(
                f"frame length {len(raw)} does not match declared payload {n} + header + CRC", Status.BAD_LENGTH
            )
        body = raw[: HEADER_SIZE + n]
        if bulk:
            ok = _CRC32.unpack_from(raw, HEADER_SIZE + n)[0] == crc32_ieee(body)
        else:
            ok = _CRC16.unpack_from(raw, HEADER_SIZE + n)[0] == crc16_ccitt(body)
        if not ok:
            raise FrameError("CRC mismatch", Status.BAD_CRC)
        # Checked after the CRC so that a corrupted frame is always reported as a CRC error.
        if bulk != (n > BULK_THRESHOLD):
            raise FrameError(f"bulk flag {bulk} inconsistent with payload length {n}", Status.BAD_LENGTH, seq)
        if type_byte & RESERVED_TYPE_BITS:
            raise FrameError(f"reserved type bits set (0x{type_byte:02x})", Status.BAD_LENGTH, seq)
        return cls(
            FrameType(type_byte & TYPE_MASK), seq, opcode, status, bytes(raw[HEADER_SIZE : HEADER_SIZE + n]), version
        )

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
