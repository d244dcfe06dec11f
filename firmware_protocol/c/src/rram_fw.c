/* rram_fw.c - the request pipeline of PROTOCOL.md 3.9: decoder, NAKs, sessions, response cache, watchdog,
 * and the handlers of the short requests (the long ones live in rram_wv.c and rram_stream.c).
 *
 * Mirrors sim_backend/firmware.py (FirmwareEngine) step for step, so that the same bytes in give the same
 * bytes out; the comments name the Python method each function follows.
 */
#include <string.h>

#include "rram_internal.h"

enum { Q_FRAME = 1, Q_EARLY = 2, Q_ERROR = 3 }; /* queued items: a request, one heard during a request, a NAK */
#define Q_HDR 4u                                /* kind, status, length (u16) */
#define TEXT_MAX 200u                           /* reason texts of responses */
#define NAK_MAX 120u                            /* reason texts of NAKs */

static const char *const FW_NAME = "rram-fw";

/* ------------------------------------------------------------------ small helpers */
size_t rram_fw_sizeof(void) { return sizeof(rram_fw); }
const char *rram_fw_error(const rram_fw *fw) { return fw->error; }
uint32_t rram_fw_session_id(const rram_fw *fw) { return fw->session_id; }
uint8_t rram_fw_state(const rram_fw *fw) { return fw->state; }
uint16_t rram_fw_watchdog_ms(const rram_fw *fw) { return fw->watchdog_ms; }
rram_fw_counters *rram_fw_counters_of(rram_fw *fw) { return &fw->counters; }
uint16_t rram_fw_stream_ids(const rram_fw *fw) { return fw->stream_ids; }
void rram_fw_set_stream_ids(rram_fw *fw, uint16_t ids) { fw->stream_ids = ids; }

void fw_count(uint64_t *counter, uint64_t n) { *counter = (*counter > UINT64_MAX - n) ? UINT64_MAX : *counter + n; }

int64_t fw_now_ns(rram_fw *fw) {
    if (fw->hal->now_ns) return fw->hal->now_ns(fw->hal->ctx);
    return (int64_t)(fw->hal->clock_us(fw->hal->ctx) * 1000u);
}

uint64_t fw_now_us(rram_fw *fw) { return ((uint64_t)fw_now_ns(fw) + 500u) / 1000u; }

static uint64_t wall_us(rram_fw *fw) { return fw->hal->clock_us(fw->hal->ctx); }

void fw_ground(rram_fw *fw) {
    fw->hal->set_dac_mv(fw->hal->ctx, RRAM_DAC_PULSE, 0);
    fw->hal->set_dac_mv(fw->hal->ctx, RRAM_DAC_READ, 0);
    fw->hal->set_gate_mv(fw->hal->ctx, 0);
}

int fw_is_formed(rram_fw *fw, uint16_t row, uint16_t col) {
    if (fw->hal->is_formed) return fw->hal->is_formed(fw->hal->ctx, row, col);
    uint32_t k = (uint32_t)row * fw->cfg.cols + col;
    return (fw->formed[k >> 3] >> (k & 7u)) & 1u;
}

static void mark_formed(rram_fw *fw, uint16_t row, uint16_t col) {
    uint32_t k = (uint32_t)row * fw->cfg.cols + col;
    fw->formed[k >> 3] = (uint8_t)(fw->formed[k >> 3] | (1u << (k & 7u)));
}

double fw_g_of_code(const rram_fw *fw, uint16_t code, int16_t v_read_mv) {
    double v = (double)v_read_mv / 1000.0;
    return ((double)code - fw->cfg.read_offset_code) * fw->cfg.read_amps_per_code / v;
}

uint16_t fw_read_cell(rram_fw *fw, uint16_t row, uint16_t col, int16_t v_read_mv, uint8_t *saturated) {
    const rram_hal *h = fw->hal;
    uint8_t sat = 0;
    h->select_cell(h->ctx, row, col);
    h->set_dac_mv(h->ctx, RRAM_DAC_READ, v_read_mv);
    uint16_t code = h->adc_read(h->ctx, &sat);
    fw_count(&fw->counters.reads, 1);
    if (saturated) *saturated = sat;
    return code;
}

/* ------------------------------------------------------------------ frame encoding */
typedef struct cobs_enc {
    uint8_t *dst;
    size_t out, code_pos;
    uint8_t code;
} cobs_enc;

static void enc_put(cobs_enc *e, uint8_t b) {
    if (b == 0) {
        e->dst[e->code_pos] = e->code;
        e->code_pos = e->out++;
        e->code = 1;
    } else {
        e->dst[e->out++] = b;
        if (++e->code == 0xFF) {
            e->dst[e->code_pos] = e->code;
            e->code_pos = e->out++;
            e->code = 1;
        }
    }
}

size_t fw_encode(uint8_t *dst, uint8_t type, uint16_t seq, uint8_t opcode, uint8_t status, const uint8_t *payload,
                 size_t n) {
    uint8_t hdr[RRAM_FW_HEADER], crc_b[4];
    cobs_enc e = {dst, 1, 0, 1};
    hdr[0] = (RRAM_PROTO_MAJOR << 4) | RRAM_PROTO_MINOR;
    hdr[1] = type;
    wr16(hdr + 2, seq);
    hdr[4] = opcode;
    hdr[5] = status;
    wr16(hdr + 6, (uint16_t)n);
    uint32_t crc = rram_crc32_update(0xFFFFFFFFu, hdr, sizeof hdr);
    crc = rram_crc32_update(crc, payload, n) ^ 0xFFFFFFFFu;
    wr32(crc_b, crc);
    for (size_t i = 0; i < sizeof hdr; i++) enc_put(&e, hdr[i]);
    for (size_t i = 0; i < n; i++) enc_put(&e, payload[i]);
    for (size_t i = 0; i < 4; i++) enc_put(&e, crc_b[i]);
    dst[e.code_pos] = e.code;
    dst[e.out++] = 0;
    return e.out;
}

