/* test_core.c - unit tests of the C firmware core with a stub HAL (a tiny runner: CHECK counts failures).
 * cobs, crc, the decoder's NAKs, limits before any pulse, the response cache, the stream window, the
 * write-verify code windows, compliance, ABORT polling, the watchdog, and the reason-text formatter. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/rram_internal.h"
#include "stub_hal.h"

static int failures, checks;
#define CHECK(cond)                                                                                                  \
    do {                                                                                                             \
        checks++;                                                                                                    \
        if (!(cond)) {                                                                                               \
            failures++;                                                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                 \
        }                                                                                                            \
    } while (0)

typedef struct frame {
    uint8_t type, op, status;
    uint16_t seq, n;
    uint8_t payload[RRAM_FW_MAX_PAYLOAD];
} frame;

static frame frames[512];
static size_t n_frames;

/* Decode everything the board sent since the last call into frames[]. */
static void take(stub *s) {
    static uint8_t raw[RRAM_FW_MAX_ENCODED];
    size_t start = 0;
    n_frames = 0;
    for (size_t i = 0; i < s->out_len; i++) {
        if (s->out[i]) continue;
        long n = rram_cobs_decode(s->out + start, i - start, raw);
        start = i + 1;
        if (n < 12 || n_frames == 512) continue;
        frame *f = &frames[n_frames++];
        f->type = raw[1], f->seq = rd16(raw + 2), f->op = raw[4], f->status = raw[5], f->n = rd16(raw + 6);
        memcpy(f->payload, raw + 8, f->n);
    }
    s->out_len = 0;
}

static stub S;
static rram_hal H;
static rram_fw FW;
static uint16_t seq_no = 1;

static void boot(void) {
    memset(&S, 0, sizeof S);
    H = stub_hal(&S);
    rram_fw_config cfg = stub_config();
    CHECK(rram_fw_init(&FW, &cfg, &H) == 0);
    rram_fw_boot(&FW);
    take(&S);
}

/* Send one request; returns the response frame (the last RESPONSE among what came back). */
static const frame *request(uint8_t op, const uint8_t *p, size_t n) {
    static uint8_t wire[RRAM_FW_MAX_ENCODED];
    size_t len = make_frame(wire, 0x20, 0, seq_no++, op, p, n);
    rram_fw_feed(&FW, wire, len);
    take(&S);
    for (size_t i = n_frames; i-- > 0;)
        if (frames[i].type == RRAM_RESPONSE) return &frames[i];
    return NULL;
}

static void hello(void) {
    uint8_t p[7] = {2, 0, 0, 1, 2, 3, 4};
    const frame *f = request(RRAM_OP_HELLO, p, 7);
    CHECK(f && f->status == RRAM_OK && f->n == 93);
}

static size_t pulse_req(uint8_t *p, uint16_t row, uint16_t col, int16_t v, uint32_t w, uint16_t gate) {
    wr16(p, row), wr16(p + 2, col), wr16(p + 4, (uint16_t)v), wr32(p + 6, w), wr16(p + 10, gate);
    return 12;
}

static void form_cell(uint16_t row, uint16_t col, uint32_t g_formed_ns) {
    uint8_t p[22];
    wr16(p, row), wr16(p + 2, col), wr16(p + 4, 2000), wr16(p + 6, 4000), wr16(p + 8, 500), wr32(p + 10, 1000);
    wr16(p + 14, 1000), wr16(p + 16, 100), wr32(p + 18, g_formed_ns);
    const frame *f = request(RRAM_OP_FORM, p, 22);
    CHECK(f && f->status == RRAM_OK && f->payload[8] == 1);
}

