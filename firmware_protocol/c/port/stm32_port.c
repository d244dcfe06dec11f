/* stm32_port.c - TEMPLATE of a board port for an STM32F4 (Cortex-M4F) with ST's HAL: NOT a tested port.
 *
 * It shows where each rram_hal.h call goes on a typical MCU/DAC/ADC test board and compiles against the stub
 * headers in port/stubs/ (the size report links it with empty HAL stubs). Adapt every marked place to your
 * schematic: which DAC drives the bit line, how the row/column mux is addressed, which timer shapes pulses,
 * the TIA/ADC ranges, and the UART. The board constants in board_config() must be what your board can do:
 * the core refuses anything outside them before a pulse.
 *
 * Assumed board: DAC1 ch1 -> pulse amplifier (bipolar, +-5 V, 12 bit, 0 code = -5 V), DAC1 ch2 -> read bias,
 * an external 12-bit DAC on the gate (here: DAC ch2 shared, adapt), 6+6 GPIO lines to the row/col muxes,
 * TIM2 in one-pulse mode gating the pulse switch, ADC1 on the read TIA (16-bit external ADC in practice),
 * ADC2 on the pulse-current TIA with a comparator on the compliance limit, USART2 at 921600 baud, IWDG.
 */
#include <string.h>

#include "rram_fw.h"
#include "stm32f4xx_hal.h"

/* Handles that STM32CubeMX generates (defined in main.c of a real project). */
static DAC_HandleTypeDef hdac;
static ADC_HandleTypeDef hadc_read, hadc_pulse;
static UART_HandleTypeDef huart;
static TIM_HandleTypeDef htim_pulse;
static IWDG_HandleTypeDef hiwdg;
static RNG_HandleTypeDef hrng;
static GPIO_TypeDef mux_port;        /* ADAPT: the GPIO port of the mux address lines */
static TIM_TypeDef pulse_timer;      /* ADAPT: TIM2 */
static volatile uint32_t us_hi, us_lo; /* ADAPT: a 1 MHz free-running timer, extended to 64 bits in its IRQ */
static volatile uint8_t compliance_tripped; /* ADAPT: set by the comparator's EXTI interrupt */

/* UART receive ring, filled one byte at a time by HAL_UART_RxCpltCallback (interrupt). */
static uint8_t rx_ring[512];
static volatile uint16_t rx_head, rx_tail;
static uint8_t rx_byte;

void HAL_UART_RxCpltCallback(UART_HandleTypeDef *h);
void HAL_UART_RxCpltCallback(UART_HandleTypeDef *h) {
    uint16_t next = (uint16_t)((rx_head + 1u) % sizeof rx_ring);
    if (next != rx_tail) { /* a full ring drops the byte: the host's CRC/retry covers it */
        rx_ring[rx_head] = rx_byte;
        rx_head = next;
    }
    HAL_UART_Receive_IT(h, &rx_byte, 1);
}

static int16_t dac_mv[2];

static void port_set_dac_mv(void *ctx, uint8_t channel, int16_t mv) {
    (void)ctx;
    dac_mv[channel & 1u] = mv;
    /* ADAPT: mV -> code of your amplifier; here +-5 V over 12 bits, offset binary */
    uint32_t code = (uint32_t)((mv + 5000) * 4095 / 10000);
    HAL_DAC_SetValue(&hdac, channel == RRAM_DAC_PULSE ? DAC_CHANNEL_1 : DAC_CHANNEL_2, DAC_ALIGN_12B_R, code);
}

static void port_set_gate_mv(void *ctx, uint16_t mv) {
    (void)ctx;
    HAL_DAC_SetValue(&hdac, DAC_CHANNEL_2, DAC_ALIGN_12B_R, (uint32_t)mv * 4095u / 3300u); /* ADAPT */
}

static void port_select_cell(void *ctx, uint16_t row, uint16_t col) {
    (void)ctx;
    for (uint16_t bit = 0; bit < 6; bit++) { /* ADAPT: 64x64 array, 6 address lines per mux */
        HAL_GPIO_WritePin(&mux_port, (uint16_t)(1u << bit), (row >> bit) & 1u ? GPIO_PIN_SET : GPIO_PIN_RESET);
        HAL_GPIO_WritePin(&mux_port, (uint16_t)(1u << (bit + 6)), (col >> bit) & 1u ? GPIO_PIN_SET : GPIO_PIN_RESET);
    }
}

static uint16_t adc_once(ADC_HandleTypeDef *h) {
    HAL_ADC_Start(h);
    HAL_ADC_PollForConversion(h, 1); /* ~1 us conversion: well inside op_overhead_ns */
    return (uint16_t)HAL_ADC_GetValue(h);
}

