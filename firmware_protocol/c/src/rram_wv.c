/* rram_wv.c - WRITE_VERIFY (PROTOCOL.md 10) as FirmwareEngine._write_verify runs it: fixed time slots,
 * lockstep rounds (every cell still converging gets one pulse per round), ABORT and watchdog polled once
 * per round, the STUCK rule.
 *
 * Decisions on integer codes: G(code) = (code - offset) * amps_per_code / v_read is increasing in the code,
 * so "|G - target| <= tol", "G < target" and "|G - G_first| <= tol" each hold on an interval of codes. The
 * intervals are found once per cell by bisection with the float64 predicate itself (the very expression the
 * Python evaluates), and the per-round loop compares codes only: the same decisions, bit for bit, with no
 * floating point in the loop (an FPU-less MCU pays soft double only at set-up and for final_s).
 */
#include <string.h>

#include "rram_internal.h"

/* Smallest code c in [0, max + 1] with d(c) = G(c) - ref satisfying d >= bound (strict = 0) or d > bound
 * (strict = 1); max + 1 when none. d is non-decreasing in c, so the predicate is monotone. */
static uint32_t first_code(const rram_fw *fw, int16_t v_read, double ref, double bound, int strict) {
    uint32_t lo = 0, hi = (uint32_t)fw->cfg.read_max_code + 1u;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2u;
        double d = fw_g_of_code(fw, (uint16_t)mid, v_read) - ref;
        if (strict ? d > bound : d >= bound)
            hi = mid;
        else
            lo = mid + 1u;
    }
    return lo;
}

void rram_wv_window(const rram_fw *fw, int16_t v_read, double target, double tol, uint32_t *lo, uint32_t *hi,
                    uint32_t *up_code) {
    *lo = first_code(fw, v_read, target, -tol, 0);
    *hi = first_code(fw, v_read, target, tol, 1) - 1u;
    *up_code = first_code(fw, v_read, target, 0.0, 0);
}

