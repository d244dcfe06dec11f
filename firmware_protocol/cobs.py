"""Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00 can delimit frames.

A numeric payload (float32 values, small counts) can hold a zero every few bytes, so a frame of a few kilobytes
may be thousands of COBS blocks, and a loop over them costs milliseconds. Data with many zeros is therefore
encoded with whole-array numpy operations (data with few zeros, like ADC codes, keeps the block loop, cheaper
there); decoding walks the block codes alone, then builds the output block by block or, for many blocks, in one
array pass. tests/firmware_protocol/test_framing.py checks every path against byte-at-a-time reference code.
"""

from __future__ import annotations

import numpy as np

_MAX_RUN = 254  # data bytes in a full block (code 0xFF: no zero follows)
_ARRAY_BLOCKS = 128  # from this many blocks (zeros, when encoding) on, the array passes are the faster ones


class CobsError(ValueError):
    """The bytes between two delimiters are not a valid COBS encoding."""


def cobs_encode(data: bytes) -> bytes:
    """Encode `data` so the result contains no 0x00 byte (the delimiter is not appended)."""
    return _encode_array(data) if data.count(0) >= _ARRAY_BLOCKS else _encode_loop(data)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (without its delimiter); raise CobsError if malformed."""
    starts = _block_starts(data)
    return _array_blocks(data, starts) if len(starts) >= _ARRAY_BLOCKS else _join_blocks(data, starts)


def _encode_loop(data: bytes) -> bytes:
    """The encoder one block at a time."""
    out = bytearray()
    block_start = 0
    n = len(data)
    while True:
        zero = data.find(b"\x00", block_start, block_start + _MAX_RUN)
        if zero == -1:
            chunk_end = min(block_start + _MAX_RUN, n)
            out.append(chunk_end - block_start + 1)
            out += data[block_start:chunk_end]
            if chunk_end == n:
                if chunk_end - block_start == _MAX_RUN:
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


def _encode_array(data: bytes) -> bytes:
    """The encoder on whole arrays: the data between zeros (and after the last) is a run of L bytes, sent as
    L // 254 full blocks (code 0xFF) and a last block of L % 254 bytes (code L % 254 + 1, 1 for an empty one)."""
    a = np.frombuffer(data, dtype=np.uint8)
    bounds = np.concatenate(([-1], np.flatnonzero(a == 0), [a.size]))  # the zeros, and both ends
    run = bounds[1:] - bounds[:-1] - 1  # bytes of each run of non-zero data
    blocks = run // _MAX_RUN + 1
    length = np.full(int(blocks.sum()), _MAX_RUN, dtype=np.int64)
    length[np.cumsum(blocks) - 1] = run % _MAX_RUN
    code_at = np.cumsum(length + 1) - (length + 1)  # each block's code byte in the output; its data follows
    out = np.empty(int(code_at[-1] + length[-1] + 1), dtype=np.uint8)
    is_data = np.ones(out.size, dtype=bool)
    is_data[code_at] = False
    out[code_at] = length + 1
    out[is_data] = a[a != 0]
    return out.tobytes()


def _block_starts(data: bytes) -> list[int]:
    """Where each block's code byte is, walking the codes alone; a malformed frame raises CobsError, the first
    fault met in frame order: a zero code, a block past the end, a zero inside a block."""
    n = len(data)
    if n == 0:
        raise CobsError("empty COBS frame")
    first_zero = data.find(b"\x00")
    starts: list[int] = []
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte inside COBS frame at offset {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block at offset {i} runs past the end of the frame")
        if i < first_zero < end:
            raise CobsError("zero byte inside COBS frame")
        starts.append(i)
        i = end
    return starts


def _join_blocks(data: bytes, starts: list[int]) -> bytes:
    """The decoded bytes, block by block: each block's data, then the zero its code stands for (none after a
    full block, none after the last)."""
    n = len(data)
    ends = starts[1:] + [n]
    return b"".join(
        data[i + 1 : e] + (b"" if data[i] == 0xFF or e == n else b"\x00") for i, e in zip(starts, ends, strict=True)
    )


def _array_blocks(data: bytes, starts: list[int]) -> bytes:
    """The decoded bytes in one array pass: a code byte after a block shorter than 254 becomes the zero it stands
    for, the other code bytes go."""
    at = np.asarray(starts, dtype=np.int64)
    out = np.frombuffer(data, dtype=np.uint8).copy()
    later = at[1:]
    after_full = out[at[:-1]] == 0xFF  # the block before each later code was full: no zero between them
    out[later] = 0
    return np.delete(out, np.concatenate([at[:1], later[after_full]])).tobytes()
