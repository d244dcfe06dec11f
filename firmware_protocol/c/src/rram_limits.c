/* rram_limits.c - payload sizes (3.9 step 8) and the limits of PROTOCOL.md 7, checked before any pulse.
 *
 * The same checks in the same order as firmware_protocol/limits.py (BoardLimits.check with the board's
 * clock): ranges of 7.2, the duration bound of 7.5, the clock range of 3.8 (OUT_OF_RANGE), then the
 * semantic checks of 7.4 (BAD_ARGUMENT); the first failure is reported, worded as the Python words it.
 * Durations are exact integers; the few products that could pass 2^64 (an ENDURANCE stream's whole worst
 * case) saturate, which keeps every decision exact (the clock range is below 2^63).
 */
#include "rram_internal.h"

#define CLOCK_MAX_US 9223372036854775ull /* floor((2^63 - 1) / 1000) */
#define CLOCK_MAX_NS (CLOCK_MAX_US * 1000ull)
#define MAX_STREAM_EVENTS 0xFFFFFFFEull
#define MAX_STREAM_CELLS 0xFFFFu

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
static uint64_t sat_mul(uint64_t a, uint64_t b) { return (a && b > UINT64_MAX / a) ? UINT64_MAX : a * b; }

uint32_t rram_max_block_cells(uint32_t max_payload) { return (max_payload - 26u) / 2u; }
uint32_t rram_max_event_cells(uint32_t max_payload) { return (max_payload - 30u) / 4u; }

uint32_t rram_wv_batch_limit(const rram_fw_config *cfg) {
    uint32_t by_req = (cfg->max_payload - 28u) / 14u, by_rsp = (cfg->max_payload - 10u) / 9u;
    uint32_t frame = by_req < by_rsp ? by_req : by_rsp;
    return cfg->max_wv_batch < frame ? cfg->max_wv_batch : frame;
}

uint32_t rram_iv_point_ns(const rram_fw_config *cfg, uint32_t width_ns, uint8_t mode) {
    return mode == 0 ? width_ns : (width_ns > cfg->width_min_ns ? width_ns : cfg->width_min_ns);
}

static const char *request_name(uint8_t op) {
    switch (op) {
    case RRAM_OP_HELLO: return "HelloRequest";
    case RRAM_OP_HEARTBEAT: return "HeartbeatRequest";
    case RRAM_OP_GET_COUNTERS: return "CountersRequest";
    case RRAM_OP_RELEASE: return "ReleaseRequest";
    case RRAM_OP_FORM: return "FormRequest";
    case RRAM_OP_SET: return "SetRequest";
    case RRAM_OP_RESET: return "ResetRequest";
    case RRAM_OP_READ: return "ReadRequest";
    case RRAM_OP_READ_BLOCK: return "ReadBlockRequest";
    case RRAM_OP_IV_SWEEP: return "IvSweepRequest";
    case RRAM_OP_ENDURANCE: return "EnduranceRequest";
    case RRAM_OP_STREAM_ACK: return "StreamAck";
    case RRAM_OP_STREAM_RESEND: return "StreamResend";
    case RRAM_OP_WRITE_VERIFY: return "WriteVerifyRequest";
    case RRAM_OP_ABORT: return "AbortRequest";
    case RRAM_OP_ADVANCE_CLOCK: return "AdvanceClockRequest";
    default: return "Request";
    }
}

static size_t fixed_size(uint8_t op) {
    switch (op) {
    case RRAM_OP_HELLO: return 7;
    case RRAM_OP_HEARTBEAT: return 2;
    case RRAM_OP_FORM: return 22;
    case RRAM_OP_SET: case RRAM_OP_RESET: return 12;
    case RRAM_OP_READ: return 6;
    case RRAM_OP_READ_BLOCK: return 10;
    case RRAM_OP_IV_SWEEP: return 17;
    case RRAM_OP_ENDURANCE: return 36;
    case RRAM_OP_STREAM_ACK: case RRAM_OP_STREAM_RESEND: return 6;
    case RRAM_OP_WRITE_VERIFY: return 28;
    case RRAM_OP_ADVANCE_CLOCK: return 8;
    default: return 0; /* GET_COUNTERS, RELEASE, ABORT */
    }
}

