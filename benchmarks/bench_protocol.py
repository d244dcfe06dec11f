"""Benchmark: wire protocol encode+decode rate and wire efficiency of typical frames.

Run: python benchmarks/bench_protocol.py [--min-time 0.5] [--repeats 3] [--seed 0] [--baud 921600]

For each case the loop is the full host path: message -> Frame (to_frame) -> wire bytes (Frame.encode,
COBS + CRC) -> FrameDecoder.feed -> decode_payload -> message. Prints frames/s (best of --repeats),
payload MB/s, and the wire efficiency = payload bytes / total wire bytes (header, CRC, COBS overhead
and delimiter included), plus the time one frame occupies a UART at --baud (8N1: 10 bits per byte).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from firmware_protocol import MAX_PAYLOAD, Frame, FrameDecoder, decode_payload
from firmware_protocol.messages import (
    EnduranceData,
    Message,
    ReadBlockResult,
    ReadRequest,
    ReadResult,
    max_block_cells,
    max_event_cells,
)


@dataclass(frozen=True)
class CaseResult:
    """Timing and size figures of one benchmark case."""

    name: str
    payload_bytes: int
    wire_bytes: int
    frames_per_s: float

    @property
    def efficiency(self) -> float:
        return self.payload_bytes / self.wire_bytes

    @property
    def payload_mb_per_s(self) -> float:
        return self.frames_per_s * self.payload_bytes / 1e6


def _codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plausible 16-bit read codes: offset 2048 plus a log-spread of conductances (some low bytes are 0)."""
    return np.clip(2048 + np.exp(rng.uniform(np.log(50), np.log(60000), n)), 0, 65535).astype(np.uint16)


def cases(seed: int = 0) -> list[tuple[str, Message]]:
    """The frames measured: a small READ exchange, a 1,000-cell READ_BLOCK, a 1,024-cell endurance event."""
    rng = np.random.default_rng(seed)
    block = ReadBlockResult(12_345_678, 100, 0, 0, 25, 40, 6.25e-10, 2048.0, _codes(rng, 1000))
    event = EnduranceData(3, 17, 170_000, 98_765_432, 0, 1024, 6.25e-10, 2048.0, _codes(rng, 1024), _codes(rng, 1024))
    assert 1000 <= max_block_cells(MAX_PAYLOAD) and 1024 <= max_event_cells(MAX_PAYLOAD)
    return [
        ("READ request", ReadRequest(3, 5, 100)),
        ("READ response", ReadResult(1_000_000, 100, 0x2A5C, 6.25e-10, 2048.0)),
        ("READ_BLOCK response, 1000 cells", block),
        ("endurance data event, 1024 cells", event),
    ]


def _round_trip(msg: Message, seq: int, decoder: FrameDecoder) -> Message:
    items = decoder.feed(msg.to_frame(seq).encode())
    frame = items[0]
    assert isinstance(frame, Frame), frame
    return decode_payload(frame)


def time_case(name: str, msg: Message, min_time: float, repeats: int) -> CaseResult:
    """Best-of-`repeats` frames/s of the full encode+decode path, each repeat running >= min_time seconds."""
    wire = msg.to_frame(1).encode()
    decoder = FrameDecoder()
    back = _round_trip(msg, 1, decoder)  # floats come back rounded to f32, so compare the payload bytes
    assert back.encode() == msg.encode(), f"{name}: round trip changed the message"
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        batch = 64
        while True:
            for i in range(batch):
                _round_trip(msg, i, decoder)
            n += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        best = max(best, n / elapsed)
    return CaseResult(name, len(msg.encode()), len(wire), best)


def main() -> None:
    """Print one table row per case."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per repeat and case (default 0.5)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per case; the best is reported (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic codes (default 0)")
    ap.add_argument("--baud", type=int, default=921_600, help="UART rate for the link-time column (default 921600)")
    args = ap.parse_args()
    if args.min_time <= 0 or args.repeats < 1 or args.baud <= 0:
        ap.error("--min-time and --baud must be positive and --repeats at least 1")

    rows = [time_case(name, msg, args.min_time, args.repeats) for name, msg in cases(args.seed)]
    head = (
        f"{'case':34s} {'payload B':>9s} {'wire B':>7s} {'efficiency':>10s} {'frames/s':>10s} "
        f"{'payload MB/s':>12s} {'UART ms':>8s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        uart_ms = r.wire_bytes * 10 / args.baud * 1e3
        print(
            f"{r.name:34s} {r.payload_bytes:9d} {r.wire_bytes:7d} {r.efficiency:10.1%} {r.frames_per_s:10.0f} "
            f"{r.payload_mb_per_s:12.2f} {uart_ms:8.3f}"
        )
    print(
        f"\nencode+decode = to_frame + Frame.encode + FrameDecoder.feed + decode_payload; best of {args.repeats}; "
        f"UART ms = wire bytes at {args.baud} baud, 8N1"
    )


if __name__ == "__main__":
    main()
