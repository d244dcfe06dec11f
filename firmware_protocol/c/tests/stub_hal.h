/* stub_hal.h - a stub board for the C unit tests and the fuzz driver: counts every HAL call, models each
 * cell as an integer level (SET +1, RESET -1, FORM forms at >= 3 V), reads code = 2048 + 1000 * level. */
#ifndef STUB_HAL_H
#define STUB_HAL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rram_fw.h"

#define STUB_CELLS 64
#define STUB_OUT (1u << 20)

typedef struct stub {
    int16_t dac[2];
    uint16_t gate, row, col;
    int level[STUB_CELLS];
    uint8_t formed[STUB_CELLS];
    unsigned pulses, form_pulses, set_pulses, reset_pulses, sweep_pulses, reads;
    int force_compliance, deaf;
    uint64_t us;
    uint32_t rng;
    const uint8_t *in;
    size_t in_len;
    uint8_t out[STUB_OUT];
    size_t out_len;
} stub;

static stub *stub_of(void *ctx) { return (stub *)ctx; }
static void st_dac(void *ctx, uint8_t ch, int16_t mv) { stub_of(ctx)->dac[ch & 1] = mv; }
static void st_gate(void *ctx, uint16_t mv) { stub_of(ctx)->gate = mv; }
static void st_select(void *ctx, uint16_t r, uint16_t c) {
    stub_of(ctx)->row = r;
    stub_of(ctx)->col = c;
}
static int *st_level(stub *s) { return &s->level[(s->row * 8 + s->col) % STUB_CELLS]; }
static uint16_t st_pulse(void *ctx, uint8_t kind, uint32_t width, uint8_t *hit, uint32_t *peak) {
    stub *s = stub_of(ctx);
    int k = (s->row * 8 + s->col) % STUB_CELLS;
    (void)width;
    s->pulses++;
    s->us += 1;
    if (kind == RRAM_PULSE_FORM) {
        s->form_pulses++;
        if (s->dac[RRAM_DAC_PULSE] >= 3000 && !s->formed[k]) s->formed[k] = 1, s->level[k] = 4;
    } else if (kind == RRAM_PULSE_SET) {
        s->set_pulses++;
        if (s->formed[k] && *st_level(s) < 60) ++*st_level(s);
    } else if (kind == RRAM_PULSE_RESET) {
        s->reset_pulses++;
        if (s->formed[k] && *st_level(s) > 0) --*st_level(s);
    } else {
        s->sweep_pulses++;
    }
    if (s->force_compliance) {
        *hit = 1;
        *peak = 5123; /* 512.3 uA */
    }
    return (uint16_t)(2048 + s->dac[RRAM_DAC_PULSE] / 2);
}
static uint16_t st_adc(void *ctx, uint8_t *sat) {
    stub *s = stub_of(ctx);
    s->reads++;
    s->us += 1;
    *sat = 0;
    return (uint16_t)(2048 + 1000 * *st_level(s));
}
static uint64_t st_clock(void *ctx) { return stub_of(ctx)->us; }
static long st_read(void *ctx, uint8_t *buf, size_t max) {
    stub *s = stub_of(ctx);
    size_t n = s->in_len < max ? s->in_len : max;
    if (s->deaf) return -1;
    if (n) memcpy(buf, s->in, n);
    s->in += n;
    s->in_len -= n;
    return (long)n;
}
static void st_write(void *ctx, const uint8_t *buf, size_t n) {
    stub *s = stub_of(ctx);
    if (s->out_len + n > STUB_OUT) s->out_len = 0; /* the tests look at recent output only */
    memcpy(s->out + s->out_len, buf, n);
    s->out_len += n;
}
static uint32_t st_random(void *ctx) {
    stub *s = stub_of(ctx);
    s->rng = s->rng * 1664525u + 1013904223u;
    return s->rng | 1u;
}

static inline rram_hal stub_hal(stub *s) {
    rram_hal h;
    memset(&h, 0, sizeof h);
    h.ctx = s;
    h.set_dac_mv = st_dac;
    h.set_gate_mv = st_gate;
    h.select_cell = st_select;
    h.pulse = st_pulse;
    h.adc_read = st_adc;
    h.clock_us = st_clock;
    h.uart_read = st_read;
    h.uart_write = st_write;
    h.random_u32 = st_random;
    return h;
}

/* An 8x8 board with the simulated board's limits and calibration. */
static inline rram_fw_config stub_config(void) {
    rram_fw_config c;
    memset(&c, 0, sizeof c);
    memcpy(c.board_id, "STUB", 4);
    c.fw_major = 1;
    c.capabilities = RRAM_CAP_WRITE_VERIFY | RRAM_CAP_STREAMING | RRAM_CAP_IV_SWEEP;
    c.rows = c.cols = 8;
    c.dac_bits = 12;
    c.adc_bits = 16;
    c.set_v_min_mv = 0, c.set_v_max_mv = 3000, c.reset_v_min_mv = -3000, c.reset_v_max_mv = 0;
    c.form_v_min_mv = 0, c.form_v_max_mv = 5000, c.read_v_min_mv = 0, c.read_v_max_mv = 300;
    c.gate_v_min_mv = 0, c.gate_v_max_mv = 3300;
    c.width_min_ns = 10, c.width_max_ns = 1000000, c.width_step_ns = 10, c.max_compliance_na = 500000;
    c.max_payload = RRAM_FW_MAX_PAYLOAD < 8192 ? RRAM_FW_MAX_PAYLOAD : 8192;
    c.watchdog_ms = 2000;
    c.stream_window = 4;
    c.max_wv_batch = 512;
    c.op_overhead_ns = 10000, c.max_request_ms = 60000, c.max_hold_ns = 10000000;
    c.response_cache = 16;
    c.read_ns = 10000, c.pulse_overhead_ns = 1000;
    c.read_max_code = 65535;
    c.read_amps_per_code = 1.25e-10, c.read_offset_code = 2048.0;
    c.pulse_amps_per_code = 3.0517578125e-7, c.pulse_offset_code = 2048.0;
    return c;
}

/* Build one request frame's wire bytes (COBS + 0x00) into dst; returns the length. */
static inline size_t make_frame(uint8_t *dst, uint8_t version, uint8_t type, uint16_t seq, uint8_t op, const uint8_t *p,
                         size_t n) {
    static uint8_t raw[RRAM_FW_MAX_FRAME];
    raw[0] = version, raw[1] = type, raw[2] = (uint8_t)seq, raw[3] = (uint8_t)(seq >> 8);
    raw[4] = op, raw[5] = 0, raw[6] = (uint8_t)n, raw[7] = (uint8_t)(n >> 8);
    if (n) memcpy(raw + 8, p, n);
    uint32_t crc = rram_crc32(raw, 8 + n);
    for (int i = 0; i < 4; i++) raw[8 + n + i] = (uint8_t)(crc >> (8 * i));
    size_t len = rram_cobs_encode(raw, 12 + n, dst);
    dst[len++] = 0;
    return len;
}

#endif
