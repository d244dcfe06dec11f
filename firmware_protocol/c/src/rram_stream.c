/* rram_stream.c - ENDURANCE streaming (PROTOCOL.md 9) as FirmwareEngine runs it: read points cycled in
 * groups fixed by the request and the window (never by when the host acknowledges), at most stream_window
 * events unacknowledged, every sent event kept for STREAM_RESEND, the trailing cycles, the numbered end.
 *
 * Memory: the codes of one group of read points (RRAM_FW_GROUP_CODES per polarity) and one wire frame per
 * window slot. Events are built from the group's codes when the window has room, then kept as sent.
 */
#include <string.h>

#include "rram_internal.h"

static rram_text bad_argument(uint8_t *out, uint8_t *status) {
    rram_text t;
    txt_init(&t, (char *)out, 200);
    *status = RRAM_BAD_ARGUMENT;
    return t;
}

size_t rram_endurance(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    rram_fw_stream *s = &fw->stream;
    uint32_t cells = (uint32_t)rd16(p + 4) * rd16(p + 6);
    uint32_t per = rram_max_event_cells(fw->cfg.max_payload);
    (void)status;
    if (cells < per) per = cells;
    if (rd16(p + 34) && rd16(p + 34) < per) per = rd16(p + 34);
    fw->stream_ids = (uint16_t)(fw->stream_ids % 0xFFFEu + 1u); /* 1 .. 0xFFFE: 0xFFFF means "no stream" */
    s->active = 1;
    s->ended = 0;
    s->stream_id = fw->stream_ids;
    memcpy(s->req, p, sizeof s->req);
    s->row0 = rd16(p);
    s->col0 = rd16(p + 2);
    s->nrows = rd16(p + 4);
    s->ncols = rd16(p + 6);
    s->n_cycles = rd32(p + 8);
    s->read_every = rd32(p + 12);
    s->n_points = s->n_cycles / s->read_every;
    s->cells_per_event = per;
    s->events_per_point = (cells + per - 1u) / per;
    s->next_point = s->next_event = s->acked = s->cycles_done = 0;
    s->group_point0 = s->group_points = s->group_built = s->group_base_cycle = 0;
    fw->pending_abort_end = 0;
    fw->state = RRAM_STATE_STREAMING;
    wr16(out, s->stream_id);
    wr32(out + 2, s->n_points * s->events_per_point);
    wr16(out + 6, (uint16_t)cells);
    wr64(out + 8, fw_now_us(fw));
    return 16;
}

static int stream_check(rram_fw *fw, uint16_t sid, uint8_t *out, uint8_t *status, size_t *len) {
    if (fw->stream.active && fw->stream.stream_id == sid) return 0;
    rram_text t = bad_argument(out, status);
    txt_s(&t, "no running stream ");
    txt_u(&t, sid);
    *len = t.len;
    return 1;
}

size_t rram_stream_ack(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    rram_fw_stream *s = &fw->stream;
    uint16_t sid = rd16(p);
    uint32_t next = rd32(p + 2);
    size_t len;
    if (stream_check(fw, sid, out, status, &len)) return len;
    if (next > s->next_event) {
        rram_text t = bad_argument(out, status);
        txt_s(&t, "ack ");
        txt_u(&t, next);
        txt_s(&t, " is beyond the last event sent (");
        txt_i(&t, (int64_t)s->next_event - 1);
        txt_s(&t, ")");
        return t.len;
    }
    if (next > s->acked) s->acked = next;
    uint32_t n_events = s->n_points * s->events_per_point;
    if (s->ended && s->acked > n_events) {
        s->active = 0;
        fw->state = RRAM_STATE_IDLE;
    }
    wr16(out, sid);
    wr32(out + 2, s->acked);
    return 6;
}

