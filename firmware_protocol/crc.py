"""Frame checksums: CRC-16/CCITT-FALSE for ordinary frames, CRC-32 (IEEE 802.3) for bulk frames."""

from __future__ import annotations

import binascii
import zlib


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor ('123456789' -> 0x29B1)."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32_ieee(data: bytes) -> int:
    """CRC-32 as in zlib/Ethernet: poly 0x04C11DB7 reflected, init and final xor 0xFFFFFFFF ('123456789' -> 0xCBF43926)."""
    return zlib.crc32(data) & 0xFFFFFFFF
