/* bench_core.c - the firmware core's own time per request (stub HAL: next to no time in the HAL), against
 * the UART byte time at 921,600 baud (10 bits a byte: 10.85 us). Prints one line per request kind. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../src/rram_internal.h"
#include "stub_hal.h"

static stub S;
static rram_fw FW;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void bench(const char *name, uint8_t op, const uint8_t *p, size_t n, int reps) {
    static uint8_t wire[RRAM_FW_MAX_ENCODED];
    size_t out = 0, in = 0;
    uint16_t seq = 1;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) {
        size_t len = make_frame(wire, 0x20, 0, seq, op, p, n);
        seq = (uint16_t)(seq % 0xFFFE + 1);
        in += len;
        rram_fw_feed(&FW, wire, len);
        out += S.out_len;
        S.out_len = 0;
    }
    double per = (now_s() - t0) / reps;
    double bytes = (double)(in + out) / reps;
    printf("%-24s %8.2f us/request   %6.0f wire bytes = %8.1f us at 921600 baud   (%.1f%%)\n", name, per * 1e6, bytes,
           bytes * 10.0 / 921600.0 * 1e6, 100.0 * per / (bytes * 10.0 / 921600.0));
}

int main(void) {
    uint8_t p[512];
    rram_hal hal = stub_hal(&S);
    rram_fw_config cfg = stub_config();
    memset(&S, 0, sizeof S);
    if (rram_fw_init(&FW, &cfg, &hal) != 0) return 1;
    rram_fw_boot(&FW);
    S.out_len = 0;
    uint8_t hello[7] = {2, 0, 0, 1, 0, 0, 0};
    bench("HELLO", RRAM_OP_HELLO, hello, 7, 1);
    memset(p, 0, sizeof p);
    bench("HEARTBEAT", RRAM_OP_HEARTBEAT, p, 2, 200000);
    wr16(p, 1), wr16(p + 2, 1), wr16(p + 4, 100);
    bench("READ", RRAM_OP_READ, p, 6, 200000);
    wr16(p, 1), wr16(p + 2, 1), wr16(p + 4, 1200), wr32(p + 6, 100), wr16(p + 10, 1000);
    bench("SET", RRAM_OP_SET, p, 12, 200000);
    wr16(p, 0), wr16(p + 2, 0), wr16(p + 4, 8), wr16(p + 6, 8), wr16(p + 8, 100);
    bench("READ_BLOCK 8x8", RRAM_OP_READ_BLOCK, p, 10, 50000);
    wr16(p + 4, 3500);
    bench("SET refused (3.5 V)", RRAM_OP_SET, p, 12, 200000);
    return 0;
}
