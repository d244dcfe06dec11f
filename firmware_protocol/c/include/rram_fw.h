/* rram_fw.h - the portable board firmware core of the rram-hil protocol 2.0 (C99, no heap).
 *
 * Bytes in (rram_fw_feed, or rram_fw_service reading the UART through the HAL), bytes out (the HAL's
 * uart_write): COBS framing, CRC-32, the streaming decoder and its NAKs, the request pipeline of
 * PROTOCOL.md 3.9 (sessions, handshake, response cache, watchdog), every opcode of section 6, the limits
 * of section 7 checked before any pulse, ENDURANCE streaming (section 9) and WRITE_VERIFY (section 10).
 * It behaves as sim_backend/firmware.py (FirmwareEngine) does, byte for byte (see README.md for the few
 * documented differences in reason texts).
 *
 * Memory: one `rram_fw` struct holds everything (buffers sized at compile time by the RRAM_FW_* macros
 * below; override them with -D for a smaller board). Declare it static; never copy it while in use
 * except with rram_fw_copy.
 */
#ifndef RRAM_FW_H
#define RRAM_FW_H

#include <stddef.h>
#include <stdint.h>

#include "rram_hal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------ compile-time maxima */
#ifndef RRAM_FW_MAX_PAYLOAD
#define RRAM_FW_MAX_PAYLOAD 8192 /* largest payload (HELLO max_payload may declare less, never more) */
#endif
#ifndef RRAM_FW_CACHE_DEPTH
#define RRAM_FW_CACHE_DEPTH 16 /* response cache entries (PROTOCOL.md 3.3) */
#endif
#ifndef RRAM_FW_WINDOW_MAX
#define RRAM_FW_WINDOW_MAX 32 /* largest stream_window the board may declare */
#endif
#ifndef RRAM_FW_MAX_CELLS
#define RRAM_FW_MAX_CELLS 65536 /* rows * cols of the largest array */
#endif
#ifndef RRAM_FW_QUEUE_BYTES
#define RRAM_FW_QUEUE_BYTES 262144 /* decoded frames waiting to be handled (one feed's worth, plus early ones) */
#endif

#define RRAM_FW_HEADER 8
#define RRAM_FW_CRC 4
#define RRAM_FW_MAX_FRAME (RRAM_FW_HEADER + RRAM_FW_MAX_PAYLOAD + RRAM_FW_CRC)
/* The decoder's run limit: MAX_FRAME + MAX_FRAME / 254 + 2, as firmware_protocol.constants.MAX_ENCODED_SIZE. */
#define RRAM_FW_MAX_ENCODED (RRAM_FW_MAX_FRAME + RRAM_FW_MAX_FRAME / 254 + 2)
/* Cells per endurance data event and entries per write-verify batch at the compile-time payload (PROTOCOL.md 8). */
#define RRAM_FW_EVENT_CELLS ((RRAM_FW_MAX_PAYLOAD - 30) / 4)
#define RRAM_FW_WV_BY_REQ ((RRAM_FW_MAX_PAYLOAD - 28) / 14)
#define RRAM_FW_WV_BY_RSP ((RRAM_FW_MAX_PAYLOAD - 10) / 9)
#define RRAM_FW_MAX_WV (RRAM_FW_WV_BY_REQ < RRAM_FW_WV_BY_RSP ? RRAM_FW_WV_BY_REQ : RRAM_FW_WV_BY_RSP)
/* Codes of one endurance read-point group: max(cells, window * cells per event), see rram_stream.c. */
#define RRAM_FW_GROUP_CODES                                                                                          \
    (RRAM_FW_MAX_CELLS > RRAM_FW_WINDOW_MAX * RRAM_FW_EVENT_CELLS ? RRAM_FW_MAX_CELLS                                \
                                                                  : RRAM_FW_WINDOW_MAX * RRAM_FW_EVENT_CELLS)

/* ------------------------------------------------------------------------------ protocol constants */
#define RRAM_PROTO_MAJOR 2
#define RRAM_PROTO_MINOR 0
#define RRAM_SEQ_UNKNOWN 0xFFFFu

enum rram_frame_type { RRAM_REQUEST = 0, RRAM_RESPONSE = 1, RRAM_EVENT = 2, RRAM_NAK = 3 };

enum rram_opcode {
    RRAM_OP_HELLO = 0x01,
    RRAM_OP_HEARTBEAT = 0x02,
    RRAM_OP_GET_COUNTERS = 0x03,
    RRAM_OP_RELEASE = 0x04,
    RRAM_OP_FORM = 0x10,
    RRAM_OP_SET = 0x11,
    RRAM_OP_RESET = 0x12,
    RRAM_OP_READ = 0x20,
    RRAM_OP_READ_BLOCK = 0x21,
    RRAM_OP_IV_SWEEP = 0x22,
    RRAM_OP_ENDURANCE = 0x30,
    RRAM_OP_STREAM_ACK = 0x31,
    RRAM_OP_STREAM_RESEND = 0x32,
    RRAM_OP_WRITE_VERIFY = 0x40,
    RRAM_OP_ABORT = 0x50,
    RRAM_OP_ADVANCE_CLOCK = 0x60,
    RRAM_EV_BOOT = 0x80,
    RRAM_EV_WATCHDOG = 0x81,
    RRAM_EV_ENDURANCE_DATA = 0x82,
    RRAM_EV_ENDURANCE_END = 0x83
};

