/* rram_internal.h - helpers shared by the core's modules (not part of the port's API). */
#ifndef RRAM_INTERNAL_H
#define RRAM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "rram_fw.h"

/* Little-endian field access (the wire's byte order, whatever the MCU's). */
static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline int16_t rdi16(const uint8_t *p) { return (int16_t)rd16(p); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }
static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void wr32(uint8_t *p, uint32_t v) {
    wr16(p, (uint16_t)v);
    wr16(p + 2, (uint16_t)(v >> 16));
}
static inline void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}
/* f32 on the wire from a float64 value (round to nearest, as struct.pack('<f')). */
void wrf32(uint8_t *p, double v);

uint32_t rram_crc32_update(uint32_t crc, const uint8_t *p, size_t n);

/* ------------------------------------------------------------------ reason texts */
/* A bounded text builder: appends never overflow (the text is cut at cap, as the wire limits cut it). */
typedef struct rram_text {
    char *buf;
    size_t len, cap;
} rram_text;

void txt_init(rram_text *t, char *buf, size_t cap);
void txt_s(rram_text *t, const char *s);
void txt_u(rram_text *t, uint64_t v);
void txt_i(rram_text *t, int64_t v);
void txt_hex2(rram_text *t, unsigned v);
void txt_hex4(rram_text *t, unsigned v);
/* Millivolts as volts with 3 decimals ("%.3f" of mv / 1000; exact for integers). */
void txt_volts(rram_text *t, int32_t mv);
/* "%.6g" of num / 10^scale (num an integer count of 10^-scale units), as Python formats the float. */
void txt_g6(rram_text *t, uint64_t num, unsigned scale);

/* ------------------------------------------------------------------ limits (rram_limits.c) */
/* The payload size an opcode needs (fixed part; WRITE_VERIFY adds its entries): 0 on success, else
 * RRAM_BAD_LENGTH with the reason text. */
int rram_check_length(uint8_t opcode, const uint8_t *payload, size_t n, rram_text *why);
/* PROTOCOL.md 7.2, 7.5, 3.8 then 7.4 in that order: RRAM_OK, RRAM_OUT_OF_RANGE or RRAM_BAD_ARGUMENT, the
 * first failure's text in why. clock_ns is the board clock now. */
int rram_check_limits(const rram_fw_config *cfg, uint8_t opcode, const uint8_t *p, size_t n, int64_t clock_ns,
                      rram_text *why);
/* The effective write-verify batch limit min(max_wv_batch, max_wv_entries(max_payload)). */
uint32_t rram_wv_batch_limit(const rram_fw_config *cfg);
uint32_t rram_max_block_cells(uint32_t max_payload);
uint32_t rram_max_event_cells(uint32_t max_payload);
/* Width of one I-V point (mode 0: the pulse width; mode 1: the hold, never below width_min_ns). */
uint32_t rram_iv_point_ns(const rram_fw_config *cfg, uint32_t width_ns, uint8_t mode);

/* ------------------------------------------------------------------ engine internals (rram_fw.c) */
int64_t fw_now_ns(rram_fw *fw);
uint64_t fw_now_us(rram_fw *fw);
/* Encode frame (type, seq, opcode, status, payload) into dst (COBS + delimiter); returns the wire length. */
size_t fw_encode(uint8_t *dst, uint8_t type, uint16_t seq, uint8_t opcode, uint8_t status, const uint8_t *payload,
                 size_t n);
/* Emit an event frame (next event seq) built from payload; returns its wire bytes (in fw->wire, or dst). */
size_t fw_emit_event(rram_fw *fw, uint8_t opcode, const uint8_t *payload, size_t n, uint8_t *dst);
/* Between two pulses of a long request (3.7): hear the host, feed the watchdog, say whether to go on. */
int fw_keep_going(rram_fw *fw);
/* An ABORT request is waiting in the input queue. */
int fw_abort_queued(const rram_fw *fw);
int fw_is_formed(rram_fw *fw, uint16_t row, uint16_t col);
void fw_ground(rram_fw *fw);
void fw_count(uint64_t *counter, uint64_t n);
/* Read the selected cell at v_read_mv: code; counts the read. */
uint16_t fw_read_cell(rram_fw *fw, uint16_t row, uint16_t col, int16_t v_read_mv, uint8_t *saturated);
/* Conductance (S) of a read-range code at v_read_mv with the nominal calibration, in float64 as the Python. */
double fw_g_of_code(const rram_fw *fw, uint16_t code, int16_t v_read_mv);

/* WRITE_VERIFY's code windows for one entry: |G(c) - target| <= tol  <=>  lo <= c <= hi, G(c) < target <=>
 * c < up_code (rram_wv.c; exposed for the unit tests). */
void rram_wv_window(const rram_fw *fw, int16_t v_read, double target, double tol, uint32_t *lo, uint32_t *hi,
                    uint32_t *up_code);

/* Handlers in their own files. Each writes its response payload to out (returns its length) and sets *status;
 * a non-OK status with a text writes the text instead. */
size_t rram_write_verify(rram_fw *fw, const uint8_t *p, size_t n, uint8_t *out, uint8_t *status);
size_t rram_endurance(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status);
size_t rram_stream_ack(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status);
size_t rram_stream_resend(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status);
void rram_stream_end(rram_fw *fw, uint8_t reason, int numbered);
void rram_stream_pump(rram_fw *fw);

#endif /* RRAM_INTERNAL_H */