size_t rram_stream_resend(rram_fw *fw, const uint8_t *p, uint8_t *out, uint8_t *status) {
    rram_fw_stream *s = &fw->stream;
    uint16_t sid = rd16(p);
    uint32_t k = rd32(p + 2);
    size_t len;
    if (stream_check(fw, sid, out, status, &len)) return len;
    if (k < s->acked || k >= s->next_event) {
        rram_text t = bad_argument(out, status);
        txt_s(&t, "event ");
        txt_u(&t, k);
        txt_s(&t, " is not in the window [");
        txt_u(&t, s->acked);
        txt_s(&t, ", ");
        txt_u(&t, s->next_event);
        txt_s(&t, ")");
        return t.len;
    }
    fw->resend_pending = 1; /* the event frame follows the reply */
    fw->resend_event = k;
    wr16(out, sid);
    wr32(out + 2, k);
    return 6;
}

void rram_stream_end(rram_fw *fw, uint8_t reason, int numbered) {
    rram_fw_stream *s = &fw->stream;
    uint8_t ev[19];
    uint32_t n_events = s->n_points * s->events_per_point;
    wr16(ev, s->stream_id);
    wr32(ev + 2, numbered ? n_events : s->next_event);
    wr32(ev + 6, s->cycles_done);
    ev[10] = reason;
    wr64(ev + 11, fw_now_us(fw));
    if (numbered) {
        rram_fw_window_slot *slot = &s->window[n_events % fw->cfg.stream_window];
        slot->event_no = n_events;
        slot->len = (uint16_t)fw_emit_event(fw, RRAM_EV_ENDURANCE_END, ev, sizeof ev, slot->wire);
        s->next_event = n_events + 1u;
        s->ended = 1;
    } else {
        fw_emit_event(fw, RRAM_EV_ENDURANCE_END, ev, sizeof ev, NULL);
        s->active = 0;
        fw->state = RRAM_STATE_IDLE;
    }
}

/* n_cycles cycles of every cell of the block, reading after every read_every-th (lrs/hrs: read point major).
 * 0 on success. The HAL's cycle_block fast path, else one cell after the other with real pulses. */
static int cycle(rram_fw *fw, uint32_t n_cycles, uint32_t read_every, uint16_t *lrs, uint16_t *hrs) {
    rram_fw_stream *s = &fw->stream;
    const rram_hal *h = fw->hal;
    const uint8_t *r = s->req;
    uint32_t m = (uint32_t)s->nrows * s->ncols, points = n_cycles / read_every;
    int16_t set_v = rdi16(r + 16), reset_v = rdi16(r + 24), v_read = rdi16(r + 32);
    uint32_t set_w = rd32(r + 18), reset_w = rd32(r + 26);
    uint16_t set_g = rd16(r + 22), reset_g = rd16(r + 30);
    if (h->cycle_block) {
        if (h->cycle_block(h->ctx, s->row0, s->col0, s->nrows, s->ncols, n_cycles, read_every, set_v, set_w, set_g,
                           reset_v, reset_w, reset_g, v_read, lrs, hrs) != 0)
            return -1;
        fw_count(&fw->counters.reads, 2ull * points * m);
    } else {
        uint32_t k = 0;
        for (uint16_t row = 0; row < s->nrows; row++)
            for (uint16_t col = 0; col < s->ncols; col++, k++) {
                uint16_t rr = (uint16_t)(s->row0 + row), cc = (uint16_t)(s->col0 + col);
                for (uint32_t cyc = 1; cyc <= n_cycles; cyc++) {
                    uint8_t hit;
                    uint32_t peak;
                    int read = cyc % read_every == 0;
                    h->select_cell(h->ctx, rr, cc);
                    h->set_dac_mv(h->ctx, RRAM_DAC_PULSE, set_v);
                    h->set_gate_mv(h->ctx, set_g);
                    (void)h->pulse(h->ctx, RRAM_PULSE_SET, set_w, &hit, &peak);
                    if (read) lrs[(cyc / read_every - 1u) * m + k] = fw_read_cell(fw, rr, cc, v_read, NULL);
                    h->select_cell(h->ctx, rr, cc);
                    h->set_dac_mv(h->ctx, RRAM_DAC_PULSE, reset_v);
                    h->set_gate_mv(h->ctx, reset_g);
                    (void)h->pulse(h->ctx, RRAM_PULSE_RESET, reset_w, &hit, &peak);
                    if (read) hrs[(cyc / read_every - 1u) * m + k] = fw_read_cell(fw, rr, cc, v_read, NULL);
                    if (h->watchdog_kick) h->watchdog_kick(h->ctx);
                }
            }
        fw_ground(fw);
    }
    fw_count(&fw->counters.set, (uint64_t)n_cycles * m);
    fw_count(&fw->counters.reset, (uint64_t)n_cycles * m);
    return 0;
}

