"""Every request names the message its answer decodes to, and that name agrees with the opcode tables."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    ALL_MESSAGES,
    MESSAGE_TYPES,
    Frame,
    FrameType,
    Opcode,
    PayloadError,
    Request,
    decode_payload,
)
from firmware_protocol import messages as m
from tests.helpers.protocol_strategies import messages

REQUESTS = [cls for cls in ALL_MESSAGES if cls.KIND == FrameType.REQUEST]
RESPONSES = [cls for cls in ALL_MESSAGES if cls.KIND == FrameType.RESPONSE]


def test_every_request_frame_type_is_a_typed_request_and_nothing_else_is() -> None:
    assert len(REQUESTS) == 16  # RELEASE (protocol 2.0) is the 16th
    assert all(issubclass(cls, Request) for cls in REQUESTS)
    assert not any(issubclass(cls, Request) for cls in ALL_MESSAGES if cls not in REQUESTS)


@pytest.mark.parametrize("req_cls", REQUESTS, ids=lambda c: c.__name__)
def test_declared_response_is_what_the_opcode_tables_decode_its_answer_to(req_cls: type[Request]) -> None:
    rsp = req_cls.RESPONSE
    assert rsp.KIND == FrameType.RESPONSE and rsp.OPCODE == req_cls.OPCODE
    assert MESSAGE_TYPES[(FrameType.RESPONSE, int(req_cls.OPCODE))] is rsp


def test_every_response_answers_exactly_one_request() -> None:
    answered = [cls.RESPONSE for cls in REQUESTS if issubclass(cls, Request)]
    assert sorted(c.__name__ for c in answered) == sorted(c.__name__ for c in RESPONSES)


@pytest.mark.parametrize("req_cls", REQUESTS, ids=lambda c: c.__name__)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_an_answer_frame_for_the_opcode_decodes_to_the_declared_type(
    req_cls: type[Request], data: st.DataObject
) -> None:
    req = data.draw(messages(req_cls))
    assert isinstance(req, Request)
    # the answer as a board builds it: the response class registered for the request's opcode, on the wire and back
    answer = data.draw(messages(MESSAGE_TYPES[(FrameType.RESPONSE, int(req.OPCODE))]))
    frame = Frame.decode(answer.to_frame(data.draw(st.integers(0, 0xFFFE))).encode())
    assert type(decode_payload(frame)) is req_cls.RESPONSE
    typed = req.decode_response(frame)
    assert type(typed) is req_cls.RESPONSE and typed == answer


def test_an_answer_of_another_opcode_is_refused() -> None:
    wrong = m.Counters(1, 2, 3, 4, 5).to_frame(7)
    with pytest.raises(PayloadError, match="ReadRequest answered by Counters, expected ReadResult"):
        m.ReadRequest(0, 0, 100).decode_response(wrong)


def test_pulse_requests_declare_their_own_result_subclass() -> None:
    assert m.SetRequest.RESPONSE is m.SetResult and m.ResetRequest.RESPONSE is m.ResetResult
    assert m.PulseRequest.RESPONSE is m.PulseResult  # the shared base: any pulse result
    assert Opcode(m.SetRequest.OPCODE) == Opcode.SET and Opcode(m.ResetRequest.OPCODE) == Opcode.RESET


def test_a_request_parameterized_with_a_non_message_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bogus: Request\[\.\.\.\] takes a message class, got <class 'int'>"):

        @dataclass
        class Bogus(Request[int]):  # type: ignore[type-var]  # deliberately wrong, to see it refused
            OPCODE = Opcode.READ