int rram_check_length(uint8_t op, const uint8_t *p, size_t n, rram_text *why) {
    const char *name = request_name(op);
    size_t size = fixed_size(op), arrays = 0;
    if (n < size) {
        txt_s(why, name);
        txt_s(why, " payload is ");
        txt_u(why, n);
        txt_s(why, " bytes, expected at least ");
        txt_u(why, size);
        return RRAM_BAD_LENGTH;
    }
    if (op == RRAM_OP_WRITE_VERIFY) {
        arrays = 14u * rd16(p + 26);
        if (n - size < arrays) {
            txt_s(why, name);
            txt_s(why, " payload truncated: needs ");
            txt_u(why, arrays);
            txt_s(why, " bytes of array data at offset 0");
            return RRAM_BAD_LENGTH;
        }
    }
    if (n - size != arrays) {
        txt_s(why, name);
        txt_s(why, " payload has ");
        txt_u(why, n - size - arrays);
        txt_s(why, " unexpected trailing bytes");
        return RRAM_BAD_LENGTH;
    }
    return RRAM_OK;
}

/* ------------------------------------------------------------------ elementary checks (0 = passed) */
static int check_cell(const rram_fw_config *c, uint32_t row, uint32_t col, rram_text *t) {
    if (row < c->rows && col < c->cols) return 0;
    txt_s(t, "cell (");
    txt_u(t, row);
    txt_s(t, ", ");
    txt_u(t, col);
    txt_s(t, ") is outside the ");
    txt_u(t, c->rows);
    txt_s(t, "x");
    txt_u(t, c->cols);
    txt_s(t, " array");
    return 1;
}

static int check_block(const rram_fw_config *c, uint32_t r0, uint32_t c0, uint32_t nr, uint32_t nc, rram_text *t) {
    if (nr < 1 || nc < 1) {
        txt_s(t, "block ");
        txt_u(t, nr);
        txt_s(t, "x");
        txt_u(t, nc);
        txt_s(t, " is empty");
        return 1;
    }
    if (r0 + nr <= c->rows && c0 + nc <= c->cols) return 0;
    txt_s(t, "block rows ");
    txt_u(t, r0);
    txt_s(t, ":");
    txt_u(t, r0 + nr);
    txt_s(t, ", cols ");
    txt_u(t, c0);
    txt_s(t, ":");
    txt_u(t, c0 + nc);
    txt_s(t, " is outside the ");
    txt_u(t, c->rows);
    txt_s(t, "x");
    txt_u(t, c->cols);
    txt_s(t, " array");
    return 1;
}

static int check_voltage(const char *what, int32_t mv, int32_t lo, int32_t hi, rram_text *t) {
    if (lo <= mv && mv <= hi) return 0;
    txt_s(t, what);
    txt_s(t, " ");
    txt_volts(t, mv);
    txt_s(t, " V is outside the board's range [");
    txt_volts(t, lo);
    txt_s(t, ", ");
    txt_volts(t, hi);
    txt_s(t, "] V");
    return 1;
}

static int check_width(const rram_fw_config *c, uint32_t ns, rram_text *t) {
    if (ns < c->width_min_ns || ns > c->width_max_ns) {
        txt_s(t, "pulse width ");
        txt_u(t, ns);
        txt_s(t, " ns is outside [");
        txt_u(t, c->width_min_ns);
        txt_s(t, ", ");
        txt_u(t, c->width_max_ns);
        txt_s(t, "] ns");
        return 1;
    }
    if (ns % c->width_step_ns == 0) return 0;
    txt_s(t, "pulse width ");
    txt_u(t, ns);
    txt_s(t, " ns is not a multiple of the ");
    txt_u(t, c->width_step_ns);
    txt_s(t, " ns step");
    return 1;
}

static int check_gate(const rram_fw_config *c, uint32_t mv, rram_text *t) {
    return check_voltage("gate voltage", (int32_t)mv, c->gate_v_min_mv, c->gate_v_max_mv, t);
}

static int check_read(const rram_fw_config *c, int32_t mv, rram_text *t) {
    return check_voltage("read voltage", mv, c->read_v_min_mv, c->read_v_max_mv, t);
}

/* f32 bits: finite and > 0 (not NaN, not +-inf, not +-0, not negative). */
static int positive_finite_f32(uint32_t bits) {
    return (bits & 0x80000000u) == 0 && (bits & 0x7F800000u) != 0x7F800000u && (bits & 0x7FFFFFFFu) != 0;
}