static void test_crc_and_cobs(void) {
    const uint8_t check[] = "123456789";
    uint8_t enc[600], dec[600], data[512];
    CHECK(rram_crc32(check, 9) == 0xCBF43926u);
    const uint8_t a[] = {0x11, 0x22, 0x00, 0x33}, ea[] = {0x03, 0x11, 0x22, 0x02, 0x33};
    CHECK(rram_cobs_encode(a, 4, enc) == 5 && memcmp(enc, ea, 5) == 0);
    const uint8_t z[] = {0x00}, ez[] = {0x01, 0x01};
    CHECK(rram_cobs_encode(z, 1, enc) == 2 && memcmp(enc, ez, 2) == 0);
    for (int i = 0; i < 254; i++) data[i] = (uint8_t)(i + 1);
    CHECK(rram_cobs_encode(data, 254, enc) == 256 && enc[0] == 0xFF && enc[255] == 0x01);
    CHECK(rram_cobs_decode(enc, 255, dec) == 254); /* the form without the final empty block decodes too */
    srand(1);
    for (int t = 0; t < 2000; t++) {
        size_t n = (size_t)(rand() % 512);
        for (size_t i = 0; i < n; i++) data[i] = (uint8_t)(rand() % 4 ? rand() : 0);
        size_t e = rram_cobs_encode(data, n, enc);
        CHECK(memchr(enc, 0, e) == NULL && e <= n + n / 254 + 1);
        CHECK(rram_cobs_decode(enc, e, dec) == (long)n && memcmp(dec, data, n) == 0);
    }
    const uint8_t past[] = {0x05, 0x01, 0x02};
    CHECK(rram_cobs_decode(past, 3, dec) == -2 && rram_cobs_decode(past, 0, dec) == -1);
}

static void test_text_formatter(void) {
    char a[64], b[64];
    rram_text t;
    srand(2);
    for (int k = 0; k < 100000; k++) {
        uint64_t num = ((uint64_t)rand() << 31 | (uint64_t)rand()) % (k % 3 ? 100000000000ull : 1000000ull);
        if (k % 7 == 0) num = (uint64_t)(rand() % 100000) * 10 + 5; /* ties at the 6th digit */
        unsigned scale = (unsigned)(k % 10);
        double p10 = 1.0;
        for (unsigned i = 0; i < scale; i++) p10 *= 10.0;
        txt_init(&t, a, sizeof a - 1);
        txt_g6(&t, num, scale);
        a[t.len] = 0;
        snprintf(b, sizeof b, "%.6g", (double)num / p10);
        if (strcmp(a, b) != 0) fprintf(stderr, "g6 %llu/10^%u: %s vs %s\n", (unsigned long long)num, scale, a, b);
        CHECK(strcmp(a, b) == 0);
    }
    for (int mv = -5000; mv <= 5000; mv += 7) {
        txt_init(&t, a, sizeof a - 1);
        txt_volts(&t, mv);
        a[t.len] = 0;
        snprintf(b, sizeof b, "%.3f", mv / 1000.0);
        CHECK(strcmp(a, b) == 0);
    }
}

static void test_golden_bytes_and_handshake(void) {
    static uint8_t wire[256];
    boot();
    uint8_t p[12];
    const frame *f = request(RRAM_OP_READ, (const uint8_t *)"\0\0\0\0\x64\0", 6);
    CHECK(f && f->status == RRAM_HANDSHAKE_REQUIRED && S.reads == 0);
    /* PROTOCOL.md 12.5: the NAK of a HELLO with a corrupted CRC */
    uint8_t h[7] = {1, 0, 0, 0, 0, 0, 0};
    size_t n = make_frame(wire, 0x20, 0, 1, RRAM_OP_HELLO, h, 7);
    wire[n - 2] ^= 0x10;
    rram_fw_feed(&FW, wire, n);
    static const uint8_t nak[] = {0x05, 0x20, 0x03, 0xff, 0xff, 0x03, 0x01, 0x0c, 0x11, 0x43, 0x52, 0x43, 0x20,
                                  0x6d, 0x69, 0x73, 0x6d, 0x61, 0x74, 0x63, 0x68, 0xcb, 0x29, 0xeb, 0x58, 0x00};
    CHECK(S.out_len == sizeof nak && memcmp(S.out, nak, sizeof nak) == 0);
    take(&S);
    hello();
    /* PROTOCOL.md 12.6: a 3.5 V SET is refused before any pulse, in the documented words */
    seq_no = 0x0103;
    f = request(RRAM_OP_SET, p, pulse_req(p, 0, 0, 3500, 100, 1000));
    CHECK(f && f->status == RRAM_OUT_OF_RANGE && S.pulses == 0);
    CHECK(f && f->n == 65 && memcmp(f->payload, "SET voltage 3.500 V is outside the board's range [0.000, 3.000] V", 65) == 0);
}

