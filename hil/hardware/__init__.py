"""Board I/O: byte links, the board session (handshake, retries) and the typed board client."""

from __future__ import annotations

from hil.hardware.board import Board, CurrentCorrection, PulseRamp
from hil.hardware.session import BoardResetError, BoardSession, BoardTimeoutError, LinkStats
from hil.hardware.transport import DEFAULT_PORT, BoardConnectionError, ByteLink, open_link

__all__ = [
    "DEFAULT_PORT",
    "Board",
    "BoardConnectionError",
    "BoardResetError",
    "BoardSession",
    "BoardTimeoutError",
    "ByteLink",
    "CurrentCorrection",
    "LinkStats",
    "PulseRamp",
    "open_link",
]
