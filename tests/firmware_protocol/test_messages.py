"""Every message type round-trips; golden frames agree with PROTOCOL.md."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    ALL_MESSAGES,
    MAX_PAYLOAD,
    Frame,
    FrameType,
    Opcode,
    PayloadError,
    ReadBlockResult,
    ReadRequest,
    ReadResult,
    Status,
    decode_payload,
)
from firmware_protocol.messages import (
    WV_ENTRY,
    HelloRequest,
    WriteVerifyRequest,
    max_block_cells,
    max_event_cells,
    max_wv_entries,
)
from tests.helpers.protocol_strategies import messages


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_message_round_trips_through_payload_and_frame(cls, data) -> None:
    msg = data.draw(messages(cls))
    payload = msg.encode()
    assert cls.decode(payload) == msg
    seq = data.draw(st.integers(0, 0xFFFE))
    frame = msg.to_frame(seq)
    back = Frame.decode(frame.encode())
    assert back == frame
    assert back.type == cls.KIND and back.opcode == cls.OPCODE and back.seq == seq
    assert decode_payload(back) == msg
    assert type(msg).decode(back.payload) == msg


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_truncated_and_padded_payloads_are_refused(cls) -> None:
    size = cls._STRUCT.size
    if size:
        with pytest.raises(PayloadError):
            cls.decode(bytes(size - 1))
    with pytest.raises(PayloadError):
        cls.decode(bytes(size) + b"\x01")  # all-zero fixed part = empty arrays, then one stray byte


def test_array_length_must_match_header() -> None:
    msg = ReadBlockResult(1, 100, 0, 0, 2, 2, 1e-9, 0.0, np.arange(3, dtype=np.uint16))
    with pytest.raises(PayloadError, match="codes has 3 entries, the header says 4"):
        msg.encode()


def test_field_outside_wire_range_is_a_clear_error() -> None:
    with pytest.raises(PayloadError, match="ReadRequest: field out of its wire range"):
        ReadRequest(70000, 0, 100).encode()


# Golden frames: the same hex strings appear in firmware_protocol/PROTOCOL.md (section "Worked examples").
GOLDEN = {
    "hello_request": (HelloRequest(1, 0).to_frame(1), "021002010201020202010385a900"),
    "read_request": (ReadRequest(3, 5, 100).to_frame(0x0102), "021004020120020602030205026403b3bd00"),
    "read_response": (
        ReadResult(1_000_000, 100, 0x2A5C, 6.25e-10, 2048.0).to_frame(0x0102),
        "06100102012002140440420f010101010264075c2a77cc2b30010104455cd000",
    ),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_frames(name: str) -> None:
    frame, hex_wire = GOLDEN[name]
    assert frame.encode().hex() == hex_wire
    assert Frame.decode(bytes.fromhex(hex_wire)) == frame


def test_golden_frames_are_in_protocol_md() -> None:
    from pathlib import Path

    import firmware_protocol

    text = (Path(firmware_protocol.__file__).parent / "PROTOCOL.md").read_text().replace(" ", "").lower()
    for _, hex_wire in GOLDEN.values():
        assert hex_wire in text


def test_size_helpers_fit_the_maximum_payload() -> None:
    n = max_block_cells(MAX_PAYLOAD)
    msg = ReadBlockResult(0, 100, 0, 0, 1, n, 1.0, 0.0, np.zeros(n, np.uint16))
    assert len(msg.encode()) <= MAX_PAYLOAD
    assert len(ReadBlockResult(0, 100, 0, 0, 1, n + 1, 1.0, 0.0, np.zeros(n + 1, np.uint16)).encode()) > MAX_PAYLOAD
    assert max_event_cells(MAX_PAYLOAD) >= 1024  # one event can carry a 32x32 endurance block
    k = max_wv_entries(MAX_PAYLOAD)
    req = WriteVerifyRequest(
        100, 100, 1000, 2000, 50, 1000, 2000, 50, -1000, -2000, -50, 3000, k, np.zeros(k, WV_ENTRY)
    )
    assert len(req.encode()) <= MAX_PAYLOAD


def test_response_status_travels_in_header() -> None:
    f = Frame(FrameType.RESPONSE, 9, Opcode.SET, Status.OUT_OF_RANGE, b"SET voltage 9.000 V is outside")
    back = Frame.decode(f.encode())
    assert back.status == Status.OUT_OF_RANGE and back.payload.startswith(b"SET voltage")
