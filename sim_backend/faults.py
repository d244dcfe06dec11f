"""Link fault injection for tests: bit flips, dropped bytes, delays and a board reset mid-run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinkFaults:
    """Per-byte fault probabilities, applied independently in both directions of the link."""

    flip: float = 0.0  # probability that a byte has one random bit flipped
    drop: float = 0.0  # probability that a byte is lost
    delay: float = 0.0  # probability that a board->host chunk is held back
    delay_max_s: float = 0.05  # longest hold-back (uniform 0..delay_max_s)
    reset_after: int = 0  # reboot the board's firmware once after this many host bytes (0 = never)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("flip", "drop", "delay"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability {name}={p} must lie in [0, 1]")
        if self.delay_max_s < 0 or self.reset_after < 0:
            raise ValueError("delay_max_s and reset_after must be non-negative")

    @property
    def active(self) -> bool:
        return bool(self.flip or self.drop or self.delay or self.reset_after)


NO_FAULTS = LinkFaults()  # the default argument of links that inject nothing (frozen, so shared)


class FaultInjector:
    """Applies LinkFaults to byte chunks with its own seeded generator."""

    def __init__(self, faults: LinkFaults):
        self.faults = faults
        self.rng = np.random.default_rng([faults.seed, 0xFA17])
        self.bytes_flipped = 0
        self.bytes_dropped = 0

    def corrupt(self, data: bytes) -> bytes:
        f = self.faults
        if not data or not (f.flip or f.drop):
            return data
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        if f.flip:
            hit = self.rng.random(arr.size) < f.flip
            bits = self.rng.integers(0, 8, arr.size).astype(np.uint8)
            arr[hit] ^= (np.uint8(1) << bits[hit]).astype(np.uint8)
            self.bytes_flipped += int(hit.sum())
        if f.drop:
            keep = self.rng.random(arr.size) >= f.drop
            self.bytes_dropped += int((~keep).sum())
            arr = arr[keep]
        return arr.tobytes()

    def hold_back_s(self) -> float:
        f = self.faults
        if f.delay and self.rng.random() < f.delay:
            return float(self.rng.uniform(0, f.delay_max_s))
        return 0.0