static void send(rram_fw *fw, const uint8_t *wire, size_t n) { fw->hal->uart_write(fw->hal->ctx, wire, n); }

size_t fw_emit_event(rram_fw *fw, uint8_t opcode, const uint8_t *payload, size_t n, uint8_t *dst) {
    uint8_t *out = dst ? dst : fw->wire;
    size_t len = fw_encode(out, RRAM_EVENT, fw->event_seq, opcode, 0, payload, n);
    fw->event_seq = (uint16_t)(fw->event_seq + 1u);
    send(fw, out, len);
    return len;
}

static void send_text(rram_fw *fw, uint8_t type, uint16_t seq, uint8_t opcode, uint8_t status, const rram_text *t) {
    size_t len = fw_encode(fw->wire, type, seq, opcode, status, (const uint8_t *)t->buf, t->len);
    send(fw, fw->wire, len);
}

/* ------------------------------------------------------------------ the input queue */
static int q_push(rram_fw *fw, uint8_t kind, uint8_t status, const uint8_t *data, size_t n) {
    if (fw->q_head == fw->q_tail) fw->q_head = fw->q_tail = 0;
    if (fw->q_tail + Q_HDR + n > sizeof fw->queue && fw->q_head) { /* compact */
        memmove(fw->queue, fw->queue + fw->q_head, fw->q_tail - fw->q_head);
        fw->q_tail -= fw->q_head;
        fw->q_head = 0;
    }
    if (fw->q_tail + Q_HDR + n > sizeof fw->queue) return -1;
    uint8_t *p = fw->queue + fw->q_tail;
    p[0] = kind;
    p[1] = status;
    wr16(p + 2, (uint16_t)n);
    memcpy(p + Q_HDR, data, n);
    fw->q_tail += Q_HDR + n;
    return 0;
}

/* An item that does not fit is answered with a NAK if even that fits, else dropped (README: input queue). */
static void q_push_or_nak(rram_fw *fw, uint8_t kind, uint8_t status, const uint8_t *data, size_t n) {
    static const char full[] = "board input queue full: frame dropped";
    if (q_push(fw, kind, status, data, n) == 0) return;
    (void)q_push(fw, Q_ERROR, RRAM_BAD_LENGTH, (const uint8_t *)full, sizeof full - 1);
}

int fw_abort_queued(const rram_fw *fw) {
    size_t i = fw->q_head;
    while (i < fw->q_tail) {
        const uint8_t *p = fw->queue + i;
        size_t n = rd16(p + 2);
        if ((p[0] == Q_FRAME || p[0] == Q_EARLY) && p[Q_HDR + 4] == RRAM_OP_ABORT) return 1;
        i += Q_HDR + n;
    }
    return 0;
}

/* ------------------------------------------------------------------ decoder (FrameDecoder + Frame.decode) */
static void feed_watchdog(rram_fw *fw);

/* One run between delimiters: a request to queue, a bad frame (NAK) to queue, or nothing. */
static void finish_run(rram_fw *fw, int early) {
    char tb[NAK_MAX + 8];
    rram_text t;
    txt_init(&t, tb, NAK_MAX);
    uint8_t status = RRAM_BAD_LENGTH;
    if (fw->discarding) {
        fw->discarding = 0;
        txt_s(&t, "frame longer than ");
        txt_u(&t, RRAM_FW_MAX_ENCODED);
        txt_s(&t, " bytes without a delimiter");
        q_push_or_nak(fw, Q_ERROR, status, (const uint8_t *)t.buf, t.len);
        return;
    }
    if (fw->rx_len == 0) return; /* back-to-back delimiters flush the link */
    long len = rram_cobs_decode(fw->rx, fw->rx_len, fw->dec);
    fw->rx_len = 0;
    if (len < 0) {
        if (len == -1) {
            txt_s(&t, "zero byte inside COBS frame");
        } else {
            txt_s(&t, "COBS block at offset ");
            txt_u(&t, (uint64_t)(-(len + 2)));
            txt_s(&t, " runs past the end of the frame");
        }
    } else if (len < RRAM_FW_HEADER + RRAM_FW_CRC) {
        txt_s(&t, "frame of ");
        txt_u(&t, (uint64_t)len);
        txt_s(&t, " bytes is shorter than a header and CRC-32");
    } else {
        const uint8_t *f = fw->dec;
        uint32_t n = rd16(f + 6);
        if (n > RRAM_FW_MAX_PAYLOAD) {
            txt_s(&t, "declared payload ");
            txt_u(&t, n);
            txt_s(&t, " exceeds the maximum of ");
            txt_u(&t, RRAM_FW_MAX_PAYLOAD);
        } else if ((uint32_t)len != RRAM_FW_HEADER + n + RRAM_FW_CRC) {
            txt_s(&t, "frame length ");
            txt_u(&t, (uint64_t)len);
            txt_s(&t, " does not match declared payload ");
            txt_u(&t, n);
            txt_s(&t, " + header + CRC-32");
            if ((uint32_t)len == RRAM_FW_HEADER + n + 2) txt_s(&t, " (a protocol 1.x frame with a CRC-16?)");
        } else if (rd32(f + RRAM_FW_HEADER + n) != rram_crc32(f, RRAM_FW_HEADER + n)) {
            status = RRAM_BAD_CRC;
            txt_s(&t, "CRC mismatch");
        } else if (f[1] & 0xFCu) {
            txt_s(&t, "reserved type bits set (0x");
            txt_hex2(&t, f[1]);
            txt_s(&t, ")");
            if ((f[1] & 0xFCu) == 0x80u) txt_s(&t, " (the protocol 1.x bulk flag)");
        } else {
            if ((f[1] & 3u) != RRAM_REQUEST) return; /* the board ignores anything but requests */
            uint16_t seq = rd16(f + 2);
            if (early && seq != RRAM_SEQ_UNKNOWN) {
                if (f[4] != RRAM_OP_HELLO) feed_watchdog(fw); /* another host's HELLO never feeds it (3.5) */
                q_push_or_nak(fw, Q_EARLY, 0, f, (size_t)len);
            } else {
                q_push_or_nak(fw, Q_FRAME, 0, f, (size_t)len);
            }
            return;
        }
    }
    q_push_or_nak(fw, Q_ERROR, status, (const uint8_t *)t.buf, t.len);
}

