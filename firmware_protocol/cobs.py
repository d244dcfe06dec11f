"""Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00 can delimit frames."""

from __future__ import annotations


class CobsError(ValueError):
    """The bytes between two delimiters are not a valid COBS encoding."""


def cobs_encode(data: bytes) -> bytes:
    """Encode `data` so the result contains no 0x00 byte (the delimiter is not appended)."""
    out = bytearray()
    block_start = 0
    n = len(data)
    while True:
        zero = data.find(b"\x00", block_start, block_start + 254)
        if zero == -1:
            chunk_end = min(block_start + 254, n)
            out.append(chunk_end - block_start + 1)
            out += data[block_start:chunk_end]
            if chunk_end == n:
                if chunk_end - block_start == 254:
                    out.append(1)  # data ended exactly at a full block: a final empty block
                return bytes(out)
            block_start = chunk_end
            continue
        out.append(zero - block_start + 1)
        out += data[block_start:zero]
        block_start = zero + 1
        if block_start == n:
            out.append(1)
            return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (without its delimiter); raise CobsError if malformed."""
    out = bytearray()
    i = 0
    n = len(data)
    if n == 0:
        raise CobsError("empty COBS frame")
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte inside COBS frame at offset {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block at offset {i} runs past the end of the frame")
        block = data[i + 1 : end]
        if b"\x00" in block:
            raise CobsError("zero byte inside COBS frame")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