static void test_cache_never_pulses_twice(void) {
    static uint8_t wire[256], first[256];
    uint8_t p[12];
    boot();
    hello();
    size_t n = make_frame(wire, 0x20, 0, 77, RRAM_OP_SET, p, pulse_req(p, 1, 1, 1200, 100, 1000));
    rram_fw_feed(&FW, wire, n);
    size_t len = S.out_len;
    memcpy(first, S.out, len);
    S.out_len = 0;
    for (int i = 0; i < 3; i++) {
        rram_fw_feed(&FW, wire, n);
        CHECK(S.out_len == len && memcmp(S.out, first, len) == 0);
        S.out_len = 0;
    }
    CHECK(S.set_pulses == 1 && rram_fw_counters_of(&FW)->set == 1);
    /* seq 0xFFFF: answered BAD_ARGUMENT, never executed */
    n = make_frame(wire, 0x20, 0, 0xFFFF, RRAM_OP_SET, p, 12);
    rram_fw_feed(&FW, wire, n);
    take(&S);
    CHECK(n_frames == 1 && frames[0].status == RRAM_BAD_ARGUMENT && S.set_pulses == 1);
}

static void test_compliance_and_form(void) {
    uint8_t p[12];
    boot();
    hello();
    form_cell(0, 0, 5000);
    CHECK(S.form_pulses == 3 && rram_fw_counters_of(&FW)->form == 3); /* 2.0, 2.5, 3.0 V */
    S.force_compliance = 1;
    const frame *f = request(RRAM_OP_SET, p, pulse_req(p, 0, 0, 1200, 100, 1000));
    CHECK(f && f->status == RRAM_COMPLIANCE_HIT && f->n == 42 &&
          memcmp(f->payload, "SET current 512.3 uA hit the board's limit", 42) == 0);
    CHECK(S.dac[0] == 0 && S.gate == 0); /* outputs grounded */
}

static size_t wv_req(uint8_t *p, uint16_t n, const uint16_t *rc, float target, float tol, uint16_t max_p) {
    memset(p, 0, 28);
    wr16(p, 100), wr32(p + 2, 100), wr16(p + 6, 1200), wr16(p + 8, 1200), wr16(p + 12, 700), wr16(p + 14, 1300);
    wr16(p + 16, 10), wr16(p + 18, (uint16_t)-700), wr16(p + 20, (uint16_t)-1500), wr16(p + 22, (uint16_t)-10);
    wr16(p + 24, 3300), wr16(p + 26, n);
    for (uint16_t i = 0; i < n; i++) {
        uint8_t *e = p + 28 + 14 * i;
        uint32_t tb, lb;
        memcpy(&tb, &target, 4);
        memcpy(&lb, &tol, 4);
        wr16(e, rc[2 * i]), wr16(e + 2, rc[2 * i + 1]), wr32(e + 4, tb), wr32(e + 8, lb), wr16(e + 12, max_p);
    }
    return 28 + 14 * (size_t)n;
}

static void test_write_verify(void) {
    static uint8_t p[2048];
    boot();
    hello();
    form_cell(0, 0, 5000);
    form_cell(0, 1, 0); /* "formed" by its threshold of 0 S, but the stub never moves it: STUCK */
    const uint16_t rc[] = {0, 0, 0, 1, 5, 5};
    /* formed at level 4; level 6 = code 8048: G = 6000 * 1.25e-10 / 0.1 = 7.5e-6 S, two SETs away */
    const frame *f = request(RRAM_OP_WRITE_VERIFY, p, wv_req(p, 3, rc, 7.5e-6f, 0.5e-6f, 8));
    CHECK(f && f->status == RRAM_OK && f->n == 10 + 27);
    if (f) {
        const uint8_t *r = f->payload + 10;
        CHECK(r[8] == RRAM_WV_CONVERGED && rd16(r + 6) == 2 && rd16(r + 4) == 8048);
        CHECK(r[9 + 8] == RRAM_WV_STUCK && rd16(r + 9 + 6) == 8);
        CHECK(r[18 + 8] == RRAM_WV_NOT_FORMED && rd16(r + 18 + 6) == 0);
    }
    /* an ABORT already waiting is heard before the first pulse: ABORTED with the result, then the AbortReply */
    static uint8_t abort_wire[64];
    S.in_len = make_frame(abort_wire, 0x20, 0, 999, RRAM_OP_ABORT, NULL, 0);
    S.in = abort_wire;
    f = request(RRAM_OP_WRITE_VERIFY, p, wv_req(p, 1, rc, 20e-6f, 0.1e-6f, 50));
    CHECK(n_frames == 2 && frames[0].status == RRAM_ABORTED && frames[1].op == RRAM_OP_ABORT);
    CHECK(rd16(frames[0].payload + 10 + 6) == 0 && frames[0].payload[10 + 8] == RRAM_WV_ABORTED);
    /* the code windows decide as the float64 predicate does, for every code */
    srand(3);
    for (int k = 0; k < 200; k++) {
        int16_t v = (int16_t)(1 + rand() % 300);
        double target = (float)(1e-7 + (rand() / (double)RAND_MAX) * 4e-5);
        double tol = (float)(1e-9 + (rand() / (double)RAND_MAX) * 2e-6);
        uint32_t lo, hi, up;
        rram_wv_window(&FW, v, target, tol, &lo, &hi, &up);
        for (uint32_t c = 0; c <= 65535; c += (k < 4 ? 1 : 97)) {
            double g = fw_g_of_code(&FW, (uint16_t)c, v);
            CHECK((fabs(g - target) <= tol) == (c >= lo && c <= hi));
            CHECK((g < target) == (c < up));
        }
    }
}