static void decode_bytes(rram_fw *fw, const uint8_t *data, size_t n, int early) {
    for (size_t i = 0; i < n; i++) {
        uint8_t b = data[i];
        if (b == 0) {
            finish_run(fw, early);
        } else if (!fw->discarding) {
            if (fw->rx_len == sizeof fw->rx) {
                fw->rx_len = 0;
                fw->discarding = 1;
            } else {
                fw->rx[fw->rx_len++] = b;
            }
        }
    }
}

/* ------------------------------------------------------------------ watchdog (3.7) */
static void feed_watchdog(rram_fw *fw) {
    fw->has_deadline = (uint8_t)(fw->watchdog_ms && fw->handshaken);
    if (fw->has_deadline) fw->deadline_us = wall_us(fw) + (uint64_t)fw->watchdog_ms * 1000u;
    if (fw->state == RRAM_STATE_SAFE_IDLE) fw->state = RRAM_STATE_IDLE;
}

int fw_keep_going(rram_fw *fw) {
    const rram_hal *h = fw->hal;
    uint8_t buf[256];
    if (h->watchdog_kick) h->watchdog_kick(h->ctx);
    if (!h->uart_read) return 1;
    for (int first = 1;; first = 0) {
        long n = h->uart_read(h->ctx, buf, sizeof buf);
        if (n < 0 && first) return 1; /* the input cannot be heard now: never stopped for silence */
        if (n <= 0) break;
        decode_bytes(fw, buf, (size_t)n, 1);
        if ((size_t)n < sizeof buf) break;
    }
    if (fw->has_deadline && wall_us(fw) >= fw->deadline_us) fw->op_expired = 1;
    return !fw->op_expired;
}

/* What the watchdog does, also for a take-over: stop a stream, ground the outputs, EV_WATCHDOG. */
static void end_session(rram_fw *fw, uint8_t how) {
    uint16_t sid = 0xFFFF;
    uint8_t ev[10];
    if (fw->stream.active) {
        sid = fw->stream.stream_id;
        rram_stream_end(fw, RRAM_END_WATCHDOG, 0);
    }
    fw->state = RRAM_STATE_SAFE_IDLE;
    fw_ground(fw);
    wr64(ev, fw_now_us(fw));
    wr16(ev + 8, sid);
    fw_emit_event(fw, RRAM_EV_WATCHDOG, ev, sizeof ev, NULL);
    fw->session_alive = 0;
    fw->prev_end = how;
    fw->prev_stream = sid;
}

static void check_watchdog(rram_fw *fw) {
    if (!fw->has_deadline || fw->state == RRAM_STATE_SAFE_IDLE || wall_us(fw) < fw->deadline_us) return;
    end_session(fw, RRAM_SESSION_WATCHDOG);
}

/* ------------------------------------------------------------------ lifecycle */
int rram_fw_init(rram_fw *fw, const rram_fw_config *cfg, const rram_hal *hal) {
    rram_text t;
    memset(fw, 0, sizeof *fw);
    txt_init(&t, fw->error, sizeof fw->error - 1);
    fw->hal = hal;
    fw->cfg = *cfg;
    if (!hal || !hal->set_dac_mv || !hal->set_gate_mv || !hal->select_cell || !hal->pulse || !hal->adc_read ||
        !hal->clock_us || !hal->uart_write || !hal->random_u32) {
        txt_s(&t, "the HAL lacks a required call (rram_hal.h: set_dac_mv .. random_u32)");
    } else if (cfg->max_payload > RRAM_FW_MAX_PAYLOAD || cfg->max_payload < 40) {
        txt_s(&t, "max_payload ");
        txt_u(&t, cfg->max_payload);
        txt_s(&t, " is outside 40 .. ");
        txt_u(&t, RRAM_FW_MAX_PAYLOAD);
        txt_s(&t, " (RRAM_FW_MAX_PAYLOAD)");
    } else if (cfg->response_cache < 1 || cfg->response_cache > RRAM_FW_CACHE_DEPTH) {
        txt_s(&t, "response_cache ");
        txt_u(&t, cfg->response_cache);
        txt_s(&t, " is outside 1 .. ");
        txt_u(&t, RRAM_FW_CACHE_DEPTH);
        txt_s(&t, " (RRAM_FW_CACHE_DEPTH)");
    } else if (cfg->stream_window < 1 || cfg->stream_window > RRAM_FW_WINDOW_MAX) {
        txt_s(&t, "stream_window ");
        txt_u(&t, cfg->stream_window);
        txt_s(&t, " is outside 1 .. ");
        txt_u(&t, RRAM_FW_WINDOW_MAX);
        txt_s(&t, " (RRAM_FW_WINDOW_MAX)");
    } else if (cfg->rows < 1 || cfg->cols < 1 || (uint32_t)cfg->rows * cfg->cols > RRAM_FW_MAX_CELLS) {
        txt_s(&t, "array ");
        txt_u(&t, cfg->rows);
        txt_s(&t, "x");
        txt_u(&t, cfg->cols);
        txt_s(&t, " has more than ");
        txt_u(&t, RRAM_FW_MAX_CELLS);
        txt_s(&t, " cells (RRAM_FW_MAX_CELLS)");
    } else if (cfg->width_step_ns == 0) {
        txt_s(&t, "width_step_ns must be at least 1");
    } else if (!(cfg->read_amps_per_code > 0)) {
        txt_s(&t, "read_amps_per_code must be positive");
    }
    fw->error[t.len] = 0;
    (void)FW_NAME;
    return t.len ? -1 : 0;
}

