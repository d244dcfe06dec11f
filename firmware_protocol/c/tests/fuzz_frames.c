/* fuzz_frames.c - N frames through the C decoder and dispatcher (run under ASan/UBSan by `make asan`).
 *
 * Each chunk holds 1-4 items: valid requests (to move the board through its states), random byte runs,
 * valid requests with 1-3 bits flipped, truncated ones, and valid-CRC frames with bogus headers and payloads.
 * The pipeline's test hook sees every frame it takes; each must be byte-identical to a frame of the chunk that
 * the fuzzer built as well-formed (the valid and the valid-CRC ones): anything else is a bogus accept. Every
 * frame the board sends must decode with a correct CRC. Prints the figures; exit status 1 on any finding.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stub_hal.h"

#define MAX_ITEMS 4
static uint8_t sent[MAX_ITEMS][RRAM_FW_MAX_FRAME];
static size_t sent_len[MAX_ITEMS], n_sent;
static unsigned long long accepted, bogus, board_frames, bad_board_frames;

void fuzz_on_frame(const uint8_t *raw, size_t n);
void fuzz_on_frame(const uint8_t *raw, size_t n) {
    accepted++;
    for (size_t i = 0; i < n_sent; i++)
        if (sent_len[i] == n && memcmp(sent[i], raw, n) == 0) return;
    bogus++;
    if (bogus <= 3) {
        fprintf(stderr, "bogus accept (%zu bytes):", n);
        for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %02x", raw[i]);
        fprintf(stderr, "\n");
    }
}

static uint32_t state = 12345u;
static uint32_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

static const uint8_t opcodes[] = {0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x20, 0x21, 0x22,
                                  0x30, 0x31, 0x32, 0x40, 0x50, 0x60, 0x80, 0x77};
static const uint16_t sizes[] = {7, 2, 0, 0, 22, 12, 12, 6, 10, 17, 36, 6, 6, 42, 0, 8, 0, 3};

/* A request of a random opcode with a plausible payload (the right size, small fields), as its raw frame. */
static size_t valid_raw(uint8_t *raw, uint16_t seq) {
    size_t k = rnd() % sizeof opcodes;
    uint8_t p[64];
    size_t n = sizes[k];
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rnd() % 4 ? rnd() % 8 : rnd());
    if (rnd() % 3 == 0) { /* a request that passes the limits: the board pulses and reads */
        static const uint8_t good[][13] = {
            {0x11, 12, 1, 0, 2, 0, 0xb0, 0x04, 100, 0, 0, 0, 0}, /* SET (1, 2) 1.2 V 100 ns, gate 0 */
            {0x12, 12, 3, 0, 1, 0, 0x18, 0xfc, 100, 0, 0, 0, 0}, /* RESET (3, 1) -1.0 V */
            {0x20, 6, 2, 0, 2, 0, 100, 0, 0, 0, 0, 0, 0},        /* READ (2, 2) 0.1 V */
            {0x21, 10, 0, 0, 0, 0, 2, 0, 3, 0, 100, 0, 0},       /* READ_BLOCK 2x3 */
            {0x01, 7, 2, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0},          /* HELLO */
        };
        const uint8_t *g = good[rnd() % 5];
        k = 0;
        while (opcodes[k] != g[0]) k++;
        n = g[1];
        memcpy(p, g + 2, n);
        if (g[0] == 0x11 || g[0] == 0x12) p[10] = 0xe8, p[11] = 0x03; /* gate 1.0 V */
    }
    if (opcodes[k] == 0x01) p[0] = 2, p[2] &= 1u;
    if (opcodes[k] == 0x40) p[26] = 1, p[27] = 0; /* one entry */
    raw[0] = 0x20, raw[1] = 0, raw[2] = (uint8_t)seq, raw[3] = (uint8_t)(seq >> 8), raw[4] = opcodes[k];
    raw[5] = 0, raw[6] = (uint8_t)n, raw[7] = (uint8_t)(n >> 8);
    memcpy(raw + 8, p, n);
    uint32_t crc = rram_crc32(raw, 8 + n);
    for (int i = 0; i < 4; i++) raw[8 + n + i] = (uint8_t)(crc >> (8 * i));
    return 12 + n;
}

/* A frame with a correct CRC over a random header and payload (type bits may be reserved ones, n random). */
static size_t bogus_raw(uint8_t *raw) {
    size_t n = rnd() % 200;
    for (size_t i = 0; i < 8 + n; i++) raw[i] = (uint8_t)rnd();
    raw[1] &= (uint8_t)(rnd() % 8 ? 0x03 : 0xFF);
    if (rnd() % 2) raw[6] = (uint8_t)n, raw[7] = (uint8_t)(n >> 8);
    if (rnd() % 2) raw[0] = 0x20;
    uint32_t crc = rram_crc32(raw, 8 + n);
    for (int i = 0; i < 4; i++) raw[8 + n + i] = (uint8_t)(crc >> (8 * i));
    return 12 + n;
}