enum rram_status {
    RRAM_OK = 0,
    RRAM_BAD_CRC = 1,
    RRAM_BAD_LENGTH = 2,
    RRAM_UNKNOWN_OPCODE = 3,
    RRAM_BAD_ARGUMENT = 4,
    RRAM_OUT_OF_RANGE = 5,
    RRAM_BUSY = 6,
    RRAM_COMPLIANCE_HIT = 7,
    RRAM_ADC_SATURATED = 8,
    RRAM_ABORTED = 9,
    RRAM_INTERNAL = 10,
    RRAM_HANDSHAKE_REQUIRED = 11,
    RRAM_VERSION_MISMATCH = 12,
    RRAM_SESSION_ACTIVE = 13
};

enum rram_capability {
    RRAM_CAP_WRITE_VERIFY = 0x01,
    RRAM_CAP_STREAMING = 0x02,
    RRAM_CAP_VIRTUAL_CLOCK = 0x04,
    RRAM_CAP_IV_SWEEP = 0x08,
    RRAM_CAP_LIFETIME_COUNTERS = 0x10
};

enum rram_board_state { RRAM_STATE_IDLE = 0, RRAM_STATE_STREAMING = 1, RRAM_STATE_SAFE_IDLE = 2 };
enum rram_cell_result { RRAM_WV_CONVERGED = 0, RRAM_WV_MAX_PULSES = 1, RRAM_WV_NOT_FORMED = 2, RRAM_WV_STUCK = 3,
                        RRAM_WV_ABORTED = 4 };
enum rram_stream_end { RRAM_END_COMPLETE = 0, RRAM_END_ABORTED = 1, RRAM_END_WATCHDOG = 2 };
enum rram_session_end { RRAM_SESSION_NONE = 0, RRAM_SESSION_RELEASED = 1, RRAM_SESSION_WATCHDOG = 2,
                        RRAM_SESSION_TAKEN_OVER = 3 };

/* ------------------------------------------------------------------------------ board configuration */
/* What HELLO declares, the board's timing and its nominal calibration. Calibration values are the float64
 * numbers the conversions use (as the Python firmware holds them); the wire carries them as f32. */
typedef struct rram_fw_config {
    char board_id[16]; /* ASCII, 0x00-padded */
    uint8_t fw_major, fw_minor, fw_patch;
    uint32_t capabilities;
    uint16_t rows, cols;
    uint8_t dac_bits, adc_bits;
    int16_t set_v_min_mv, set_v_max_mv, reset_v_min_mv, reset_v_max_mv;
    int16_t form_v_min_mv, form_v_max_mv, read_v_min_mv, read_v_max_mv;
    uint16_t gate_v_min_mv, gate_v_max_mv;
    uint32_t width_min_ns, width_max_ns, width_step_ns, max_compliance_na;
    uint16_t max_payload, watchdog_ms; /* watchdog_ms: the default at boot */
    uint8_t stream_window;
    uint16_t max_wv_batch;
    uint32_t op_overhead_ns, max_request_ms, max_hold_ns;
    uint8_t response_cache; /* cache depth in use, 1 .. RRAM_FW_CACHE_DEPTH */
    uint32_t read_ns;           /* one read's time (WRITE_VERIFY time slots) */
    uint32_t pulse_overhead_ns; /* what a pulse takes beyond its width */
    uint16_t read_max_code;     /* full-scale code of the read range: 2^bits - 1 */
    double read_amps_per_code, read_offset_code;
    double pulse_amps_per_code, pulse_offset_code;
} rram_fw_config;

/* Operations applied to the array since power-up (saturating, never wrapping). */
typedef struct rram_fw_counters {
    uint64_t form, set, reset, reads;
} rram_fw_counters;

/* ------------------------------------------------------------------------------ API */
typedef struct rram_fw rram_fw;

/* Size of the engine struct (for hosts that allocate it, e.g. the ctypes wrapper). */
size_t rram_fw_sizeof(void);
/* Check `cfg` against the compile-time maxima and set the engine up (no boot yet). 0 on success, else -1
 * with a one-line reason in rram_fw_error(fw). `hal` must outlive the engine. */
int rram_fw_init(rram_fw *fw, const rram_fw_config *cfg, const rram_hal *hal);
const char *rram_fw_error(const rram_fw *fw);
/* Power-up or reset: new session id, empty cache and decoder, no stream, handshake required, EV_BOOT sent. */
void rram_fw_boot(rram_fw *fw);
/* Bytes from the host: everything the board sends in reaction goes out through hal->uart_write. */
void rram_fw_feed(rram_fw *fw, const uint8_t *data, size_t n);
/* No input: fire the watchdog if due, send stream events the window allows. */
void rram_fw_poll(rram_fw *fw);
/* Main-loop step of a real board: read what the UART has (feed) or poll; kicks the hardware watchdog. */
void rram_fw_service(rram_fw *fw);
/* Copy a whole engine (state, cache, stream) onto dst, which keeps its own HAL. */
void rram_fw_copy(rram_fw *dst, const rram_fw *src);