void rram_fw_boot(rram_fw *fw) {
    uint8_t ev[15];
    fw->session_id = fw->hal->random_u32(fw->hal->ctx);
    fw->discarding = 0;
    fw->rx_len = 0;
    fw->q_head = fw->q_tail = 0;
    memset(fw->cache, 0, sizeof fw->cache);
    fw->cache_age = 0;
    fw->stream.active = 0;
    fw->handshaken = 0;
    fw->session_alive = 0;
    fw->owner_nonce = 0;
    fw->prev_end = RRAM_SESSION_NONE;
    fw->prev_stream = 0xFFFF;
    fw->state = fw->state_on_arrival = RRAM_STATE_IDLE;
    fw->watchdog_ms = fw->cfg.watchdog_ms;
    fw->has_deadline = 0;
    fw->op_expired = 0;
    fw->resend_pending = fw->pending_abort_end = 0;
    fw->event_seq = 0;
    memset(fw->formed, 0, sizeof fw->formed);
    fw_ground(fw);
    wr32(ev, fw->session_id);
    ev[4] = fw->cfg.fw_major;
    ev[5] = fw->cfg.fw_minor;
    ev[6] = fw->cfg.fw_patch;
    wr64(ev + 7, fw_now_us(fw));
    fw_emit_event(fw, RRAM_EV_BOOT, ev, sizeof ev, NULL);
}

void rram_fw_copy(rram_fw *dst, const rram_fw *src) {
    const rram_hal *hal = dst->hal;
    memcpy(dst, src, sizeof *dst);
    dst->hal = hal;
}

void rram_fw_hello_info(const rram_fw *fw, uint8_t *o) {
    const rram_fw_config *c = &fw->cfg;
    o[0] = RRAM_PROTO_MAJOR;
    o[1] = RRAM_PROTO_MINOR;
    o[2] = c->fw_major;
    o[3] = c->fw_minor;
    o[4] = c->fw_patch;
    memcpy(o + 5, c->board_id, 16);
    wr32(o + 21, fw->session_id);
    wr32(o + 25, c->capabilities);
    wr16(o + 29, c->rows);
    wr16(o + 31, c->cols);
    o[33] = c->dac_bits;
    o[34] = c->adc_bits;
    wr16(o + 35, (uint16_t)c->set_v_min_mv);
    wr16(o + 37, (uint16_t)c->set_v_max_mv);
    wr16(o + 39, (uint16_t)c->reset_v_min_mv);
    wr16(o + 41, (uint16_t)c->reset_v_max_mv);
    wr16(o + 43, (uint16_t)c->form_v_min_mv);
    wr16(o + 45, (uint16_t)c->form_v_max_mv);
    wr16(o + 47, (uint16_t)c->read_v_min_mv);
    wr16(o + 49, (uint16_t)c->read_v_max_mv);
    wr16(o + 51, c->gate_v_min_mv);
    wr16(o + 53, c->gate_v_max_mv);
    wr32(o + 55, c->width_min_ns);
    wr32(o + 59, c->width_max_ns);
    wr32(o + 63, c->width_step_ns);
    wr32(o + 67, c->max_compliance_na);
    wr16(o + 71, c->max_payload);
    wr16(o + 73, fw->watchdog_ms);
    o[75] = c->stream_window;
    wr16(o + 76, c->max_wv_batch);
    wr32(o + 78, c->op_overhead_ns);
    wr32(o + 82, c->max_request_ms);
    wr32(o + 86, c->max_hold_ns);
    o[90] = fw->prev_end;
    wr16(o + 91, fw->prev_stream);
}

size_t rram_fw_cache_seqs(const rram_fw *fw, uint16_t *out) {
    size_t k = 0;
    uint32_t last = 0;
    for (;;) { /* oldest first: ascending age */
        const rram_fw_cache_entry *best = NULL;
        for (size_t i = 0; i < RRAM_FW_CACHE_DEPTH; i++) {
            const rram_fw_cache_entry *e = &fw->cache[i];
            if (e->used && e->age > last && (!best || e->age < best->age)) best = e;
        }
        if (!best) return k;
        out[k++] = best->seq;
        last = best->age;
    }
}

/* ------------------------------------------------------------------ handlers of the short requests */
static size_t text_payload(uint8_t *out, const rram_text *t) {
    memmove(out, t->buf, t->len);
    return t->len;
}

static size_t hello(rram_fw *fw, const uint8_t *p, uint8_t *out) {
    uint32_t nonce = rd32(p + 3);
    if (fw->session_alive && nonce != fw->owner_nonce) end_session(fw, RRAM_SESSION_TAKEN_OVER);
    memset(fw->cache, 0, sizeof fw->cache); /* a handshake starts a new conversation (3.3) */
    fw->handshaken = 1;
    fw->session_alive = 1;
    fw->owner_nonce = nonce;
    feed_watchdog(fw);
    rram_fw_hello_info(fw, out);
    return 93;
}

static size_t heartbeat(rram_fw *fw, const uint8_t *p, uint8_t *out) {
    uint16_t wd = rd16(p);
    if (wd) {
        fw->watchdog_ms = wd;
        feed_watchdog(fw);
    }
    wr32(out, fw->session_id);
    wr64(out + 4, fw_now_us(fw));
    out[12] = fw->stream.active ? (uint8_t)RRAM_STATE_STREAMING : fw->state_on_arrival;
    wr16(out + 13, fw->watchdog_ms);
    return 15;
}

static size_t get_counters(rram_fw *fw, uint8_t *out) {
    wr64(out, fw_now_us(fw));
    wr64(out + 8, fw->counters.form);
    wr64(out + 16, fw->counters.set);
    wr64(out + 24, fw->counters.reset);
    wr64(out + 32, fw->counters.reads);
    return 40;
}