static void check_board_output(stub *s) {
    static uint8_t raw[RRAM_FW_MAX_ENCODED];
    size_t start = 0;
    for (size_t i = 0; i < s->out_len; i++) {
        if (s->out[i]) continue;
        long n = rram_cobs_decode(s->out + start, i - start, raw);
        start = i + 1;
        board_frames++;
        if (n < 12 || (size_t)n != 12u + (raw[6] | (raw[7] << 8)) || rram_crc32(raw, (size_t)n - 4) !=
            ((uint32_t)raw[n - 4] | (uint32_t)raw[n - 3] << 8 | (uint32_t)raw[n - 2] << 16 | (uint32_t)raw[n - 1] << 24))
            bad_board_frames++;
    }
    s->out_len = 0;
}

static stub S;
static rram_fw FW;

int main(int argc, char **argv) {
    unsigned long long target = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000u, items = 0;
    unsigned long long kinds[5] = {0, 0, 0, 0, 0};
    static uint8_t chunk[MAX_ITEMS * (RRAM_FW_MAX_ENCODED + 8)], raw[RRAM_FW_MAX_FRAME];
    uint16_t seq = 1;
    memset(&S, 0, sizeof S);
    rram_hal hal = stub_hal(&S);
    rram_fw_config cfg = stub_config();
    if (rram_fw_init(&FW, &cfg, &hal) != 0) {
        fprintf(stderr, "init: %s\n", rram_fw_error(&FW));
        return 1;
    }
    rram_fw_boot(&FW);
    while (items < target) {
        size_t len = 0, k = 1 + rnd() % MAX_ITEMS;
        n_sent = 0;
        for (size_t j = 0; j < k; j++, items++) {
            unsigned kind = rnd() % 5;
            size_t n;
            kinds[kind]++;
            switch (kind) {
            case 0: /* a valid request */
                n = valid_raw(raw, seq++);
                memcpy(sent[n_sent], raw, n), sent_len[n_sent++] = n;
                len += rram_cobs_encode(raw, n, chunk + len);
                break;
            case 1: /* random bytes */
                n = 1 + rnd() % 300;
                for (size_t i = 0; i < n; i++) chunk[len + i] = (uint8_t)(rnd() | 1u);
                len += n;
                break;
            case 2: /* bit flips of a valid request (a flip may make a 0x00: the run splits, as on a wire) */
                n = valid_raw(raw, seq++);
                {
                    static uint8_t before[RRAM_FW_MAX_ENCODED];
                    size_t e = rram_cobs_encode(raw, n, chunk + len);
                    memcpy(before, chunk + len, e);
                    for (unsigned f = 1 + rnd() % 3; f; f--) chunk[len + rnd() % e] ^= (uint8_t)(1u << (rnd() % 8));
                    if (memcmp(before, chunk + len, e) == 0) /* two flips of one bit: the frame is intact */
                        memcpy(sent[n_sent], raw, n), sent_len[n_sent++] = n, kinds[0]++, kinds[2]--;
                    len += e;
                }
                break;
            case 3: /* truncated */
                n = valid_raw(raw, seq++);
                n = rram_cobs_encode(raw, n, chunk + len);
                len += rnd() % n;
                break;
            default: /* a valid CRC over a bogus header and payload */
                n = bogus_raw(raw);
                memcpy(sent[n_sent], raw, n), sent_len[n_sent++] = n;
                len += rram_cobs_encode(raw, n, chunk + len);
                break;
            }
            chunk[len++] = 0;
        }
        if (rnd() % 50 == 0) S.us += 500000 + rnd() % 2000000; /* the watchdog fires now and then */
        S.us += 1000;
        rram_fw_feed(&FW, chunk, len);
        if (rnd() % 4 == 0) rram_fw_poll(&FW);
        check_board_output(&S);
        if (seq == 0xFFFF) seq = 0;
    }
    printf("fuzz: %llu inputs (%llu valid, %llu random, %llu bit-flipped, %llu truncated, %llu valid-CRC bogus), "
           "%llu frames taken by the pipeline, %llu bogus accepts, %llu board frames, %llu malformed board frames, "
           "%u pulses, 0 crashes\n",
           items, kinds[0], kinds[1], kinds[2], kinds[3], kinds[4], accepted, bogus, board_frames, bad_board_frames,
           S.pulses);
    return bogus != 0 || bad_board_frames != 0;
}