/* The q-th event of the current group, built into fw->tx and sent into its window slot. */
static void send_group_event(rram_fw *fw, uint32_t q) {
    rram_fw_stream *s = &fw->stream;
    uint32_t m = (uint32_t)s->nrows * s->ncols;
    uint32_t pt = q / s->events_per_point, ev = q % s->events_per_point;
    uint32_t lo = ev * s->cells_per_event, hi = lo + s->cells_per_event;
    uint32_t event_no = (s->group_point0 + pt) * s->events_per_point + ev;
    uint8_t *o = fw->tx;
    if (hi > m) hi = m;
    wr16(o, s->stream_id);
    wr32(o + 2, event_no);
    wr32(o + 6, s->group_base_cycle + (pt + 1u) * s->read_every);
    wr64(o + 10, s->group_us);
    wr16(o + 18, (uint16_t)lo);
    wr16(o + 20, (uint16_t)(hi - lo));
    wrf32(o + 22, fw->cfg.read_amps_per_code);
    wrf32(o + 26, fw->cfg.read_offset_code);
    for (uint32_t i = lo; i < hi; i++) {
        wr16(o + 30 + 2 * (i - lo), s->lrs[pt * m + i]);
        wr16(o + 30 + 2 * (hi - lo) + 2 * (i - lo), s->hrs[pt * m + i]);
    }
    rram_fw_window_slot *slot = &s->window[s->next_event % fw->cfg.stream_window];
    slot->event_no = s->next_event;
    slot->len = (uint16_t)fw_emit_event(fw, RRAM_EV_ENDURANCE_DATA, o, 30 + 4 * (size_t)(hi - lo), slot->wire);
    s->next_event++;
}

void rram_stream_pump(rram_fw *fw) {
    rram_fw_stream *s = &fw->stream;
    uint32_t window = fw->cfg.stream_window;
    if (!s->active || s->ended) return;
    while (s->next_event - s->acked < window) {
        if (s->group_built == s->group_points * s->events_per_point) {
            if (s->next_point < s->n_points) {
                uint32_t per_group = window / s->events_per_point, k;
                if (per_group < 1) per_group = 1;
                k = s->n_points - s->next_point < per_group ? s->n_points - s->next_point : per_group;
                if (cycle(fw, k * s->read_every, s->read_every, s->lrs, s->hrs) != 0) {
                    rram_stream_end(fw, RRAM_END_ABORTED, 0); /* a fault while cycling ends the stream */
                    return;
                }
                s->group_point0 = s->next_point;
                s->group_points = k;
                s->group_built = 0;
                s->group_base_cycle = s->cycles_done;
                s->group_us = fw_now_us(fw);
                s->cycles_done += k * s->read_every;
                s->next_point += k;
                continue;
            }
            uint32_t rest = s->n_cycles - s->cycles_done; /* cycles after the last read point */
            if (rest > 0) {
                if (cycle(fw, rest, rest + 1u, s->lrs, s->hrs) != 0) {
                    rram_stream_end(fw, RRAM_END_ABORTED, 0);
                    return;
                }
                s->cycles_done += rest;
            }
            rram_stream_end(fw, RRAM_END_COMPLETE, 1);
            return;
        }
        send_group_event(fw, s->group_built++);
    }
}
