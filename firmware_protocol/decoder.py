"""Streaming frame decoder: arbitrary byte chunks in, frames or decode errors out, never an exception."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from firmware_protocol.constants import MAX_ENCODED_SIZE, Status
from firmware_protocol.errors import FrameError
from firmware_protocol.frame import Frame


@dataclass(frozen=True)
class DecodeError:
    """A run of bytes between delimiters that is not a valid frame; the decoder has resynchronised."""

    reason: str
    status: Status
    raw: bytes
    seq_hint: int | None = None


class FrameDecoder:
    """Splits a byte stream on 0x00 delimiters and parses each frame.

    Garbage, truncated or corrupted frames become `DecodeError` items; the decoder then carries on
    at the next delimiter, so one bad frame never costs more than itself.
    """

    def __init__(self, max_encoded_size: int = MAX_ENCODED_SIZE):
        self._buf = bytearray()
        self._max = max_encoded_size
        self._discarding = False  # inside an overlong run: drop bytes until the next delimiter
        self.frames_ok = 0
        self.frames_bad = 0

    def feed(self, data: bytes) -> list[Frame | DecodeError]:
        """Consume a chunk and return every frame (or error) it completed, in order."""
        return list(self.iter_feed(data))

    def iter_feed(self, data: bytes) -> Iterator[Frame | DecodeError]:
        start = 0
        n = len(data)
        while start < n:
            zero = data.find(b"\x00", start)
            if zero == -1:
                self._append(data[start:])
                return
            self._append(data[start:zero])
            start = zero + 1
            item = self._finish()
            if item is not None:
                yield item

    @property
    def pending(self) -> int:
        """Bytes buffered towards the next, not yet delimited, frame."""
        return len(self._buf)

    def _append(self, chunk: bytes) -> None:
        if self._discarding:
            return
        self._buf += chunk
        if len(self._buf) > self._max:
            self._buf.clear()
            self._discarding = True

    def _finish(self) -> Frame | DecodeError | None:
        if self._discarding:
            self._discarding = False
            self.frames_bad += 1
            return DecodeError(f"frame longer than {self._max} bytes without a delimiter", Status.BAD_LENGTH, b"")
        if not self._buf:
            return None  # back-to-back delimiters are allowed (used to flush the link)
        raw = bytes(self._buf)
        self._buf.clear()
        try:
            frame = Frame.decode(raw)
        except FrameError as exc:
            self.frames_bad += 1
            return DecodeError(str(exc), exc.status, raw, exc.seq_hint)
        except Exception as exc:  # defensive: a decoder on a serial line must never raise
            self.frames_bad += 1
            return DecodeError(f"undecodable frame: {exc}", Status.BAD_LENGTH, raw)
        self.frames_ok += 1
        return frame