static uint16_t port_pulse(void *ctx, uint8_t kind, uint32_t width_ns, uint8_t *hit, uint32_t *peak_100na) {
    (void)ctx;
    /* ADAPT: RESET pulses reverse the driver (bit line low); kind tells which way to route */
    HAL_GPIO_WritePin(&mux_port, 1u << 12, kind == RRAM_PULSE_RESET ? GPIO_PIN_SET : GPIO_PIN_RESET);
    compliance_tripped = 0;
    htim_pulse.Instance = &pulse_timer;
    pulse_timer.ARR = width_ns / 10u; /* a 100 MHz timer: the 10 ns width grid of HELLO */
    HAL_TIM_OnePulse_Start(&htim_pulse, TIM_CHANNEL_1);
    while (pulse_timer.CNT) { /* busy-wait for the width: the core never calls two things at once */
    }
    uint16_t code = adc_once(&hadc_pulse); /* sampled at the end of the pulse (sample-and-hold) */
    *hit = compliance_tripped;
    /* ADAPT: code -> |I| in 100 nA units with your pulse-range calibration (12 bit, +-625 uA here) */
    int32_t d = (int32_t)code - 2048;
    *peak_100na = (uint32_t)((d < 0 ? -d : d) * 6250 / 2048);
    return code;
}

static uint16_t port_adc_read(void *ctx, uint8_t *saturated) {
    (void)ctx;
    uint16_t code = adc_once(&hadc_read);
    *saturated = code == 0 || code == 0xFFFFu;
    return code;
}

static uint64_t port_clock_us(void *ctx) {
    (void)ctx;
    return ((uint64_t)us_hi << 32) | us_lo; /* ADAPT: read hi/lo consistently (re-read hi) */
}

static long port_uart_read(void *ctx, uint8_t *buf, size_t max) {
    size_t n = 0;
    (void)ctx;
    while (n < max && rx_tail != rx_head) {
        buf[n++] = rx_ring[rx_tail];
        rx_tail = (uint16_t)((rx_tail + 1u) % sizeof rx_ring);
    }
    return (long)n;
}

static void port_uart_write(void *ctx, const uint8_t *buf, size_t n) {
    (void)ctx;
    while (n) { /* blocking transmit; a DMA ring is the faster choice */
        uint16_t k = (uint16_t)(n > 0xFFFFu ? 0xFFFFu : n);
        HAL_UART_Transmit(&huart, buf, k, HAL_MAX_DELAY);
        buf += k;
        n -= k;
    }
}

static void port_watchdog_kick(void *ctx) {
    (void)ctx;
    HAL_IWDG_Refresh(&hiwdg);
}

static uint32_t port_random_u32(void *ctx) {
    uint32_t r = 0;
    (void)ctx;
    HAL_RNG_GenerateRandomNumber(&hrng, &r);
    return r | 1u;
}

static const rram_hal port_hal = {
    NULL, port_set_dac_mv, port_set_gate_mv, port_select_cell, port_pulse, port_adc_read, port_clock_us,
    port_uart_read, port_uart_write, port_watchdog_kick, port_random_u32,
    /* optional calls: NULL on a real board */
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};

/* ADAPT: what your board declares in HELLO (and its read/pulse-range calibration). */
static void board_config(rram_fw_config *c) {
    memset(c, 0, sizeof *c);
    memcpy(c->board_id, "LAB-RRAM-01", 11);
    c->fw_major = 1;
    c->capabilities = RRAM_CAP_WRITE_VERIFY | RRAM_CAP_STREAMING | RRAM_CAP_IV_SWEEP;
    c->rows = 16, c->cols = 16; /* ADAPT (<= RRAM_FW_MAX_CELLS) */
    c->dac_bits = 12, c->adc_bits = 16;
    c->set_v_min_mv = 0, c->set_v_max_mv = 3000, c->reset_v_min_mv = -3000, c->reset_v_max_mv = 0;
    c->form_v_min_mv = 0, c->form_v_max_mv = 5000, c->read_v_min_mv = 0, c->read_v_max_mv = 300;
    c->gate_v_min_mv = 0, c->gate_v_max_mv = 3300;
    c->width_min_ns = 10, c->width_max_ns = 1000000, c->width_step_ns = 10, c->max_compliance_na = 500000;
    c->max_payload = RRAM_FW_MAX_PAYLOAD;
    c->watchdog_ms = 2000;
    c->stream_window = RRAM_FW_WINDOW_MAX;
    c->max_wv_batch = 64;
    c->op_overhead_ns = 10000, c->max_request_ms = 60000, c->max_hold_ns = 10000000;
    c->response_cache = RRAM_FW_CACHE_DEPTH;
    c->read_ns = 10000, c->pulse_overhead_ns = 1000;
    c->read_max_code = 65535;
    c->read_amps_per_code = 1.25e-10, c->read_offset_code = 2048.0;
    c->pulse_amps_per_code = 3.0517578125e-7, c->pulse_offset_code = 2048.0;
}

static rram_fw fw; /* everything the firmware needs, statically allocated */

int main(void) {
    rram_fw_config cfg;
    /* ADAPT: HAL_Init(), clocks, MX_*_Init() of CubeMX go here */
    board_config(&cfg);
    if (rram_fw_init(&fw, &cfg, &port_hal) != 0) {
        for (;;) { /* a configuration the build cannot hold: rram_fw_error(&fw) says why */
        }
    }
    HAL_UART_Receive_IT(&huart, &rx_byte, 1);
    rram_fw_boot(&fw);
    for (;;) rram_fw_service(&fw);
}
