"""COBS, CRCs, frames and the streaming decoder: round trips, corruption detection, resynchronisation, fuzz."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    BULK_THRESHOLD,
    MAX_PAYLOAD,
    DecodeError,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    Status,
)
from firmware_protocol.cobs import CobsError, cobs_decode, cobs_encode
from firmware_protocol.crc import crc16_ccitt, crc32_ieee


def _crc16_bitwise(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_crc_check_values() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1
    assert crc32_ieee(b"123456789") == 0xCBF43926


@given(st.binary(max_size=300))
def test_crc16_matches_bitwise_reference(data: bytes) -> None:
    assert crc16_ccitt(data) == _crc16_bitwise(data)


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


frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    seq=st.integers(0, 0xFFFF),
    opcode=st.integers(0, 255),
    status=st.integers(0, 255),
    payload=st.one_of(st.binary(max_size=BULK_THRESHOLD + 40), st.binary(min_size=1000, max_size=1200)),
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


def test_bulk_frames_use_crc32_and_small_frames_crc16() -> None:
    small = Frame(FrameType.RESPONSE, 1, 0x20, payload=bytes(BULK_THRESHOLD)).to_bytes()
    big = Frame(FrameType.RESPONSE, 1, 0x21, payload=bytes(BULK_THRESHOLD + 1)).to_bytes()
    assert len(small) == 8 + BULK_THRESHOLD + 2 and small[1] & 0x80 == 0
    assert len(big) == 8 + BULK_THRESHOLD + 1 + 4 and big[1] & 0x80


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