static size_t release_or_abort(rram_fw *fw, int release, uint8_t *out) {
    uint16_t sid = 0xFFFF;
    if (fw->stream.active) {
        sid = fw->stream.stream_id;
        fw->pending_abort_end = 1; /* its end event (reason ABORTED) follows the reply */
    }
    if (release) {
        fw->handshaken = fw->session_alive = 0;
        fw->prev_end = RRAM_SESSION_RELEASED;
        fw->prev_stream = sid;
    }
    wr16(out, sid);
    wr64(out + 2, fw_now_us(fw));
    return 10;
}

/* COMPLIANCE_HIT text: "<what> current 12.3 uA hit the board's limit" (peak in units of 100 nA). */
static size_t compliance(rram_fw *fw, const char *what, uint32_t peak_100na, uint8_t *out, uint8_t *status) {
    char tb[TEXT_MAX];
    rram_text t;
    fw_ground(fw);
    txt_init(&t, tb, TEXT_MAX);
    txt_s(&t, what);
    txt_s(&t, " current ");
    txt_u(&t, peak_100na / 10u);
    txt_s(&t, ".");
    txt_u(&t, peak_100na % 10u);
    txt_s(&t, " uA hit the board's limit");
    *status = RRAM_COMPLIANCE_HIT;
    return text_payload(out, &t);
}

static uint16_t do_pulse(rram_fw *fw, uint8_t kind, int16_t v_mv, uint32_t width_ns, uint16_t gate_mv, uint8_t *hit,
                         uint32_t *peak) {
    const rram_hal *h = fw->hal;
    h->set_dac_mv(h->ctx, RRAM_DAC_PULSE, v_mv);
    h->set_gate_mv(h->ctx, gate_mv);
    *hit = 0;
    *peak = 0;
    return h->pulse(h->ctx, kind, width_ns, hit, peak);
}

static size_t set_reset(rram_fw *fw, const uint8_t *p, int reset, uint8_t *out, uint8_t *status) {
    uint8_t hit;
    uint32_t peak;
    fw->hal->select_cell(fw->hal->ctx, rd16(p), rd16(p + 2));
    uint16_t code = do_pulse(fw, reset ? RRAM_PULSE_RESET : RRAM_PULSE_SET, rdi16(p + 4), rd32(p + 6), rd16(p + 10),
                             &hit, &peak);
    fw_count(reset ? &fw->counters.reset : &fw->counters.set, 1);
    if (hit) return compliance(fw, reset ? "RESET" : "SET", peak, out, status);
    wr64(out, fw_now_us(fw));
    wr16(out + 8, code);
    wrf32(out + 10, fw->cfg.pulse_amps_per_code);
    wrf32(out + 14, fw->cfg.pulse_offset_code);
    return 18;
}

static size_t read_one(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    uint8_t sat = 0;
    int16_t v = rdi16(p + 4);
    uint16_t code = fw_read_cell(fw, rd16(p), rd16(p + 2), v, &sat);
    wr64(out, fw_now_us(fw));
    wr16(out + 8, (uint16_t)v);
    wr16(out + 10, code);
    wrf32(out + 12, fw->cfg.read_amps_per_code);
    wrf32(out + 16, fw->cfg.read_offset_code);
    if (sat) *status = RRAM_ADC_SATURATED;
    return 20;
}

static size_t read_block(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    uint16_t r0 = rd16(p), c0 = rd16(p + 2), nr = rd16(p + 4), nc = rd16(p + 6);
    int16_t v = rdi16(p + 8);
    uint32_t n = (uint32_t)nr * nc;
    uint16_t *codes = fw->stream.lrs; /* scratch: READ_BLOCK is BUSY while a stream runs */
    if (fw->hal->read_block) {
        if (fw->hal->read_block(fw->hal->ctx, r0, c0, nr, nc, v, codes) != 0) {
            rram_text t;
            txt_init(&t, (char *)out, TEXT_MAX);
            txt_s(&t, "internal error: READ_BLOCK failed in the HAL");
            *status = RRAM_INTERNAL;
            return t.len;
        }
        fw_count(&fw->counters.reads, n);
    } else {
        uint32_t k = 0;
        for (uint16_t r = 0; r < nr; r++)
            for (uint16_t c = 0; c < nc; c++) codes[k++] = fw_read_cell(fw, (uint16_t)(r0 + r), (uint16_t)(c0 + c), v, NULL);
    }
    wr64(out, fw_now_us(fw));
    wr16(out + 8, (uint16_t)v);
    wr16(out + 10, r0);
    wr16(out + 12, c0);
    wr16(out + 14, nr);
    wr16(out + 16, nc);
    wrf32(out + 18, fw->cfg.read_amps_per_code);
    wrf32(out + 22, fw->cfg.read_offset_code);
    for (uint32_t k = 0; k < n; k++) wr16(out + 26 + 2 * k, codes[k]);
    return 26 + 2 * (size_t)n;
}

/* Smallest code whose conductance at v_read_mv reaches g (the FORM threshold), read_max_code + 1 if none. */
static uint32_t first_code_at_least(const rram_fw *fw, double g, int16_t v_read_mv) {
    uint32_t lo = 0, hi = (uint32_t)fw->cfg.read_max_code + 1u; /* answer in [lo, hi] */
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2u;
        if (fw_g_of_code(fw, (uint16_t)mid, v_read_mv) >= g)
            hi = mid;
        else
            lo = mid + 1u;
    }
    return lo;
}

