"""Tests of the simulated board read chain: quantization, saturation, calibration round trip, per-board errors."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backend.device_model import RRAMArray
from sim_backend.device_params import DeviceParams
from sim_backend.ground_truth import load_ground_truth
from sim_backend.read_chain import RangeConfig, ReadChain, ReadChainConfig


def test_codes_are_uint16_and_quantize_to_one_lsb():
    rc = ReadChain(seed=1)
    rng = rc.read
    i = np.linspace(0, 7e-6, 5001)
    conv = rng.convert(i)
    assert conv.codes.dtype == np.uint16 and not conv.saturated.any()
    back = rng.to_current(conv.codes, true=True)
    assert np.max(np.abs(back - i)) <= 0.5 * rng.true_amps_per_code * (1 + 1e-9)
    assert np.all(np.diff(conv.codes.astype(int)) >= 0)
    # one code per true LSB of current
    assert (int(rng.codes(1e-6)) - int(rng.codes(0.0))) == pytest.approx(1e-6 / rng.true_amps_per_code, abs=1)


def test_saturation_at_both_rails():
    rc = ReadChain(seed=2)
    for rng in (rc.read, rc.pulse):
        i = np.array(
            [rng.min_current * 1.5 - 1e-9, rng.min_current * 0.5, rng.max_current * 0.5, rng.max_current * 1.5]
        )
        conv = rng.convert(i)
        np.testing.assert_array_equal(conv.saturated, [True, False, False, True])
        assert conv.codes[0] == 0 and conv.codes[-1] == rng.max_code
        np.testing.assert_array_equal(rc.convert(i, rng.config.name).codes, conv.codes)


def test_ranges_cover_the_device_currents():
    p = DeviceParams()
    rc = ReadChain(seed=3)
    assert rc.read.max_current > 1.8 * p.g_max * p.v_read_ref  # headroom above g_max at 0.1 V
    assert rc.read.min_current < -5 * p.read_noise_frac * p.g_max * p.v_read_ref  # noise below zero is seen
    assert rc.pulse.max_current > p.i_cc_max and rc.pulse.min_current < -p.i_cc_max
    # the read LSB is far below the read noise, so quantization does not dominate
    assert rc.read.amps_per_code < 0.01 * p.read_noise_frac * p.g_max * p.v_read_ref


def test_nominal_calibration_differs_from_true_by_small_seeded_errors():
    gains, offsets = [], []
    for seed in range(200):
        rc = ReadChain(seed=seed)
        gains.append(rc.read.amps_per_code / rc.read.true_amps_per_code - 1)
        offsets.append(rc.read.true_offset_code - rc.read.offset_code)
    assert np.std(gains) == pytest.approx(0.01, rel=0.2)
    assert np.std(offsets) == pytest.approx(2e-3 / ReadChain().read.lsb_v, rel=0.2)
    # nominal inverse is off by the gain/offset error; the true inverse is exact to one LSB
    rc = ReadChain(seed=7)
    i = 3e-6
    code = rc.read.codes(i)
    err_nominal = abs(rc.read.to_current(code) - i)
    err_true = abs(rc.read.to_current(code, true=True) - i)
    assert err_true <= 0.5 * rc.read.true_amps_per_code * (1 + 1e-9)
    assert err_nominal > err_true


def test_seeded_and_reproducible():
    a, b, c = ReadChain(seed=5), ReadChain(seed=5), ReadChain(seed=6)
    assert a.ground_truth() == b.ground_truth()
    assert a.read.true_gain != c.read.true_gain


def test_two_point_calibration_recovers_true_constants():
    rc = ReadChain(seed=8)
    i1, i2 = 0.5e-6, 7.5e-6
    c1, c2 = float(rc.read.codes(i1)), float(rc.read.codes(i2))
    apc = (i2 - i1) / (c2 - c1)
    off = c1 - i1 / apc
    assert apc == pytest.approx(rc.read.true_amps_per_code, rel=2e-4)
    assert off == pytest.approx(rc.read.true_offset_code, abs=1.0)


def test_ground_truth_file_includes_read_chain(tmp_path):
    arr = RRAMArray(4, 4, seed=0)
    rc = ReadChain(seed=9)
    path = tmp_path / "chip.h5"
    arr.write_ground_truth(path, read_chain=rc)
    gt = load_ground_truth(path)
    assert gt["read_chain"]["read"]["true_amps_per_code"] == pytest.approx(rc.read.true_amps_per_code)
    assert gt["read_chain"]["pulse"]["true_offset_code"] == pytest.approx(rc.pulse.true_offset_code)


def test_end_to_end_read_codes_from_array():
    arr = RRAMArray(8, 8, seed=1)
    rc = ReadChain(seed=1)
    r, c = np.divmod(np.arange(64), 8)
    arr.form(r, c, 3.6, 1000.0, 1.0)
    arr.set_pulse(r, c, 1.5, 100.0, 1.1)
    codes = rc.codes(arr.read_current(r, c, 0.1))
    g_est = rc.read.to_current(codes, true=True) / 0.1
    ok = arr.formed & ~arr.stuck_lrs & ~arr.stuck_hrs
    np.testing.assert_allclose(np.median(g_est[ok]), DeviceParams().g_lrs(1.1), rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(adc_bits=17), "adc_bits"),
        (dict(transimpedance_ohm=0.0), "transimpedance_ohm"),
        (dict(offset_v=5.0), "offset_v"),
    ],
)
def test_bad_range_config(kwargs, message):
    base = dict(name="read", transimpedance_ohm=5e5, adc_bits=16, v_ref=4.096, offset_v=0.064)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RangeConfig(**base)


def test_bad_inputs():
    rc = ReadChain()
    with pytest.raises(ValueError, match="finite"):
        rc.read.codes([np.nan])
    with pytest.raises(ValueError, match="unknown current range"):
        rc.codes(1e-6, "write")
    with pytest.raises(ValueError, match="ReadChainConfig"):
        ReadChain(config={"read": 1})
    assert isinstance(ReadChainConfig().read, RangeConfig)
