/* stm32f4xx_hal.h - STUB of the few ST HAL declarations the port template uses, so that it compiles (and the
 * size report links) without STM32CubeF4. A real port includes ST's own header instead; the names and
 * signatures here follow STM32CubeF4's HAL (stm32f4xx_hal_dac.h, _adc.h, _uart.h, _tim.h, _iwdg.h, _rng.h). */
#ifndef STM32F4XX_HAL_STUB_H
#define STM32F4XX_HAL_STUB_H
#include <stdint.h>

typedef enum { HAL_OK = 0, HAL_ERROR = 1, HAL_BUSY = 2, HAL_TIMEOUT = 3 } HAL_StatusTypeDef;
typedef enum { GPIO_PIN_RESET = 0, GPIO_PIN_SET = 1 } GPIO_PinState;
typedef struct { volatile uint32_t ODR; } GPIO_TypeDef;
typedef struct { volatile uint32_t CNT, ARR, CCR1; } TIM_TypeDef;
typedef struct { int instance; } DAC_HandleTypeDef;
typedef struct { int instance; } ADC_HandleTypeDef;
typedef struct { int instance; } UART_HandleTypeDef;
typedef struct { TIM_TypeDef *Instance; } TIM_HandleTypeDef;
typedef struct { int instance; } IWDG_HandleTypeDef;
typedef struct { int instance; } RNG_HandleTypeDef;

#define DAC_CHANNEL_1 0x00000000u
#define DAC_CHANNEL_2 0x00000010u
#define DAC_ALIGN_12B_R 0x00000000u
#define TIM_CHANNEL_1 0x00000000u
#define HAL_MAX_DELAY 0xFFFFFFFFu

HAL_StatusTypeDef HAL_DAC_SetValue(DAC_HandleTypeDef *hdac, uint32_t channel, uint32_t alignment, uint32_t data);
HAL_StatusTypeDef HAL_ADC_Start(ADC_HandleTypeDef *hadc);
HAL_StatusTypeDef HAL_ADC_PollForConversion(ADC_HandleTypeDef *hadc, uint32_t timeout);
uint32_t HAL_ADC_GetValue(ADC_HandleTypeDef *hadc);
HAL_StatusTypeDef HAL_UART_Transmit(UART_HandleTypeDef *huart, const uint8_t *data, uint16_t size, uint32_t timeout);
HAL_StatusTypeDef HAL_UART_Receive_IT(UART_HandleTypeDef *huart, uint8_t *data, uint16_t size);
HAL_StatusTypeDef HAL_TIM_OnePulse_Start(TIM_HandleTypeDef *htim, uint32_t output_channel);
HAL_StatusTypeDef HAL_IWDG_Refresh(IWDG_HandleTypeDef *hiwdg);
HAL_StatusTypeDef HAL_RNG_GenerateRandomNumber(RNG_HandleTypeDef *hrng, uint32_t *random);
void HAL_GPIO_WritePin(GPIO_TypeDef *port, uint16_t pin, GPIO_PinState state);
uint32_t HAL_GetTick(void);

#endif
