/* rram_cobs.c - COBS framing and the frame CRC-32 (PROTOCOL.md 2.2, 2.4). */
#include "rram_internal.h"

/* CRC-32 (IEEE 802.3, zlib): reflected poly 0xEDB88320, init and final xor 0xFFFFFFFF, one nibble table
 * (64 bytes of flash; "123456789" -> 0xCBF43926). A port with a CRC unit may replace this function. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

uint32_t rram_crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ crc_nibble[crc & 0xFu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0xFu];
    }
    return crc;
}

uint32_t rram_crc32(const uint8_t *p, size_t n) { return rram_crc32_update(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu; }

/* dst holds n + n / 254 + 1 bytes; returns the encoded length (no delimiter). A frame ending in a full
 * 254-byte block gets the final empty block 0x01, as firmware_protocol/cobs.py writes it. */
size_t rram_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst) {
    size_t out = 1, code_pos = 0;
    uint8_t code = 1;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == 0) {
            dst[code_pos] = code;
            code_pos = out++;
            code = 1;
        } else {
            dst[out++] = src[i];
            code++;
            if (code == 0xFF) {
                dst[code_pos] = code;
                code_pos = out++;
                code = 1;
            }
        }
    }
    dst[code_pos] = code;
    return out;
}

/* src excludes the delimiter; dst holds n bytes; returns the decoded length, or a negative value if
 * malformed: -1 for an empty input or a 0x00 inside, -2 - i for a block at offset i running past the end. */
long rram_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst) {
    size_t i = 0, out = 0;
    if (n == 0) return -1;
    while (i < n) {
        uint8_t code = src[i];
        if (code == 0) return -1;
        if (i + code > n) return -2 - (long)i;
        for (size_t k = 1; k < code; k++) {
            if (src[i + k] == 0) return -1;
            dst[out++] = src[i + k];
        }
        i += code;
        if (code != 0xFF && i < n) dst[out++] = 0;
    }
    return (long)out;
}