/* Read-outs (for the host wrapper and for tests). */
uint32_t rram_fw_session_id(const rram_fw *fw);
uint8_t rram_fw_state(const rram_fw *fw);
uint16_t rram_fw_watchdog_ms(const rram_fw *fw);
rram_fw_counters *rram_fw_counters_of(rram_fw *fw);
uint16_t rram_fw_stream_ids(const rram_fw *fw);
void rram_fw_set_stream_ids(rram_fw *fw, uint16_t ids);
/* HelloInfo payload as the board would send it now (93 bytes into out). */
void rram_fw_hello_info(const rram_fw *fw, uint8_t *out);
/* Sequence numbers held in the response cache (up to RRAM_FW_CACHE_DEPTH, oldest first); returns the count. */
size_t rram_fw_cache_seqs(const rram_fw *fw, uint16_t *out);

/* Building blocks, exposed for the unit tests and the fuzz driver. */
uint32_t rram_crc32(const uint8_t *p, size_t n);
size_t rram_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst);
long rram_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst);

/* ------------------------------------------------------------------------------ the engine (private) */
/* Fields are private to the core; the struct is public only so that a port can allocate it statically. */
typedef struct rram_fw_cache_entry {
    uint8_t used, opcode;
    uint16_t seq;
    uint32_t crc, age;
    uint16_t req_len;
    uint16_t len;
    uint8_t wire[RRAM_FW_MAX_ENCODED];
} rram_fw_cache_entry;

typedef struct rram_fw_window_slot {
    uint32_t event_no;
    uint16_t len;
    uint8_t wire[RRAM_FW_MAX_ENCODED];
} rram_fw_window_slot;

typedef struct rram_fw_stream {
    uint8_t active, ended;
    uint16_t stream_id;
    uint8_t req[36]; /* the ENDURANCE request payload */
    uint16_t row0, col0, nrows, ncols;
    uint32_t n_cycles, read_every, n_points, next_point, cells_per_event, events_per_point;
    uint32_t next_event, acked, cycles_done;
    /* the read-point group being sent: points [group_point0, +group_points), its events built one by one */
    uint32_t group_point0, group_points, group_built, group_base_cycle;
    uint64_t group_us;
    uint16_t lrs[RRAM_FW_GROUP_CODES], hrs[RRAM_FW_GROUP_CODES];
    rram_fw_window_slot window[RRAM_FW_WINDOW_MAX];
} rram_fw_stream;

typedef struct rram_fw_wv_cell {
    uint32_t lo, hi, up_code; /* codes in tolerance [lo, hi] (empty if lo > hi); SET when code < up_code */
    uint32_t slo, shi;        /* codes within tol of the first read (the STUCK rule) */
    uint16_t code, pulses, run, pos;
    uint8_t status, last_up, moved, active;
} rram_fw_wv_cell;

struct rram_fw {
    rram_fw_config cfg;
    const rram_hal *hal;
    char error[120];
    /* boot state */
    uint32_t session_id;
    uint16_t event_seq, stream_ids;
    uint8_t state, state_on_arrival, handshaken, session_alive, prev_end, op_expired, answered_only;
    uint8_t pending_abort_end, resend_pending;
    uint32_t owner_nonce, resend_event;
    uint16_t prev_stream, watchdog_ms;
    uint8_t has_deadline;
    uint64_t deadline_us;
    uint32_t cache_age;
    rram_fw_counters counters;
    /* decoder */
    uint8_t discarding;
    size_t rx_len;
    uint8_t rx[RRAM_FW_MAX_ENCODED];
    uint8_t dec[RRAM_FW_MAX_ENCODED];
    /* decoded items waiting to be handled */
    size_t q_head, q_tail;
    uint8_t queue[RRAM_FW_QUEUE_BYTES];
    /* the request being handled, its response being built */
    uint16_t cur_len;
    uint8_t cur[RRAM_FW_MAX_FRAME];
    uint8_t tx[RRAM_FW_MAX_FRAME];
    uint8_t wire[RRAM_FW_MAX_ENCODED];
    uint8_t formed[(RRAM_FW_MAX_CELLS + 7) / 8];
    rram_fw_cache_entry cache[RRAM_FW_CACHE_DEPTH];
    rram_fw_stream stream;
    rram_fw_wv_cell wv[RRAM_FW_MAX_WV];
    uint16_t wv_rows[RRAM_FW_MAX_WV], wv_cols[RRAM_FW_MAX_WV], wv_codes[RRAM_FW_MAX_WV], wv_level[RRAM_FW_MAX_WV];
    int64_t wv_first[RRAM_FW_MAX_WV];
    uint8_t wv_up[RRAM_FW_MAX_WV];
};

#ifdef __cplusplus
}
#endif

#endif /* RRAM_FW_H */