static size_t form(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    uint16_t row = rd16(p), col = rd16(p + 2);
    int32_t v_start = rdi16(p + 4), v_stop = rdi16(p + 6), v_step = rdi16(p + 8);
    uint32_t width = rd32(p + 10);
    uint16_t gate = rd16(p + 14);
    int16_t v_read = rdi16(p + 16);
    /* G >= g_formed_ns * 1e-9, decided on the code (G is increasing in it): one threshold code per request */
    uint32_t thr = first_code_at_least(fw, (double)rd32(p + 18) * 1e-9, v_read);
    uint16_t code = fw_read_cell(fw, row, col, v_read, NULL);
    uint16_t pulses = 0;
    int32_t v_mv = v_start, v_last = 0;
    int stopped = 0;
    while (code < thr && v_mv <= v_stop) {
        uint8_t hit;
        uint32_t peak;
        if (!fw_keep_going(fw)) {
            stopped = 1;
            break;
        }
        fw->hal->select_cell(fw->hal->ctx, row, col);
        (void)do_pulse(fw, RRAM_PULSE_FORM, (int16_t)v_mv, width, gate, &hit, &peak);
        fw_count(&fw->counters.form, 1);
        pulses++;
        v_last = v_mv;
        if (hit) return compliance(fw, "FORM", peak, out, status);
        code = fw_read_cell(fw, row, col, v_read, NULL);
        if (code >= thr) break;
        v_mv += v_step;
    }
    fw_ground(fw);
    if (code >= thr) mark_formed(fw, row, col);
    wr64(out, fw_now_us(fw));
    out[8] = (uint8_t)(code >= thr);
    wr16(out + 9, pulses);
    wr16(out + 11, (uint16_t)(int16_t)v_last);
    wr16(out + 13, code);
    wr16(out + 15, (uint16_t)v_read);
    wrf32(out + 17, fw->cfg.read_amps_per_code);
    wrf32(out + 21, fw->cfg.read_offset_code);
    if (stopped) *status = RRAM_ABORTED;
    return 25;
}

/* v_i = rint(v_start + i * (v_stop - v_start) / (n - 1)) exactly as numpy's linspace then rint computes it
 * (step = delta / div; y = i * step; y += start; the last point = v_stop): float64, no fused multiply-add. */
static int16_t sweep_point(int32_t v_start, int32_t v_stop, uint32_t n, uint32_t i) {
    if (i == n - 1) return (int16_t)v_stop;
    double step = (double)(v_stop - v_start) / (double)(n - 1);
    volatile double y = (double)i * step; /* volatile: two roundings, never contracted */
    double x = y + (double)v_start;
    double r = x >= 0 ? x : -x; /* round half to even, as np.rint */
    double f = (double)(int64_t)r;
    double d = r - f;
    if (d > 0.5 || (d == 0.5 && ((int64_t)f & 1))) f += 1.0;
    return (int16_t)(x >= 0 ? f : -f);
}

static size_t iv_sweep(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    uint16_t row = rd16(p), col = rd16(p + 2);
    int32_t v_start = rdi16(p + 4), v_stop = rdi16(p + 6);
    uint16_t n = rd16(p + 8);
    uint32_t width = rram_iv_point_ns(&fw->cfg, rd32(p + 10), p[16]);
    uint16_t gate = rd16(p + 14);
    int16_t *volts = (int16_t *)(void *)fw->stream.hrs; /* scratch: IV_SWEEP is BUSY while a stream runs */
    uint16_t *codes = fw->stream.lrs;
    uint16_t done = 0;
    for (uint16_t i = 0; i < n; i++) volts[i] = sweep_point(v_start, v_stop, n, i);
    fw->hal->select_cell(fw->hal->ctx, row, col);
    while (done < n && fw_keep_going(fw)) {
        uint8_t hit;
        uint32_t peak;
        int16_t v = volts[done];
        codes[done] = do_pulse(fw, RRAM_PULSE_SWEEP, v, width, gate, &hit, &peak);
        if (v > 0) fw_count(&fw->counters.set, 1);
        if (v < 0) fw_count(&fw->counters.reset, 1);
        if (hit) return compliance(fw, "I-V sweep", peak, out, status);
        done++;
    }
    fw_ground(fw);
    wr64(out, fw_now_us(fw));
    wr16(out + 8, done);
    wrf32(out + 10, fw->cfg.pulse_amps_per_code);
    wrf32(out + 14, fw->cfg.pulse_offset_code);
    for (uint16_t i = 0; i < done; i++) {
        wr16(out + 18 + 2 * i, (uint16_t)volts[i]);
        wr16(out + 18 + 2 * (size_t)done + 2 * i, codes[i]);
    }
    if (done < n) *status = RRAM_ABORTED;
    return 18 + 4 * (size_t)done;
}

static size_t advance_clock(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    uint64_t us = rd64(p);
    if (!fw->hal->advance_ns || fw->hal->advance_ns(fw->hal->ctx, (int64_t)(us * 1000u)) != 0) {
        rram_text t;
        txt_init(&t, (char *)out, TEXT_MAX);
        txt_s(&t, "internal error: the clock cannot advance");
        *status = RRAM_INTERNAL;
        return t.len;
    }
    wr64(out, fw_now_us(fw));
    return 8;
}

/* ------------------------------------------------------------------ dispatch (FirmwareEngine._execute) */
static int opcode_known(const rram_fw *fw, uint8_t op) {
    uint32_t caps = fw->cfg.capabilities;
    switch (op) {
    case RRAM_OP_HELLO: case RRAM_OP_HEARTBEAT: case RRAM_OP_GET_COUNTERS: case RRAM_OP_RELEASE:
    case RRAM_OP_FORM: case RRAM_OP_SET: case RRAM_OP_RESET: case RRAM_OP_READ: case RRAM_OP_READ_BLOCK:
    case RRAM_OP_ABORT:
        return 1;
    case RRAM_OP_IV_SWEEP:
        return (caps & RRAM_CAP_IV_SWEEP) != 0;
    case RRAM_OP_ENDURANCE: case RRAM_OP_STREAM_ACK: case RRAM_OP_STREAM_RESEND:
        return (caps & RRAM_CAP_STREAMING) != 0;
    case RRAM_OP_WRITE_VERIFY:
        return (caps & RRAM_CAP_WRITE_VERIFY) != 0;
    case RRAM_OP_ADVANCE_CLOCK:
        return (caps & RRAM_CAP_VIRTUAL_CLOCK) != 0;
    default:
        return 0;
    }
}

