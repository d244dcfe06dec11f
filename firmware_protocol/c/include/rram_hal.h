/* rram_hal.h - the hardware abstraction a board port fills in (C99).
 *
 * The firmware core (rram_fw.h) never touches a register: everything it does to the world goes through
 * one `rram_hal` struct of function pointers and the `ctx` pointer handed back to each of them. A port
 * writes the REQUIRED calls; the OPTIONAL ones are NULL on a real board and exist for virtual-clock boards
 * such as the simulator (sim_backend/c_firmware.py), where the core must reproduce the Python firmware's
 * numbers bit for bit.
 *
 * Timing contract: every call returns; none may block longer than stated. The core calls them from one
 * thread (the main loop); none is called from an interrupt. Voltages are millivolts across the cell
 * (bit line minus source line), widths nanoseconds, as on the wire (PROTOCOL.md 4).
 */
#ifndef RRAM_HAL_H
#define RRAM_HAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* DAC channels the core drives. A port maps them to its own converters/drivers. */
enum rram_dac_channel {
    RRAM_DAC_PULSE = 0, /* amplitude of the next pulse (signed: SET/FORM > 0, RESET < 0) */
    RRAM_DAC_READ = 1   /* read bias for adc_read (> 0) */
};

/* What a pulse is for: the port routes the driver polarity and the current range by it. */
enum rram_pulse_kind {
    RRAM_PULSE_FORM = 0,  /* forming pulse, positive */
    RRAM_PULSE_SET = 1,   /* SET pulse, positive */
    RRAM_PULSE_RESET = 2, /* RESET pulse, negative (bit line below source line) */
    RRAM_PULSE_SWEEP = 3  /* one I-V sweep point, either sign (or 0 V); DC hold when width is a hold time */
};

