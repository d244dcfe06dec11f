"""Wire protocol between the host and the RRAM test board: framing, CRCs, messages. Pure Python, no link I/O.

The written specification is PROTOCOL.md beside this file. Being the layer every other package may
import, it also holds the few base helpers they share, imported by module path and not re-exported
here: `registry` (named registries), `fileformat` (versioned files, atomic writes) and `pidlock` (pid lock
files: the two modules that touch the file system), `progress` (bars on a terminal, plain lines elsewhere)
and `device_presets`.
"""

from firmware_protocol.constants import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SEQ_MAX,
    SEQ_UNKNOWN,
    BoardState,
    Capability,
    CellResult,
    FrameType,
    Opcode,
    Status,
    StreamEnd,
)
from firmware_protocol.decoder import DecodeError, FrameDecoder
from firmware_protocol.errors import (
    BoardError,
    FrameError,
    LimitError,
    PayloadError,
    ProtocolError,
    VersionError,
    error_for_status,
)
from firmware_protocol.frame import Frame
from firmware_protocol.limits import BoardLimits
from firmware_protocol.messages import *  # noqa: F403  (the typed messages are the public API)
from firmware_protocol.messages import ALL_MESSAGES, MESSAGE_TYPES, Request, decode_payload, error_text

__all__ = [
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "SEQ_MAX",
    "SEQ_UNKNOWN",
    "BoardState",
    "Capability",
    "CellResult",
    "FrameType",
    "Opcode",
    "Status",
    "StreamEnd",
    "DecodeError",
    "FrameDecoder",
    "BoardError",
    "FrameError",
    "LimitError",
    "PayloadError",
    "ProtocolError",
    "VersionError",
    "error_for_status",
    "Frame",
    "BoardLimits",
    "ALL_MESSAGES",
    "MESSAGE_TYPES",
    "decode_payload",
    "error_text",
    "Request",
] + [m.__name__ for m in ALL_MESSAGES]
