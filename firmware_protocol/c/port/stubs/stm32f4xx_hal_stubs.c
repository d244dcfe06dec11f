/* STUB definitions of the HAL calls (empty), only so that the Cortex-M4 size report links. Not a port. */
#include "stm32f4xx_hal.h"

HAL_StatusTypeDef HAL_DAC_SetValue(DAC_HandleTypeDef *h, uint32_t c, uint32_t a, uint32_t d) {
    (void)h, (void)c, (void)a, (void)d;
    return HAL_OK;
}
HAL_StatusTypeDef HAL_ADC_Start(ADC_HandleTypeDef *h) { return (void)h, HAL_OK; }
HAL_StatusTypeDef HAL_ADC_PollForConversion(ADC_HandleTypeDef *h, uint32_t t) { return (void)h, (void)t, HAL_OK; }
uint32_t HAL_ADC_GetValue(ADC_HandleTypeDef *h) { return (void)h, 0u; }
HAL_StatusTypeDef HAL_UART_Transmit(UART_HandleTypeDef *h, const uint8_t *d, uint16_t n, uint32_t t) {
    (void)h, (void)d, (void)n, (void)t;
    return HAL_OK;
}
HAL_StatusTypeDef HAL_UART_Receive_IT(UART_HandleTypeDef *h, uint8_t *d, uint16_t n) {
    (void)h, (void)d, (void)n;
    return HAL_OK;
}
HAL_StatusTypeDef HAL_TIM_OnePulse_Start(TIM_HandleTypeDef *h, uint32_t c) { return (void)h, (void)c, HAL_OK; }
HAL_StatusTypeDef HAL_IWDG_Refresh(IWDG_HandleTypeDef *h) { return (void)h, HAL_OK; }
HAL_StatusTypeDef HAL_RNG_GenerateRandomNumber(RNG_HandleTypeDef *h, uint32_t *r) {
    (void)h;
    *r = 0x12345678u;
    return HAL_OK;
}
void HAL_GPIO_WritePin(GPIO_TypeDef *p, uint16_t pin, GPIO_PinState s) { (void)p, (void)pin, (void)s; }
uint32_t HAL_GetTick(void) { return 0u; }
