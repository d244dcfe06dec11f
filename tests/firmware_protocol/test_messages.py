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
    HeartbeatRequest,
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


# Golden frames: every example of firmware_protocol/PROTOCOL.md section 12 (the same hex strings appear there).
GOLDEN = {
    "hello_request": (HelloRequest(2, 0).to_frame(1), "02200201020102070202010101010105dc47f0b000"),
    "read_request": (ReadRequest(3, 5, 100).to_frame(0x0102), "0220040201200206020302050264052866830800"),
    "read_response": (
        ReadResult(1_000_000, 100, 0x2A5C, 6.25e-10, 2048.0).to_frame(0x0102),
        "06200102012002140440420f010101010264075c2a77cc2b300101064563714e6100",
    ),
    "heartbeat_request": (HeartbeatRequest(0).to_frame(7), "02200207020202020101053f0bd34100"),
    "nak": (
        Frame(FrameType.NAK, 0xFFFF, 0, Status.BAD_CRC, b"CRC mismatch"),
        "052003ffff03010c11435243206d69736d61746368cb29eb5800",
    ),
    "error_response": (
        Frame(
            FrameType.RESPONSE,
            0x0103,
            Opcode.SET,
            Status.OUT_OF_RANGE,
            b"SET voltage 3.500 V is outside the board's range [0.000, 3.000] V",
        ),
        "08200103011105414653455420766f6c7461676520332e3530302056206973206f757473696465207468652062"
        "6f61726427732072616e6765205b302e3030302c20332e3030305d20562769eb6800",
    ),
    "read_block_response": (
        ReadBlockResult(
            2_500_000, 200, 0, 0, 1, 120, 6.25e-10, 2048.0, np.arange(1000, 1120, dtype=np.uint16)
        ).to_frame(0x0010),
        "042001100221060a01a025260101010102c801010101020102780577cc2b3001013245e803e903ea03eb03ec03ed03ee"
        "03ef03f003f103f203f303f403f503f603f703f803f903fa03fb03fc03fd03fe03ff03c4040104020403040404050406"
        "040704080409040a040b040c040d040e040f0410041104120413041404150416041704180419041a041b041c041d041e"
        "041f0420042104220423042404250426042704280429042a042b042c042d042e042f0430043104320433043404350436"
        "043704380439043a043b043c043d043e043f0440044104420443044404450446044704480449044a044b044c044d044e"
        "044f0450045104520453045404550456045704580459045a045b045c045d045e045f044c5b139700",
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

    text = "".join((Path(firmware_protocol.__file__).parent / "PROTOCOL.md").read_text().split()).lower()
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