/* ------------------------------------------------------------------ 7.2 ranges */
static int check_ranges(const rram_fw_config *c, uint8_t op, const uint8_t *p, rram_text *t) {
    switch (op) {
    case RRAM_OP_SET:
    case RRAM_OP_RESET:
        return check_cell(c, rd16(p), rd16(p + 2), t) ||
               (op == RRAM_OP_RESET
                    ? check_voltage("RESET voltage", rdi16(p + 4), c->reset_v_min_mv, c->reset_v_max_mv, t)
                    : check_voltage("SET voltage", rdi16(p + 4), c->set_v_min_mv, c->set_v_max_mv, t)) ||
               check_width(c, rd32(p + 6), t) || check_gate(c, rd16(p + 10), t);
    case RRAM_OP_FORM: {
        int32_t start = rdi16(p + 4), stop = rdi16(p + 6), step = rdi16(p + 8);
        if (check_cell(c, rd16(p), rd16(p + 2), t) ||
            check_voltage("FORM start voltage", start, c->form_v_min_mv, c->form_v_max_mv, t) ||
            check_voltage("FORM stop voltage", stop, c->form_v_min_mv, c->form_v_max_mv, t))
            return 1;
        if (step <= 0 || stop < start) {
            txt_s(t, "FORM ramp needs v_step > 0 and v_stop >= v_start");
            return 1;
        }
        int32_t steps = (stop - start) / step + 1;
        if (steps > 0xFFFF) {
            txt_s(t, "FORM ramp of ");
            txt_i(t, steps);
            txt_s(t, " steps exceeds 65535 pulses: use a larger v_step");
            return 1;
        }
        return check_width(c, rd32(p + 10), t) || check_gate(c, rd16(p + 14), t) || check_read(c, rdi16(p + 16), t);
    }
    case RRAM_OP_READ:
        return check_cell(c, rd16(p), rd16(p + 2), t) || check_read(c, rdi16(p + 4), t);
    case RRAM_OP_READ_BLOCK: {
        uint32_t cells = (uint32_t)rd16(p + 4) * rd16(p + 6), limit = rram_max_block_cells(c->max_payload);
        if (check_block(c, rd16(p), rd16(p + 2), rd16(p + 4), rd16(p + 6), t) || check_read(c, rdi16(p + 8), t))
            return 1;
        if (cells <= limit) return 0;
        txt_s(t, "block of ");
        txt_u(t, cells);
        txt_s(t, " cells exceeds ");
        txt_u(t, limit);
        txt_s(t, " cells per READ_BLOCK");
        return 1;
    }
    case RRAM_OP_IV_SWEEP: {
        uint16_t n = rd16(p + 8);
        uint8_t mode = p[16];
        if (check_cell(c, rd16(p), rd16(p + 2), t) ||
            check_voltage("sweep start voltage", rdi16(p + 4), c->reset_v_min_mv, c->set_v_max_mv, t) ||
            check_voltage("sweep stop voltage", rdi16(p + 6), c->reset_v_min_mv, c->set_v_max_mv, t))
            return 1;
        if (n < 2 || n > 1024) {
            txt_s(t, "I-V sweep of ");
            txt_u(t, n);
            txt_s(t, " points: use 2 to 1024");
            return 1;
        }
        if (mode > 1) {
            txt_s(t, "I-V sweep mode ");
            txt_u(t, mode);
            txt_s(t, ": 0 = pulsed, 1 = DC");
            return 1;
        }
        if (mode == 0) {
            if (check_width(c, rd32(p + 10), t)) return 1;
        } else if (rd32(p + 10) > c->max_hold_ns) {
            txt_s(t, "DC hold ");
            txt_u(t, rd32(p + 10));
            txt_s(t, " ns per point exceeds the board's ");
            txt_u(t, c->max_hold_ns);
            txt_s(t, " ns");
            return 1;
        }
        return check_gate(c, rd16(p + 14), t);
    }
    case RRAM_OP_ENDURANCE:
        if (check_block(c, rd16(p), rd16(p + 2), rd16(p + 4), rd16(p + 6), t)) return 1;
        if (rd32(p + 8) < 1 || rd32(p + 12) < 1) {
            txt_s(t, "endurance needs n_cycles >= 1 and read_every >= 1");
            return 1;
        }
        return check_voltage("SET voltage", rdi16(p + 16), c->set_v_min_mv, c->set_v_max_mv, t) ||
               check_voltage("RESET voltage", rdi16(p + 24), c->reset_v_min_mv, c->reset_v_max_mv, t) ||
               check_width(c, rd32(p + 18), t) || check_width(c, rd32(p + 26), t) ||
               check_gate(c, rd16(p + 22), t) || check_gate(c, rd16(p + 30), t) || check_read(c, rdi16(p + 32), t);
    case RRAM_OP_WRITE_VERIFY: {
        uint32_t n = rd16(p + 26), limit = rram_wv_batch_limit(c);
        if (n < 1 || n > limit) {
            txt_s(t, "write-verify batch of ");
            txt_u(t, n);
            txt_s(t, " cells: use 1 to ");
            txt_u(t, limit);
            return 1;
        }
        if (check_read(c, rdi16(p), t) || check_width(c, rd32(p + 2), t) ||
            check_voltage("SET ramp start", rdi16(p + 6), c->set_v_min_mv, c->set_v_max_mv, t) ||
            check_voltage("SET ramp stop", rdi16(p + 8), c->set_v_min_mv, c->set_v_max_mv, t) ||
            check_voltage("RESET ramp start", rdi16(p + 18), c->reset_v_min_mv, c->reset_v_max_mv, t) ||
            check_voltage("RESET ramp stop", rdi16(p + 20), c->reset_v_min_mv, c->reset_v_max_mv, t) ||
            check_gate(c, rd16(p + 12), t) || check_gate(c, rd16(p + 14), t) || check_gate(c, rd16(p + 24), t))
            return 1;
        if (rdi16(p + 10) < 0 || rdi16(p + 22) > 0) { /* (set_gate_step is a u16: never < 0) */
            txt_s(t, "write-verify ramps must grow: SET steps >= 0, RESET step <= 0 (more negative)");
            return 1;
        }
        const uint8_t *e = p + 28;
        for (uint32_t i = 0; i < n; i++)
            if (rd16(e + 14 * i) >= c->rows || rd16(e + 14 * i + 2) >= c->cols)
                return check_cell(c, rd16(e + 14 * i), rd16(e + 14 * i + 2), t);
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *x = e + 14 * i;
            if (!positive_finite_f32(rd32(x + 4)) || !positive_finite_f32(rd32(x + 8)) || rd16(x + 12) == 0) {
                txt_s(t, "write-verify entries need target > 0 S, tolerance > 0 S and max_pulses >= 1");
                return 1;
            }
        }
        return 0;
    }
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------ 7.5 worst cases */
static uint64_t worst_case_ns(const rram_fw_config *c, uint8_t op, const uint8_t *p) {
    uint64_t o = c->op_overhead_ns;
    switch (op) {
    case RRAM_OP_SET:
    case RRAM_OP_RESET:
        return rd32(p + 6) + o;
    case RRAM_OP_FORM: {
        int32_t start = rdi16(p + 4), stop = rdi16(p + 6), step = rdi16(p + 8);
        uint64_t steps = step > 0 ? (uint64_t)((stop - start) / step + 1) : 0;
        return steps * (rd32(p + 10) + o) + (steps + 1) * o;
    }
    case RRAM_OP_READ:
        return o;
    case RRAM_OP_READ_BLOCK:
        return (uint64_t)rd16(p + 4) * rd16(p + 6) * o;
    case RRAM_OP_IV_SWEEP:
        return (uint64_t)rd16(p + 8) * (rram_iv_point_ns(c, rd32(p + 10), p[16]) + o);
    case RRAM_OP_WRITE_VERIFY: {
        uint32_t n = rd16(p + 26);
        uint64_t pulses = 0;
        for (uint32_t i = 0; i < n; i++) pulses += rd16(p + 28 + 14 * i + 12);
        return n * o + pulses * (rd32(p + 2) + 2 * o);
    }
    case RRAM_OP_ENDURANCE: {
        uint64_t n_cycles = rd32(p + 8), every = rd32(p + 12);
        uint64_t points = every ? n_cycles / every : 0;
        uint64_t per_cycle = (uint64_t)rd32(p + 18) + rd32(p + 26) + 2 * o;
        uint64_t per_cell = sat_add(sat_mul(n_cycles, per_cycle), sat_mul(2 * points, o));
        return sat_mul((uint64_t)rd16(p + 4) * rd16(p + 6), per_cell);
    }
    case RRAM_OP_ADVANCE_CLOCK:
        return sat_mul(rd64(p), 1000u);
    default:
        return 0;
    }
}

static void seconds(rram_text *t, uint64_t ns) {
    txt_g6(t, ns, 9);
    txt_s(t, " s");
}

static int check_duration(const rram_fw_config *c, uint8_t op, const uint8_t *p, rram_text *t) {
    if (op == RRAM_OP_ADVANCE_CLOCK) {
        uint64_t us = rd64(p);
        if (us <= CLOCK_MAX_US) return 0;
        txt_s(t, "ADVANCE_CLOCK of ");
        txt_g6(t, us, 6);
        txt_s(t, " s is beyond the board clock's range (");
        txt_g6(t, CLOCK_MAX_US, 6);
        txt_s(t, " s)");
        return 1;
    }
    if (op == RRAM_OP_ENDURANCE) return 0;
    uint64_t worst = worst_case_ns(c, op, p);
    if (worst <= (uint64_t)c->max_request_ms * 1000000u) return 0;
    txt_s(t, request_name(op));
    txt_s(t, " could take up to ");
    seconds(t, worst);
    txt_s(t, " on the array, more than the board's ");
    txt_g6(t, c->max_request_ms, 3);
    txt_s(t, " s per request: ask for less (fewer cells, pulses or points)");
    return 1;
}

static int check_clock(const rram_fw_config *c, uint8_t op, const uint8_t *p, int64_t clock_ns, rram_text *t) {
    uint64_t worst = worst_case_ns(c, op, p);
    if (sat_add((uint64_t)clock_ns, worst) <= CLOCK_MAX_NS) return 0;
    txt_s(t, request_name(op));
    txt_s(t, " could take up to ");
    seconds(t, worst);
    txt_s(t, ": the board clock (");
    txt_g6(t, (uint64_t)clock_ns, 9);
    txt_s(t, " s) would pass its range (");
    txt_g6(t, CLOCK_MAX_US, 6);
    txt_s(t, " s)");
    return 1;
}

/* ------------------------------------------------------------------ 7.4 semantics */
static int check_semantics(const rram_fw_config *c, uint8_t op, const uint8_t *p, rram_text *t) {
    int32_t v_read = 1;
    switch (op) {
    case RRAM_OP_READ: v_read = rdi16(p + 4); break;
    case RRAM_OP_READ_BLOCK: v_read = rdi16(p + 8); break;
    case RRAM_OP_FORM: v_read = rdi16(p + 16); break;
    case RRAM_OP_WRITE_VERIFY: v_read = rdi16(p); break;
    case RRAM_OP_ENDURANCE: v_read = rdi16(p + 32); break;
    default: break;
    }
    if (v_read <= 0) {
        txt_s(t, "read voltage ");
        txt_volts(t, v_read);
        txt_s(t, " V must be positive");
        return 1;
    }
    if (op == RRAM_OP_WRITE_VERIFY) {
        uint32_t n = rd16(p + 26);
        const uint8_t *e = p + 28;
        for (uint32_t i = 1; i < n; i++) /* O(n^2) on at most max_wv_batch entries: no RAM for a bitmap */
            for (uint32_t j = 0; j < i; j++)
                if (rd32(e + 14 * i) == rd32(e + 14 * j)) {
                    txt_s(t, "write-verify batch lists a cell more than once");
                    return 1;
                }
    } else if (op == RRAM_OP_ENDURANCE) {
        uint64_t n_cycles = rd32(p + 8), every = rd32(p + 12);
        uint64_t cells = (uint64_t)rd16(p + 4) * rd16(p + 6);
        if (every > n_cycles) {
            txt_s(t, "read_every ");
            txt_u(t, every);
            txt_s(t, " exceeds n_cycles ");
            txt_u(t, n_cycles);
            txt_s(t, ": no read point");
            return 1;
        }
        if (cells > MAX_STREAM_CELLS) {
            txt_s(t, "endurance block of ");
            txt_u(t, cells);
            txt_s(t, " cells exceeds 65535 cells");
            return 1;
        }
        uint64_t per = rram_max_event_cells(c->max_payload);
        if (cells < per) per = cells;
        if (rd16(p + 34) && rd16(p + 34) < per) per = rd16(p + 34);
        uint64_t events = (n_cycles / every) * ((cells + per - 1) / per);
        if (events > MAX_STREAM_EVENTS) {
            txt_s(t, "endurance run would send ");
            txt_u(t, events);
            txt_s(t, " data events, more than 4294967294: read less often");
            return 1;
        }
    }
    return 0;
}

int rram_check_limits(const rram_fw_config *cfg, uint8_t op, const uint8_t *p, size_t n, int64_t clock_ns,
                      rram_text *why) {
    (void)n;
    if (check_ranges(cfg, op, p, why) || check_duration(cfg, op, p, why) || check_clock(cfg, op, p, clock_ns, why))
        return RRAM_OUT_OF_RANGE;
    if (check_semantics(cfg, op, p, why)) return RRAM_BAD_ARGUMENT;
    return RRAM_OK;
}