static double f32_of(const uint8_t *p) {
    uint32_t bits = rd32(p);
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

static int16_t clamp_min16(int32_t v, int32_t cap) { return (int16_t)(v < cap ? v : cap); }
static int16_t clamp_max16(int32_t v, int32_t cap) { return (int16_t)(v > cap ? v : cap); }

size_t rram_write_verify(rram_fw *fw, const uint8_t *p, size_t len, uint8_t *out, uint8_t *status) {
    const rram_hal *h = fw->hal;
    const uint8_t *e = p + 28;
    int16_t v_read = rdi16(p);
    uint32_t width = rd32(p + 2);
    int32_t set_v0 = rdi16(p + 6), set_v1 = rdi16(p + 8), set_dv = rdi16(p + 10);
    int32_t gate0 = rd16(p + 12), gate1 = rd16(p + 14), dgate = rd16(p + 16);
    int32_t rst_v0 = rdi16(p + 18), rst_v1 = rdi16(p + 20), rst_dv = rdi16(p + 22);
    uint16_t rst_gate = rd16(p + 24), n = rd16(p + 26);
    int64_t read_ns = fw->cfg.read_ns, pulse_ns = (int64_t)width + fw->cfg.pulse_overhead_ns;
    int64_t step_ns = pulse_ns + read_ns, t = fw_now_ns(fw);
    uint16_t m = 0, levels = 0;
    int aborted = 0;
    rram_fw_wv_cell *cell = fw->wv;
    (void)len;
    /* slots: every formed cell owns read + max_pulses x (pulse + read), in batch order, from the clock now */
    for (uint16_t i = 0; i < n; i++) {
        const uint8_t *x = e + 14 * i;
        uint16_t row = rd16(x), col = rd16(x + 2), max_p = rd16(x + 12);
        rram_fw_wv_cell *c = &cell[i];
        memset(c, 0, sizeof *c);
        if (!fw_is_formed(fw, row, col)) {
            c->status = RRAM_WV_NOT_FORMED;
            continue;
        }
        c->status = RRAM_WV_MAX_PULSES;
        c->active = 1;
        fw->wv_first[m] = t + read_ns;
        t += read_ns + (int64_t)max_p * step_ns;
        fw->wv_rows[m] = row;
        fw->wv_cols[m] = col;
        c->pos = i;
        double target = f32_of(x + 4), tol = f32_of(x + 8);
        rram_wv_window(fw, v_read, target, tol, &c->lo, &c->hi, &c->up_code);
        if (max_p > levels) levels = max_p;
        fw->wv_level[m] = i; /* batch position -> entry (reused below as the ramp level) */
        m++;
    }
    /* act[k]: the entry of the k-th cell still converging, in batch order */
    uint16_t *act = fw->wv_codes; /* codes live in the cells; this array holds entry indices */
    for (uint16_t k = 0; k < m; k++) act[k] = fw->wv_level[k];
    if (m) {
        if (h->wv_begin) {
            if (h->wv_begin(h->ctx, m, fw->wv_rows, fw->wv_cols, fw->wv_first, p, levels, fw->wv_level) != 0) goto fault;
            for (uint16_t k = 0; k < m; k++) cell[act[k]].code = fw->wv_level[k];
            fw_count(&fw->counters.reads, m);
        } else {
            for (uint16_t k = 0; k < m; k++) {
                if (h->complete_at_ns) h->complete_at_ns(h->ctx, fw->wv_first[k]);
                cell[act[k]].code = fw_read_cell(fw, fw->wv_rows[k], fw->wv_cols[k], v_read, NULL);
            }
        }
        for (uint16_t k = 0; k < m; k++) {
            rram_fw_wv_cell *c = &cell[act[k]];
            double tol = f32_of(e + 14 * act[k] + 8), g0 = fw_g_of_code(fw, c->code, v_read);
            c->slo = first_code(fw, v_read, g0, -tol, 0);
            c->shi = first_code(fw, v_read, g0, tol, 1) - 1u;
        }
    }
    uint16_t nact = m;
    for (uint32_t j = 0; nact; j++) {
        uint16_t keep_n = 0;
        int any_leave = 0;
        for (uint16_t k = 0; k < nact; k++) {
            rram_fw_wv_cell *c = &cell[act[k]];
            int done = c->code >= c->lo && c->code <= c->hi;
            int leave = done || rd16(e + 14 * act[k] + 12) <= j;
            fw->wv_up[k] = (uint8_t)!leave;
            if (leave) {
                c->status = done ? RRAM_WV_CONVERGED : RRAM_WV_MAX_PULSES;
                c->active = 0;
                any_leave = 1;
            }
        }
        if (any_leave) {
            if (h->wv_retire && h->wv_begin && h->wv_retire(h->ctx, nact, fw->wv_up) != 0) goto fault;
            for (uint16_t k = 0; k < nact; k++) {
                if (!fw->wv_up[k]) continue;
                act[keep_n] = act[k];
                fw->wv_rows[keep_n] = fw->wv_rows[k];
                fw->wv_cols[keep_n] = fw->wv_cols[k];
                fw->wv_first[keep_n] = fw->wv_first[k];
                keep_n++;
            }
            nact = keep_n;
            if (!nact) break;
        }
        if (!fw_keep_going(fw) || fw_abort_queued(fw)) { /* the host fell silent, or sent ABORT */
            for (uint16_t k = 0; k < nact; k++) cell[act[k]].status = RRAM_WV_ABORTED;
            aborted = 1;
            break;
        }
        uint16_t n_up = 0;
        for (uint16_t k = 0; k < nact; k++) {
            rram_fw_wv_cell *c = &cell[act[k]];
            uint8_t up = (uint8_t)(c->code < c->up_code);
            uint16_t level = (uint16_t)(up == c->last_up ? c->run : 0); /* a turn restarts the other ramp */
            c->run = (uint16_t)(level + 1u);
            c->last_up = up;
            fw->wv_up[k] = up;
            fw->wv_level[k] = level;
            n_up = (uint16_t)(n_up + up);
        }
        if (h->wv_round && h->wv_begin) {
            if (h->wv_round(h->ctx, nact, fw->wv_up, fw->wv_level, fw->wv_level) != 0) goto fault;
            for (uint16_t k = 0; k < nact; k++) cell[act[k]].code = fw->wv_level[k];
            fw_count(&fw->counters.reads, nact);
        } else {
            for (uint16_t k = 0; k < nact; k++) {
                rram_fw_wv_cell *c = &cell[act[k]];
                int32_t lv = fw->wv_level[k];
                uint8_t hit;
                uint32_t peak;
                int64_t at = fw->wv_first[k] + (int64_t)c->pulses * step_ns + pulse_ns;
                h->select_cell(h->ctx, fw->wv_rows[k], fw->wv_cols[k]);
                if (fw->wv_up[k]) {
                    h->set_dac_mv(h->ctx, RRAM_DAC_PULSE, clamp_min16(set_v0 + lv * set_dv, set_v1));
                    h->set_gate_mv(h->ctx, (uint16_t)clamp_min16(gate0 + lv * dgate, gate1));
                } else {
                    h->set_dac_mv(h->ctx, RRAM_DAC_PULSE, clamp_max16(rst_v0 + lv * rst_dv, rst_v1));
                    h->set_gate_mv(h->ctx, rst_gate);
                }
                if (h->complete_at_ns) h->complete_at_ns(h->ctx, at);
                (void)h->pulse(h->ctx, fw->wv_up[k] ? RRAM_PULSE_SET : RRAM_PULSE_RESET, width, &hit, &peak);
                if (h->complete_at_ns) h->complete_at_ns(h->ctx, at + read_ns);
                c->code = fw_read_cell(fw, fw->wv_rows[k], fw->wv_cols[k], v_read, NULL);
            }
        }
        fw_count(&fw->counters.set, n_up);
        fw_count(&fw->counters.reset, (uint64_t)(nact - n_up));
        for (uint16_t k = 0; k < nact; k++) {
            rram_fw_wv_cell *c = &cell[act[k]];
            c->pulses++;
            if (c->code < c->slo || c->code > c->shi) c->moved = 1;
        }
    }
    if (m && h->wv_end && h->wv_begin) h->wv_end(h->ctx);
    fw_ground(fw);
    if (n && h->advance_to_ns) h->advance_to_ns(h->ctx, t);
    wr64(out, fw_now_us(fw));
    wr16(out + 8, n);
    for (uint16_t i = 0; i < n; i++) {
        rram_fw_wv_cell *c = &cell[i];
        uint8_t *r = out + 10 + 9 * (size_t)i;
        if (c->status == RRAM_WV_MAX_PULSES && c->pulses >= 4 && !c->moved) c->status = RRAM_WV_STUCK;
        wrf32(r, c->status == RRAM_WV_NOT_FORMED ? 0.0 : fw_g_of_code(fw, c->code, v_read));
        wr16(r + 4, c->status == RRAM_WV_NOT_FORMED ? 0 : c->code);
        wr16(r + 6, c->pulses);
        r[8] = c->status;
    }
    if (aborted) *status = RRAM_ABORTED;
    return 10 + 9 * (size_t)n;
fault:
    if (h->wv_end) h->wv_end(h->ctx);
    fw_ground(fw);
    {
        rram_text tx;
        txt_init(&tx, (char *)out, 200);
        txt_s(&tx, "internal error: WRITE_VERIFY failed in the HAL");
        *status = RRAM_INTERNAL;
        return tx.len;
    }
}