static int allowed_while_streaming(uint8_t op) {
    return op == RRAM_OP_HELLO || op == RRAM_OP_HEARTBEAT || op == RRAM_OP_GET_COUNTERS ||
           op == RRAM_OP_STREAM_ACK || op == RRAM_OP_STREAM_RESEND || op == RRAM_OP_ABORT || op == RRAM_OP_RELEASE;
}

/* Execute the request in fw->cur: its payload goes to out, its status to *status; returns the payload length. */
static size_t execute(rram_fw *fw, uint8_t *out, uint8_t *status) {
    const uint8_t *f = fw->cur;
    uint8_t op = f[4];
    const uint8_t *p = f + RRAM_FW_HEADER;
    size_t n = rd16(f + 6);
    rram_text t;
    txt_init(&t, (char *)out, TEXT_MAX);
    *status = RRAM_OK;
    if ((f[0] >> 4) != RRAM_PROTO_MAJOR && op != RRAM_OP_HELLO) {
        txt_s(&t, "request major ");
        txt_u(&t, f[0] >> 4);
        txt_s(&t, ", board speaks ");
        txt_u(&t, RRAM_PROTO_MAJOR);
        *status = RRAM_VERSION_MISMATCH;
        return t.len;
    }
    if (!opcode_known(fw, op)) {
        txt_s(&t, "unknown opcode 0x");
        txt_hex2(&t, op);
        *status = RRAM_UNKNOWN_OPCODE;
        return t.len;
    }
    if (!fw->handshaken && op != RRAM_OP_HELLO) {
        txt_s(&t, fw->prev_end == RRAM_SESSION_RELEASED ? "the session was released" : "board was reset");
        txt_s(&t, ": send HELLO first");
        *status = RRAM_HANDSHAKE_REQUIRED;
        return t.len;
    }
    if (fw->stream.active && !allowed_while_streaming(op)) {
        txt_s(&t, "endurance stream ");
        txt_u(&t, fw->stream.stream_id);
        txt_s(&t, " is running");
        *status = RRAM_BUSY;
        return t.len;
    }
    if (rram_check_length(op, p, n, &t) != RRAM_OK) {
        *status = RRAM_BAD_LENGTH;
        return t.len;
    }
    *status = (uint8_t)rram_check_limits(&fw->cfg, op, p, n, fw_now_ns(fw), &t);
    if (*status != RRAM_OK) return t.len;
    switch (op) {
    case RRAM_OP_HELLO: return hello(fw, p, out);
    case RRAM_OP_HEARTBEAT: return heartbeat(fw, p, out);
    case RRAM_OP_GET_COUNTERS: return get_counters(fw, out);
    case RRAM_OP_RELEASE: return release_or_abort(fw, 1, out);
    case RRAM_OP_ABORT: return release_or_abort(fw, 0, out);
    case RRAM_OP_FORM: return form(fw, p, out, status);
    case RRAM_OP_SET: return set_reset(fw, p, 0, out, status);
    case RRAM_OP_RESET: return set_reset(fw, p, 1, out, status);
    case RRAM_OP_READ: return read_one(fw, p, out, status);
    case RRAM_OP_READ_BLOCK: return read_block(fw, p, out, status);
    case RRAM_OP_IV_SWEEP: return iv_sweep(fw, p, out, status);
    case RRAM_OP_ENDURANCE: return rram_endurance(fw, p, out, status);
    case RRAM_OP_STREAM_ACK: return rram_stream_ack(fw, p, out, status);
    case RRAM_OP_STREAM_RESEND: return rram_stream_resend(fw, p, out, status);
    case RRAM_OP_WRITE_VERIFY: return rram_write_verify(fw, p, n, out, status);
    case RRAM_OP_ADVANCE_CLOCK: return advance_clock(fw, p, out, status);
    default: break;
    }
    txt_s(&t, "internal error: no handler");
    *status = RRAM_INTERNAL;
    return t.len;
}

/* A HELLO that opens no session (3.9 step 2): answered here and nothing else changes; 0 if it opens one. */
static int hello_without_session(rram_fw *fw) {
    const uint8_t *f = fw->cur;
    uint16_t seq = rd16(f + 2);
    size_t n = rd16(f + 6);
    uint8_t info[93];
    if ((f[0] >> 4) != RRAM_PROTO_MAJOR) { /* a version probe (3.6) */
        rram_fw_hello_info(fw, info);
        send(fw, fw->wire, fw_encode(fw->wire, RRAM_RESPONSE, seq, RRAM_OP_HELLO, RRAM_OK, info, sizeof info));
        return 1;
    }
    if (n != 7) {
        char tb[TEXT_MAX];
        rram_text t;
        txt_init(&t, tb, TEXT_MAX);
        (void)rram_check_length(RRAM_OP_HELLO, f + RRAM_FW_HEADER, n, &t);
        send_text(fw, RRAM_RESPONSE, seq, RRAM_OP_HELLO, RRAM_BAD_LENGTH, &t);
        return 1;
    }
    const uint8_t *p = f + RRAM_FW_HEADER;
    if (!fw->session_alive || rd32(p + 3) == fw->owner_nonce || (p[2] & 1u)) return 0;
    rram_fw_hello_info(fw, info); /* another host's session is alive */
    send(fw, fw->wire, fw_encode(fw->wire, RRAM_RESPONSE, seq, RRAM_OP_HELLO, RRAM_SESSION_ACTIVE, info, sizeof info));
    return 1;
}

static rram_fw_cache_entry *cache_find(rram_fw *fw, uint16_t seq) {
    for (size_t i = 0; i < RRAM_FW_CACHE_DEPTH; i++)
        if (fw->cache[i].used && fw->cache[i].seq == seq) return &fw->cache[i];
    return NULL;
}

