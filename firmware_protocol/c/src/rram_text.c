/* rram_text.c - reason texts without printf: integers, millivolts as volts, and "%.6g" of exact decimals.
 *
 * The core words its refusals as the Python firmware does (firmware_protocol/limits.py), so the texts are
 * byte-identical. "%.6g" is done from the integer (a count of 10^-scale units): digits exact, rounded to six
 * significant ones. An exact tie (the digits after the sixth are 5000...) is where Python, which formats the
 * float64 nearest the quotient, may round either way: with RRAM_FW_FLOAT_TEXT (default 1) the core finds the
 * side of that float64 with one fma; with 0 (an MCU build without libm) it rounds ties half to even.
 */
#include <string.h>

#include "rram_internal.h"

#ifndef RRAM_FW_FLOAT_TEXT
#define RRAM_FW_FLOAT_TEXT 1
#endif
#if RRAM_FW_FLOAT_TEXT
#include <math.h>
#endif

void wrf32(uint8_t *p, double v) {
    float f = (float)v;
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    wr32(p, bits);
}

void txt_init(rram_text *t, char *buf, size_t cap) {
    t->buf = buf;
    t->len = 0;
    t->cap = cap;
}

static void txt_c(rram_text *t, char c) {
    if (t->len < t->cap) t->buf[t->len++] = c;
}

void txt_s(rram_text *t, const char *s) {
    while (*s) txt_c(t, *s++);
}

void txt_u(rram_text *t, uint64_t v) {
    char d[24];
    int n = 0;
    do {
        d[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v);
    while (n) txt_c(t, d[--n]);
}

void txt_i(rram_text *t, int64_t v) {
    if (v < 0) {
        txt_c(t, '-');
        txt_u(t, (uint64_t)(-(v + 1)) + 1u);
    } else {
        txt_u(t, (uint64_t)v);
    }
}

static void txt_hex(rram_text *t, unsigned v, int digits, int upper) {
    const char *hex = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--) txt_c(t, hex[(v >> (4 * i)) & 0xFu]);
}

void txt_hex2(rram_text *t, unsigned v) { txt_hex(t, v, 2, 0); }
void txt_hex4(rram_text *t, unsigned v) { txt_hex(t, v, 4, 1); }

void txt_volts(rram_text *t, int32_t mv) {
    uint32_t a = mv < 0 ? (uint32_t)(-(int64_t)mv) : (uint32_t)mv;
    if (mv < 0) txt_c(t, '-');
    txt_u(t, a / 1000u);
    txt_c(t, '.');
    txt_c(t, (char)('0' + (int)(a / 100u % 10u)));
    txt_c(t, (char)('0' + (int)(a / 10u % 10u)));
    txt_c(t, (char)('0' + (int)(a % 10u)));
}

#if RRAM_FW_FLOAT_TEXT
/* Side of the float64 nearest num / 10^scale against the exact value: > 0 above, < 0 below, 0 exact. */
static int float_side(uint64_t num, unsigned scale) {
    double p = 1.0;
    for (unsigned i = 0; i < scale; i++) p *= 10.0; /* exact up to 1e22 */
    if (num > (1ull << 53)) return 0; /* (double)num itself rounded: no exact reference, treat as a tie */
    double q = (double)num / p;
    double r = fma(q, p, -(double)num);
    return r > 0 ? 1 : (r < 0 ? -1 : 0);
}
#endif

void txt_g6(rram_text *t, uint64_t num, unsigned scale) {
    char d[24];
    int n = 0;
    if (num == 0) {
        txt_c(t, '0');
        return;
    }
    {
        uint64_t v = num;
        char r[24];
        int k = 0;
        while (v) {
            r[k++] = (char)('0' + (int)(v % 10u));
            v /= 10u;
        }
        while (k) d[n++] = r[--k];
    }
    int exp10 = n - 1 - (int)scale; /* decimal exponent of the leading digit */
    char s[8];
    int keep = n < 6 ? n : 6;
    memcpy(s, d, (size_t)keep);
    for (int i = keep; i < 6; i++) s[i] = '0';
    if (n > 6) {
        int up = 0;
        if (d[6] > '5') {
            up = 1;
        } else if (d[6] == '5') {
            int rest_zero = 1;
            for (int i = 7; i < n; i++) rest_zero &= d[i] == '0';
            if (!rest_zero) {
                up = 1;
            } else {
                int side = 0;
#if RRAM_FW_FLOAT_TEXT
                side = float_side(num, scale);
#endif
                up = side > 0 || (side == 0 && ((s[5] - '0') & 1));
            }
        }
        if (up) {
            int i = 5;
            while (i >= 0 && s[i] == '9') s[i--] = '0';
            if (i >= 0) {
                s[i]++;
            } else { /* 999999.5 -> 1000000: one more digit, shift */
                memmove(s + 1, s, 5);
                s[0] = '1';
                exp10++;
            }
        }
    }
    int last = 5; /* strip trailing zeros of the 6 significant digits */
    while (last > 0 && s[last] == '0') last--;
    if (exp10 < -4 || exp10 >= 6) {
        txt_c(t, s[0]);
        if (last > 0) {
            txt_c(t, '.');
            for (int i = 1; i <= last; i++) txt_c(t, s[i]);
        }
        txt_c(t, 'e');
        txt_c(t, exp10 < 0 ? '-' : '+');
        int e = exp10 < 0 ? -exp10 : exp10;
        if (e < 10) txt_c(t, '0');
        txt_u(t, (uint64_t)e);
        return;
    }
    if (exp10 < 0) {
        txt_s(t, "0.");
        for (int i = -1; i > exp10; i--) txt_c(t, '0');
        for (int i = 0; i <= last; i++) txt_c(t, s[i]);
        return;
    }
    for (int i = 0; i <= exp10; i++) txt_c(t, s[i]);
    if (last > exp10) {
        txt_c(t, '.');
        for (int i = exp10 + 1; i <= last; i++) txt_c(t, s[i]);
    }
}