static void test_stream_window(void) {
    uint8_t p[36];
    boot();
    hello();
    for (uint16_t r = 0; r < 2; r++)
        for (uint16_t c = 0; c < 2; c++) form_cell(r, c, 5000);
    unsigned set0 = S.set_pulses;
    memset(p, 0, 36);
    wr16(p + 4, 2), wr16(p + 6, 2), wr32(p + 8, 10), wr32(p + 12, 1), wr16(p + 16, 1200), wr32(p + 18, 100);
    wr16(p + 22, 1200), wr16(p + 24, (uint16_t)-1500), wr32(p + 26, 100), wr16(p + 30, 3300), wr16(p + 32, 100);
    const frame *f = request(RRAM_OP_ENDURANCE, p, 36);
    CHECK(f && f->status == RRAM_OK && rd32(f->payload + 2) == 10);
    size_t events = 0;
    for (size_t i = 0; i < n_frames; i++) events += frames[i].op == RRAM_EV_ENDURANCE_DATA;
    CHECK(events == 4 && S.set_pulses - set0 == 16); /* window 4: one group of 4 read points, then it waits */
    rram_fw_poll(&FW);
    take(&S);
    CHECK(n_frames == 0 && S.set_pulses - set0 == 16);
    uint16_t sid = rd16(f->payload);
    uint8_t ack[6];
    uint32_t acked = 0;
    for (int guard = 0; guard < 20 && acked <= 10; guard++) {
        acked = acked + 4 > 11 ? 11 : acked + 4;
        wr16(ack, sid), wr32(ack + 2, acked);
        f = request(RRAM_OP_STREAM_ACK, ack, 6);
        CHECK(f && f->status == RRAM_OK);
    }
    CHECK(S.set_pulses - set0 == 40 && rram_fw_state(&FW) == RRAM_STATE_IDLE);
    wr16(ack, sid), wr32(ack + 2, 0);
    f = request(RRAM_OP_STREAM_RESEND, ack, 6);
    CHECK(f && f->status == RRAM_BAD_ARGUMENT);
}

static void test_watchdog(void) {
    boot();
    hello();
    S.us += 1999999;
    rram_fw_poll(&FW);
    take(&S);
    CHECK(n_frames == 0);
    S.us += 1;
    rram_fw_poll(&FW);
    take(&S);
    CHECK(n_frames == 1 && frames[0].op == RRAM_EV_WATCHDOG && rram_fw_state(&FW) == RRAM_STATE_SAFE_IDLE);
    uint8_t hb[2] = {0, 0};
    const frame *f = request(RRAM_OP_HEARTBEAT, hb, 2);
    CHECK(f && f->payload[12] == RRAM_STATE_SAFE_IDLE && rram_fw_state(&FW) == RRAM_STATE_IDLE);
}

int main(void) {
    test_crc_and_cobs();
    test_text_formatter();
    test_golden_bytes_and_handshake();
    test_cache_never_pulses_twice();
    test_compliance_and_form();
    test_write_verify();
    test_stream_window();
    test_watchdog();
    printf("test_core: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
