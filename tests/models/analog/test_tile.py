"""Analog tile config: Table 1 pinned, one-line errors, command-line strings, the training variant."""

from __future__ import annotations

import pytest

from models.analog.tile import PRESETS, AnalogTileConfig, analog_config, describe_fields


def test_ibm_table1_is_the_supplements_table_1():
    c = PRESETS["ibm_table1"]
    assert (c.dac_bits, c.adc_bits, c.out_noise, c.out_bound) == (8, 8, 0.04, 10.0)
    assert (c.tile_rows, c.tile_cols, c.w_noise, c.w_noise_type) == (512, 512, 0.0175, "pcm_read")
    assert (c.ir_drop, c.ir_drop_g_ratio, c.drift_compensation, c.out_scale) == (1.0, 571428.57, "global", "column")
    assert c.input_range and not c.is_ideal
    assert PRESETS["ideal"].is_ideal
    assert AnalogTileConfig() == c  # the defaults are Table 1


def test_training_variant_turns_off_ir_drop_and_compensation():
    t = analog_config("ibm_table1").for_training()
    assert t.ir_drop == 0.0 and t.drift_compensation == "none" and t.adc_bits == 8 and t.w_noise == 0.0175


def test_command_line_values_convert():
    c = analog_config("ibm_table1", adc_bits="none", out_bound="none", dac_bits="6", input_range="false")
    assert (c.adc_bits, c.out_bound, c.dac_bits, c.input_range) == (None, None, 6, False)
    assert analog_config("ideal", out_noise="0.02").out_noise == 0.02
    with pytest.raises(ValueError, match="an ADC .* needs an out_bound"):
        analog_config("ibm_table1", out_bound="none")  # adc_bits stays 8


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"adc_bits": 1}, "adc_bits must be a whole number from 2 to 24"),
        ({"out_noise": -0.1}, "out_noise must be a finite number >= 0"),
        ({"tile_rows": 0}, "tile_rows must be a whole number >= 1"),
        ({"drift_compensation": "local"}, "drift_compensation must be one of none, global, column"),
        ({"adc_bits": "many"}, "adc_bits must be int"),
        ({"colour": 1}, r"unknown field\(s\) colour"),
    ],
)
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message) as info:
        analog_config("ibm_table1", **changes)
    assert "\n" not in str(info.value)


def test_unknown_preset_and_field_docs():
    with pytest.raises(ValueError, match=r"unknown analog tile preset 'pcm' \(known: ibm_table1, ideal\)"):
        analog_config("pcm")
    fields = describe_fields()
    assert [f[0] for f in fields][:3] == ["dac_bits", "adc_bits", "out_noise"]
    assert all(unit and len(help) > 10 for _, _, unit, help in fields)


def test_integer_output_scales_follow_eq1_of_b31():
    import torch

    from models.analog.forward import integer_scales

    gamma = torch.tensor([0.10, 0.25, 0.26, 0.4, 1.0], dtype=torch.float64)
    # N = 4: a_N = 0.25, ceil(gamma / 0.25) = 1, 1, 2, 2, 4 (0.25 / 0.25 is exactly 1 in binary)
    q = integer_scales(gamma, 4)
    assert q.tolist() == [0.25, 0.25, 0.5, 0.5, 1.0]
    assert torch.all(q >= gamma)  # conductances W / q never exceed g_max
    assert integer_scales(gamma, 1).tolist() == [1.0] * 5  # N = 1: one scale per tile
    for n in (2, 3, 16):  # at most N distinct values, every one an integer multiple of max / N
        qn = integer_scales(gamma, n)
        assert torch.unique(qn).numel() <= n and torch.all(qn >= gamma * (1 - 4 * torch.finfo(gamma.dtype).eps))
        k = qn / (gamma.max() / n)
        assert torch.allclose(k, torch.round(k), atol=1e-12)  # float64 division of exact multiples


def test_integer_output_scales_reach_the_tile_forward():
    import torch
    from torch import nn

    from models.analog.forward import plan_layer, tile_scales
    from models.analog.tile import analog_config

    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0, 0, 0], [0, 0.3, 0, 0], [0, 0, 0.9, 0]]))
    cfg = analog_config("ideal", out_scale_levels=3)
    (g,) = tile_scales(plan_layer(lin, cfg), lin.weight, cfg)
    # a_3 = 0.9 / 3: ceil(0.1 / a) = 1, ceil(0.3 / a) = 1 (float32 gives 1 + 1 ulp: taken as 1), ceil(0.9 / a) = 3
    assert torch.allclose(g, torch.tensor([0.3, 0.3, 0.9]), rtol=1e-6)  # float32 products
    with pytest.raises(ValueError, match="out_scale_levels"):
        analog_config("ideal", out_scale_levels=0)