/* The slot a new response of seq goes to: its old entry, a free one, or the oldest once the cache is full. */
static rram_fw_cache_entry *cache_slot(rram_fw *fw, uint16_t seq) {
    rram_fw_cache_entry *e = cache_find(fw, seq), *oldest = NULL, *free_slot = NULL;
    size_t used = 0;
    if (e) return e;
    for (size_t i = 0; i < RRAM_FW_CACHE_DEPTH; i++) {
        rram_fw_cache_entry *c = &fw->cache[i];
        if (!c->used) {
            if (!free_slot) free_slot = c;
            continue;
        }
        used++;
        if (!oldest || c->age < oldest->age) oldest = c;
    }
    if (used >= fw->cfg.response_cache || !free_slot) return oldest;
    return free_slot;
}

static void flush_after_response(rram_fw *fw) {
    if (fw->resend_pending) {
        fw->resend_pending = 0;
        const rram_fw_window_slot *s = &fw->stream.window[fw->resend_event % fw->cfg.stream_window];
        send(fw, s->wire, s->len);
    }
    if (fw->pending_abort_end && fw->stream.active) {
        fw->pending_abort_end = 0;
        rram_stream_end(fw, RRAM_END_ABORTED, 0);
    }
}

#ifdef RRAM_FW_TEST_HOOK
void RRAM_FW_TEST_HOOK(const uint8_t *raw, size_t n); /* the fuzz driver sees every frame the pipeline takes */
#endif

/* FirmwareEngine._handle for one queued item (already copied to fw->cur when it is a frame). */
static void handle(rram_fw *fw, uint8_t kind) {
    const uint8_t *f = fw->cur;
#ifdef RRAM_FW_TEST_HOOK
    RRAM_FW_TEST_HOOK(fw->cur, fw->cur_len);
#endif
    int early = kind == Q_EARLY;
    uint16_t seq = rd16(f + 2);
    uint8_t op = f[4];
    size_t len = fw->cur_len;
    uint32_t crc = rd32(f + len - 4);
    if (seq == RRAM_SEQ_UNKNOWN) { /* 3.1: reserved; refused, never executed or cached */
        char tb[TEXT_MAX];
        rram_text t;
        txt_init(&t, tb, TEXT_MAX);
        txt_s(&t, "sequence number 0xFFFF is reserved for NAKs: request not executed");
        send_text(fw, RRAM_RESPONSE, RRAM_SEQ_UNKNOWN, op, RRAM_BAD_ARGUMENT, &t);
        fw->answered_only = 1;
        return;
    }
    rram_fw_cache_entry *cached = cache_find(fw, seq);
    int hit = cached && cached->opcode == op && cached->crc == crc && cached->req_len == len;
    if (!hit && op == RRAM_OP_HELLO && hello_without_session(fw)) {
        fw->answered_only = 1;
        return;
    }
    if (early) {
        fw->state_on_arrival = RRAM_STATE_IDLE;
    } else {
        fw->state_on_arrival = fw->state;
        feed_watchdog(fw);
        if (fw->handshaken && !fw->session_alive && op != RRAM_OP_HELLO) fw->session_alive = 1; /* 3.7 */
    }
    if (hit) {
        send(fw, cached->wire, cached->len);
    } else {
        uint8_t status = RRAM_OK;
        size_t n = execute(fw, fw->tx, &status);
        rram_fw_cache_entry *e = cache_slot(fw, seq);
        e->used = 1;
        e->seq = seq;
        e->opcode = op;
        e->crc = crc;
        e->req_len = (uint16_t)len;
        e->age = ++fw->cache_age;
        e->len = (uint16_t)fw_encode(e->wire, RRAM_RESPONSE, seq, op, status, fw->tx, n);
        send(fw, e->wire, e->len);
        flush_after_response(fw);
    }
    if (fw->op_expired) { /* the host fell silent during a long request: stopped, answered, now the watchdog */
        fw->op_expired = 0;
        check_watchdog(fw);
    } else if (!early) {
        feed_watchdog(fw);
    }
}

static void pump_stream(rram_fw *fw) { rram_stream_pump(fw); }

void rram_fw_feed(rram_fw *fw, const uint8_t *data, size_t n) {
    int fed = 0;
    check_watchdog(fw);
    decode_bytes(fw, data, n, 0);
    while (fw->q_head < fw->q_tail) {
        uint8_t *item = fw->queue + fw->q_head;
        uint8_t kind = item[0], status = item[1];
        size_t len = rd16(item + 2);
        fw->answered_only = 0;
        if (kind == Q_ERROR) {
            rram_text t;
            t.buf = (char *)item + Q_HDR;
            t.len = t.cap = len;
            size_t wl = fw_encode(fw->wire, RRAM_NAK, RRAM_SEQ_UNKNOWN, 0, status, (const uint8_t *)t.buf, t.len);
            fw->q_head += Q_HDR + len;
            send(fw, fw->wire, wl);
            continue;
        }
        memcpy(fw->cur, item + Q_HDR, len);
        fw->cur_len = (uint16_t)len;
        fw->q_head += Q_HDR + len;
        handle(fw, kind);
        fed |= kind == Q_FRAME && !fw->answered_only;
    }
    fw->q_head = fw->q_tail = 0;
    pump_stream(fw);
    if (fed && fw->state != RRAM_STATE_SAFE_IDLE) feed_watchdog(fw);
}

void rram_fw_poll(rram_fw *fw) {
    check_watchdog(fw);
    pump_stream(fw);
}

void rram_fw_service(rram_fw *fw) {
    uint8_t buf[256];
    const rram_hal *h = fw->hal;
    long n = h->uart_read ? h->uart_read(h->ctx, buf, sizeof buf) : 0;
    if (h->watchdog_kick) h->watchdog_kick(h->ctx);
    if (n > 0)
        rram_fw_feed(fw, buf, (size_t)n);
    else
        rram_fw_poll(fw);
}