typedef struct rram_hal {
    void *ctx; /* handed back to every call */

    /* ---------------------------------------------------------------- REQUIRED */

    /* Set DAC `channel` to `mv` millivolts. Settles within the board's op_overhead_ns before the next pulse
     * or read. Out-of-range values never reach it (the core checks the declared limits first). */
    void (*set_dac_mv)(void *ctx, uint8_t channel, int16_t mv);

    /* Set the access transistor's gate to `mv` (0 = off). Same settling contract as set_dac_mv. */
    void (*set_gate_mv)(void *ctx, uint16_t mv);

    /* Route the drivers to cell (row, col); row < rows, col < cols always. Takes < 1 us typically. */
    void (*select_cell)(void *ctx, uint16_t row, uint16_t col);

    /* Apply one pulse of `kind` and `width_ns` to the selected cell at the DAC/gate values set before, and
     * return the pulse-range ADC code sampled at its end. Sets *compliance_hit to 1 when the current passed
     * the board's max_compliance_na (the protection cut it), else 0, and *peak_100na to the magnitude of the
     * current in units of 100 nA (only used to word the COMPLIANCE_HIT text). Blocks for the width plus the
     * board's pulse overhead (op_overhead_ns). */
    uint16_t (*pulse)(void *ctx, uint8_t kind, uint32_t width_ns, uint8_t *compliance_hit, uint32_t *peak_100na);

    /* Read the selected cell at the RRAM_DAC_READ bias: the read-range ADC code; *saturated = 1 when the
     * current was outside the ADC range (the code is then at a rail). Blocks for one read (<= op_overhead_ns). */
    uint16_t (*adc_read)(void *ctx, uint8_t *saturated);

    /* Microseconds since power-up, monotonic (the watchdog's clock). Never blocks. */
    uint64_t (*clock_us)(void *ctx);

    /* Non-blocking UART input: copy up to `max` received bytes to buf and return how many (0: none).
     * Return a negative value when input cannot be heard now: the core then never stops a long request for
     * silence (PROTOCOL.md 3.7, a board that cannot hear its input while a request runs). */
    long (*uart_read)(void *ctx, uint8_t *buf, size_t max);

    /* UART output: send n bytes (one whole wire frame, delimiter included). May block until queued. */
    void (*uart_write)(void *ctx, const uint8_t *buf, size_t n);

    /* Kick the MCU's hardware watchdog (not the protocol watchdog). Called between pulses and per loop. */
    void (*watchdog_kick)(void *ctx);

    /* A random 32-bit value (TRNG, or ADC noise): the session id picked at boot. */
    uint32_t (*random_u32)(void *ctx);

    /* ---------------------------------------------------------------- OPTIONAL (NULL on a real board) */

    /* Nanoseconds on the board clock for time stamps (a virtual clock). NULL: clock_us() * 1000. */
    int64_t (*now_ns)(void *ctx);

    /* Complete the NEXT pulse or read at board time t_ns (WRITE_VERIFY's fixed time slots, PROTOCOL.md 10).
     * A real port may busy-wait to it or leave it NULL (then operations run as soon as they can). */
    void (*complete_at_ns)(void *ctx, int64_t t_ns);

    /* Let the clock pass to t_ns (end of a WRITE_VERIFY's slots). NULL: nothing to do. */
    void (*advance_to_ns)(void *ctx, int64_t t_ns);

    /* ADVANCE_CLOCK (virtual-clock boards only): let `ns` of device time pass at once. Returns 0 on success. */
    int (*advance_ns)(void *ctx, int64_t ns);

    /* Whether cell (row, col) is formed (the chip's own truth). NULL: the core's bitmap of FORMs that reached
     * their threshold since boot. */
    int (*is_formed)(void *ctx, uint16_t row, uint16_t col);

    /* Fast paths of a virtual board whose physics is vectorised (the simulator's RRAMArray): each must give
     * exactly what the per-cell calls above would, so they are pure speed-ups. NULL: the core loops. */

    /* READ_BLOCK: read the block row-major, one cell after the other, at v_read_mv; codes[n] out. */
    int (*read_block)(void *ctx, uint16_t row0, uint16_t col0, uint16_t nrows, uint16_t ncols, int16_t v_read_mv,
                      uint16_t *codes);

    /* ENDURANCE: n_cycles SET/RESET cycles on every cell of the block, reading LRS and HRS after every
     * read_every-th cycle; lrs/hrs hold (n_cycles / read_every) x (nrows * ncols) codes, read point major. */
    int (*cycle_block)(void *ctx, uint16_t row0, uint16_t col0, uint16_t nrows, uint16_t ncols, uint32_t n_cycles,
                       uint32_t read_every, int16_t set_v_mv, uint32_t set_width_ns, uint16_t set_gate_mv,
                       int16_t reset_v_mv, uint32_t reset_width_ns, uint16_t reset_gate_mv, int16_t v_read_mv,
                       uint16_t *lrs, uint16_t *hrs);

    /* WRITE_VERIFY in lockstep rounds (the simulator's VerifyBatch): begin with the n formed cells, their
     * first-read times and the request's ramps (req = the request payload; its 28-byte fixed part holds them,
     * `levels` = the largest max_pulses of these cells, the ramps' length), returning each cell's first read; each round pulses the active cells (up[i]: SET at ramp step
     * level[i], else RESET at level[i]) and returns their verify-read codes; retire drops the cells whose
     * keep[i] is 0; end closes the batch (also after an abort). All return 0 on success. */
    int (*wv_begin)(void *ctx, uint16_t n, const uint16_t *rows, const uint16_t *cols, const int64_t *first_read_ns,
                    const uint8_t *req, uint16_t levels, uint16_t *codes);
    int (*wv_round)(void *ctx, uint16_t n, const uint8_t *up, const uint16_t *level, uint16_t *codes);
    int (*wv_retire)(void *ctx, uint16_t n, const uint8_t *keep);
    void (*wv_end)(void *ctx);
} rram_hal;

#ifdef __cplusplus
}
#endif

#endif /* RRAM_HAL_H */
