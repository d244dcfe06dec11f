"""COBS, CRCs, frames and the streaming decoder: round trips, corruption detection, resynchronisation, fuzz."""

from __future__ import annotations

import binascii

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    MAX_PAYLOAD,
    DecodeError,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    Status,
)
from firmware_protocol.cobs import (
    CobsError,
    _array_blocks,
    _block_starts,
    _encode_array,
    _encode_loop,
    _join_blocks,
    cobs_decode,
    cobs_encode,
)
from firmware_protocol.constants import MAX_ENCODED_SIZE, MAX_FRAME_SIZE, MIN_FRAME_SIZE
from firmware_protocol.crc import crc32_ieee
from firmware_protocol.frame import HEADER
from firmware_protocol.messages import HelloRequest, SetRequest


def _crc32_bitwise(data: bytes) -> int:
    """The C reference of PROTOCOL.md 2.4, bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _v1_frame(frame: Frame) -> bytes:
    """A protocol 1.x frame (un-stuffed): version 0x10, CRC-16/CCITT-FALSE up to 256 payload bytes, else BULK + CRC-32."""
    n = len(frame.payload)
    bulk = n > 256
    body = HEADER.pack(0x10, int(frame.type) | (0x80 if bulk else 0), frame.seq, frame.opcode, frame.status, n)
    body += frame.payload
    if bulk:
        return body + crc32_ieee(body).to_bytes(4, "little")
    return body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "little")


def test_crc_check_value() -> None:
    assert crc32_ieee(b"123456789") == 0xCBF43926


@given(st.binary(max_size=300))
def test_crc32_matches_the_documented_bitwise_code(data: bytes) -> None:
    assert crc32_ieee(data) == _crc32_bitwise(data)


@given(st.binary(max_size=2000))
def test_cobs_round_trip_and_no_zero(data: bytes) -> None:
    enc = cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(enc) == data


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x05\x01", b"\x03\x01\x00"])
def test_cobs_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(CobsError):
        cobs_decode(bad)


def _decode_reference(data: bytes) -> bytes:
    """COBS decoding a byte block at a time, each fault raised where it is met: the code the decoder replaced."""
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


def _both_builds(enc: bytes) -> tuple[bytes, bytes]:
    """The decoded bytes built block by block and in one array pass."""
    starts = _block_starts(enc)
    return _join_blocks(enc, starts), _array_blocks(enc, starts)


# Data built from runs of non-zero bytes around the 254-byte block limit, with single or repeated zeros between.
_runs = st.lists(st.sampled_from([0, 1, 2, 253, 254, 255, 507, 508, 509]) | st.integers(0, 600), max_size=12)


def _from_runs(runs: list[int], zeros: list[int], fill: int) -> bytes:
    return b"".join(bytes([fill]) * r + b"\x00" * z for r, z in zip(runs, zeros, strict=False))


@settings(max_examples=300, deadline=None)
@given(_runs, st.lists(st.integers(0, 3), min_size=12, max_size=12), st.integers(1, 255))
def test_cobs_array_paths_give_the_loops_bytes(runs: list[int], zeros: list[int], fill: int) -> None:
    data = _from_runs(runs, zeros, fill)
    enc = _encode_loop(data)
    assert _encode_array(data) == enc
    assert _both_builds(enc) == (data, data)
    assert _decode_reference(enc) == data


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=1, max_size=1500) | st.lists(st.integers(0, 2), min_size=300, max_size=1500).map(bytes),
    st.integers(0, 1499),
    st.integers(0, 255),
)
def test_cobs_decoder_refuses_as_the_reference_does(data: bytes, at: int, byte: int) -> None:
    """Corrupt one byte of a valid encoding (or take the raw bytes): the decoder's two builds and the reference
    give the same bytes, or the same error message. Dense zeros (a third of the bytes) put hundreds of blocks in
    a frame."""
    enc = bytearray(_encode_loop(data))
    enc[at % len(enc)] = byte
    for candidate in (bytes(enc), data, b""):
        try:
            expected: object = _decode_reference(candidate)
        except CobsError as err:
            expected = str(err)
        try:
            got: object = _both_builds(candidate)
        except CobsError as err:
            got = str(err)
        assert got == (expected if isinstance(expected, str) else (expected, expected))


def test_cobs_long_numeric_frame_round_trips() -> None:
    """A frame of 8,000 bytes with zeros every few bytes (a numeric payload): the loop's bytes, and back."""
    data = np.arange(4000, dtype=np.uint16).tobytes()
    assert data.count(0) >= 128 and cobs_encode(data) == _encode_loop(data)
    assert cobs_decode(cobs_encode(data)) == data


frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    seq=st.integers(0, 0xFFFF),
    opcode=st.integers(0, 255),
    status=st.integers(0, 255),
    payload=st.one_of(st.binary(max_size=300), st.binary(min_size=1000, max_size=1200)),
)


@given(st.lists(frames, min_size=1, max_size=6), st.data())
@settings(max_examples=150, deadline=None)
def test_decoder_with_arbitrary_chunking(fs: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(f.encode() for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    dec = FrameDecoder()
    out = []
    prev = 0
    for c in cuts + [len(wire)]:
        out += dec.feed(wire[prev:c])
        prev = c
    assert out == fs
    assert dec.pending == 0


@pytest.mark.parametrize("n", [0, 6, 256, 257, MAX_PAYLOAD])
def test_every_frame_ends_with_a_crc32_of_header_and_payload(n: int) -> None:
    raw = Frame(FrameType.RESPONSE, 1, 0x21, payload=bytes(range(256)) * (n // 256) + bytes(n % 256)).to_bytes()
    assert len(raw) == 8 + n + 4
    assert raw[1] == FrameType.RESPONSE  # no flag bits: bit 7 (the 1.x BULK flag) is never set
    assert raw[-4:] == crc32_ieee(raw[:-4]).to_bytes(4, "little")


def test_frame_sizes() -> None:
    assert (MIN_FRAME_SIZE, MAX_FRAME_SIZE, MAX_ENCODED_SIZE) == (12, 8204, 8238)
    empty = Frame(FrameType.REQUEST, 7, 0x03)
    assert len(empty.to_bytes()) == 12 and len(empty.encode()) == 14  # COBS adds one byte, then the delimiter
    with pytest.raises(FrameError, match="shorter than a header and CRC-32") as exc:
        Frame.from_bytes(empty.to_bytes()[:-1])
    assert exc.value.status == Status.BAD_LENGTH
    assert len(Frame(FrameType.RESPONSE, 1, 0x21, payload=bytes([1]) * MAX_PAYLOAD).encode()) == MAX_ENCODED_SIZE


@pytest.mark.parametrize("bit", range(2, 8))
def test_reserved_type_bits_are_refused_after_the_crc(bit: int) -> None:
    raw = bytearray(Frame(FrameType.REQUEST, 0x0203, 0x20, payload=b"\x01\x02").to_bytes()[:-4])
    raw[1] |= 1 << bit
    raw += crc32_ieee(bytes(raw)).to_bytes(4, "little")
    with pytest.raises(FrameError, match="reserved type bits") as exc:
        Frame.from_bytes(bytes(raw))
    assert exc.value.status == Status.BAD_LENGTH and exc.value.seq_hint == 0x0203
    assert ("1.x bulk flag" in str(exc.value)) == (bit == 7)


def test_protocol_1_frames_are_refused_with_bad_length() -> None:
    short = _v1_frame(HelloRequest(1, 0).to_frame(1))  # CRC-16: two bytes shorter than 2.0 wants
    bulk = _v1_frame(Frame(FrameType.RESPONSE, 2, 0x21, payload=bytes(range(1, 256)) * 2))  # BULK flag + CRC-32
    out = FrameDecoder().feed(cobs_encode(short) + b"\x00" + cobs_encode(bulk) + b"\x00")
    assert [type(x) for x in out] == [DecodeError, DecodeError]
    assert [x.status for x in out] == [Status.BAD_LENGTH, Status.BAD_LENGTH]
    assert "protocol 1.x frame with a CRC-16" in out[0].reason and "1.x bulk flag" in out[1].reason


def test_protocol_1_host_gets_naks_from_the_board() -> None:
    from sim_backend.board_config import BoardConfig
    from sim_backend.firmware import FirmwareEngine

    engine = FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1))
    engine.poll()
    answer = FrameDecoder().feed(engine.feed(cobs_encode(_v1_frame(HelloRequest(1, 0).to_frame(1))) + b"\x00"))
    assert len(answer) == 1 and isinstance(answer[0], Frame)
    assert (answer[0].type, answer[0].seq, answer[0].status) == (FrameType.NAK, 0xFFFF, Status.BAD_LENGTH)


def test_a_splice_that_crc16_let_through_is_refused() -> None:
    """Issue 15 item 10: two polled SETs lose a frame's worth of bytes across their boundary. Under 1.x the run left
    was a valid SET nobody sent (A's seq, cell, voltage and width, B's gate; inside the limits); CRC-32 refuses it."""
    a = Frame(FrameType.REQUEST, 9588, 0x11, payload=SetRequest(2, 2, 691, 7990, 2727).encode())
    b = Frame(FrameType.REQUEST, 9589, 0x11, payload=SetRequest(1, 2, 1864, 5220, 2907).encode())
    cut = 17
    forged = cobs_decode(cobs_encode(_v1_frame(a))[:cut] + cobs_encode(_v1_frame(b))[cut:])
    assert binascii.crc_hqx(forged[:-2], 0xFFFF) == int.from_bytes(forged[-2:], "little")  # 1.x accepted it
    assert forged[2:4] == a.to_bytes()[2:4] and SetRequest.decode(forged[8:-2]) == SetRequest(2, 2, 691, 7990, 2907)
    spliced = a.encode()[:cut] + b.encode()[cut:]
    assert len(cobs_decode(spliced[:-1])) == len(b.to_bytes())  # same length: only the CRC can tell
    out = FrameDecoder().feed(spliced)
    assert len(out) == 1 and isinstance(out[0], DecodeError) and out[0].status == Status.BAD_CRC


def test_oversized_payload_refused() -> None:
    with pytest.raises(FrameError, match="exceeds the maximum"):
        Frame(FrameType.REQUEST, 1, 0x21, payload=bytes(MAX_PAYLOAD + 1)).encode()


def _sample_frames() -> list[Frame]:
    rng = np.random.default_rng(3)
    return [
        Frame(FrameType.REQUEST, 0x1234, 0x20, payload=bytes([3, 0, 5, 0, 100, 0])),
        Frame(FrameType.RESPONSE, 7, 0x21, payload=rng.integers(0, 256, 600, dtype=np.uint8).tobytes()),
        Frame(FrameType.EVENT, 65535, 0x82, payload=rng.integers(0, 256, 40, dtype=np.uint8).tobytes()),
        Frame(FrameType.NAK, 3, 0, Status.BAD_CRC),
    ]


def _check_detected_then_recovers(corrupted: bytes, original: Frame) -> None:
    follower = Frame(FrameType.RESPONSE, 99, 0x03, payload=b"next")
    out = FrameDecoder().feed(corrupted + follower.encode())
    assert out[-1] == follower, "decoder did not recover on the next delimiter"
    bogus = [x for x in out[:-1] if isinstance(x, Frame)]
    assert bogus == [], f"corruption accepted as {bogus}"
    assert any(isinstance(x, DecodeError) for x in out[:-1]) or len(out) == 1


@pytest.mark.parametrize("frame", _sample_frames(), ids=lambda f: f"{f.type.name}-{len(f.payload)}")
def test_every_single_bit_flip_is_detected(frame: Frame) -> None:
    wire = frame.encode()
    for i in range(len(wire) - 1):  # the delimiter is covered by the merge test below
        for bit in range(8):
            bad = bytearray(wire)
            bad[i] ^= 1 << bit
            _check_detected_then_recovers(bytes(bad), frame)


@pytest.mark.parametrize("frame", _sample_frames(), ids=lambda f: f"{f.type.name}-{len(f.payload)}")
def test_every_dropped_or_inserted_byte_is_detected(frame: Frame) -> None:
    wire = frame.encode()
    body = wire[:-1]
    for i in range(len(body)):
        _check_detected_then_recovers(body[:i] + body[i + 1 :] + b"\x00", frame)
        for value in (0x00, 0x01, 0x5A, 0xFF):
            if i == 0 and value == 0:
                continue  # a delimiter before the frame is an empty frame, not a corruption
            _check_detected_then_recovers(body[:i] + bytes([value]) + body[i:] + b"\x00", frame)


def test_lost_delimiter_merges_two_frames_and_both_are_refused() -> None:
    a, b = _sample_frames()[:2]
    merged = a.encode()[:-1] + b.encode()
    out = FrameDecoder().feed(merged)
    assert all(isinstance(x, DecodeError) for x in out) and len(out) == 1


def test_overlong_garbage_is_discarded_and_decoder_resyncs() -> None:
    dec = FrameDecoder(max_encoded_size=100)
    good = Frame(FrameType.RESPONSE, 5, 0x02, payload=b"ok")
    out = dec.feed(b"\x07" * 500) + dec.feed(b"\x00" + good.encode())
    assert isinstance(out[0], DecodeError) and "longer than" in out[0].reason
    assert out[-1] == good


def test_fuzz_100k_random_byte_strings_never_raise_or_yield_a_frame() -> None:
    rng = np.random.default_rng(20261123)
    dec = FrameDecoder()
    accepted = errors = 0
    lengths = rng.integers(0, 80, 100_000)
    blob = rng.integers(0, 256, int(lengths.sum()), dtype=np.uint8).tobytes()
    pos = 0
    for n in lengths:
        chunk = blob[pos : pos + n] + b"\x00"
        pos += n
        for item in dec.feed(chunk):
            if isinstance(item, Frame):
                accepted += 1
            else:
                errors += 1
    assert accepted == 0
    assert errors > 90_000  # nearly every non-empty string was seen and refused
