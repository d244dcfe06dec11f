"""Typed exceptions: framing errors, host-side limit violations, and board status codes."""

from __future__ import annotations

from firmware_protocol.constants import Status


class ProtocolError(Exception):
    """Base of every error raised by the protocol package."""


class FrameError(ProtocolError):
    """A received frame is corrupt (bad COBS, length, CRC or reserved bits)."""

    def __init__(self, message: str, status: Status = Status.BAD_LENGTH, seq_hint: int | None = None):
        super().__init__(message)
        self.status = status
        self.seq_hint = seq_hint


class PayloadError(ProtocolError, ValueError):
    """A payload does not have the layout its opcode requires."""


class LimitError(ProtocolError, ValueError):
    """A request would exceed the limits the board declared in HELLO; it is never sent."""


class VersionError(ProtocolError):
    """The board speaks an incompatible protocol major version."""


class BoardError(ProtocolError):
    """The board answered with a non-OK status."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str = "", payload: bytes = b"", result: object | None = None):
        super().__init__(message or self.status.name.lower().replace("_", " "))
        self.payload = payload
        self.result = result  # the decoded result where the status still carries one (ADC_SATURATED)


def _status_error(name: str, status: Status, doc: str) -> type[BoardError]:
    return type(name, (BoardError,), {"status": status, "__doc__": doc})


BadCrcError = _status_error("BadCrcError", Status.BAD_CRC, "The board received a frame with a bad CRC.")
BadLengthError = _status_error(
    "BadLengthError", Status.BAD_LENGTH, "The board received a frame of inconsistent length."
)
UnknownOpcodeError = _status_error(
    "UnknownOpcodeError", Status.UNKNOWN_OPCODE, "The board does not implement this opcode."
)
BadArgumentError = _status_error("BadArgumentError", Status.BAD_ARGUMENT, "A request field is malformed.")
OutOfRangeError = _status_error("OutOfRangeError", Status.OUT_OF_RANGE, "A request exceeds the board's limits.")
BusyError = _status_error("BusyError", Status.BUSY, "The board is busy (a stream is running).")
ComplianceHitError = _status_error(
    "ComplianceHitError", Status.COMPLIANCE_HIT, "The current reached the compliance limit."
)
AdcSaturatedError = _status_error(
    "AdcSaturatedError", Status.ADC_SATURATED, "The ADC saturated during the measurement."
)
AbortedError = _status_error("AbortedError", Status.ABORTED, "The operation was aborted.")
InternalError = _status_error("InternalError", Status.INTERNAL, "The board hit an internal error.")
HandshakeRequiredError = _status_error(
    "HandshakeRequiredError", Status.HANDSHAKE_REQUIRED, "The board was reset and needs HELLO first."
)
VersionMismatchError = _status_error(
    "VersionMismatchError", Status.VERSION_MISMATCH, "The request's protocol major version differs from the board's."
)
SessionActiveError = _status_error(
    "SessionActiveError", Status.SESSION_ACTIVE, "Another host's session is alive on the board: HELLO was refused."
)

STATUS_ERRORS: dict[Status, type[BoardError]] = {
    cls.status: cls
    for cls in (
        BadCrcError,
        BadLengthError,
        UnknownOpcodeError,
        BadArgumentError,
        OutOfRangeError,
        BusyError,
        ComplianceHitError,
        AdcSaturatedError,
        AbortedError,
        InternalError,
        HandshakeRequiredError,
        VersionMismatchError,
        SessionActiveError,
    )
}


def error_for_status(status: int, message: str = "", payload: bytes = b"") -> BoardError:
    """The typed exception for a non-OK status byte."""
    try:
        cls = STATUS_ERRORS[Status(status)]
    except ValueError:
        return InternalError(f"unknown status code {status}", payload)
    return cls(message, payload)
