"""Frame checksum: CRC-32 (IEEE 802.3, as in zlib) on every frame since protocol 2.0."""

from __future__ import annotations

import zlib


def crc32_ieee(data: bytes) -> int:
    """CRC-32 as in zlib/Ethernet: poly 0x04C11DB7 reflected, init and final xor 0xFFFFFFFF ('123456789' -> 0xCBF43926)."""
    return zlib.crc32(data) & 0xFFFFFFFF
