"""Weight-to-device mappings against hand-computed values (NeFT eq. 12-15; analog conductance pairs)."""

import pytest
import torch

from models.mapping import AnalogMapping, BitSlicedMapping, DeviceState

torch.set_num_threads(1)


def test_bitsliced_codes_and_devices_by_hand():
    mp = BitSlicedMapping(bits=4, bits_per_device=2)
    w = torch.tensor([1.0, -0.6, 0.2, 0.0])
    mag, sign, step = mp.codes(w)
    assert step.item() == pytest.approx(1 / 15)
    assert mag.tolist() == [15, 9, 3, 0]  # 0.6*15 = 9, 0.2*15 = 3
    assert sign.tolist() == [1, -1, 1, 1]
    st = mp.to_devices(w)
    # LSB device first: 15 = 11|11, 9 = 10|01, 3 = 00|11
    assert st.levels.shape == (1, 4, 2)
    assert st.levels[0].tolist() == [[3, 3], [1, 2], [3, 0], [0, 0]]
    assert torch.allclose(mp.from_devices(st), torch.tensor([1.0, -0.6, 0.2, 0.0]), atol=1e-7)


def test_bitsliced_eq15_device_error_adds_scaled_by_significance():
    mp = BitSlicedMapping(bits=4, bits_per_device=2)
    w = torch.tensor([1.0, -0.6])
    st = mp.to_devices(w)
    noisy = DeviceState(st.levels + torch.tensor([[[0.1, -0.2], [0.3, 0.05]]]), st.sign, st.step, st.weight_ndim)
    out = mp.from_devices(noisy)
    # W_p = W_d + step * sum_j dg_j 2^{jK}; the negative weight's error flips with its sign
    assert out[0].item() == pytest.approx(1.0 + (0.1 - 0.2 * 4) / 15, abs=1e-6)
    assert out[1].item() == pytest.approx(-0.6 - (0.3 + 0.05 * 4) / 15, abs=1e-6)


def test_bitsliced_8bit_neft_default():
    mp = BitSlicedMapping()  # M = 8, K = 2 -> 4 devices
    assert mp.devices_per_weight == 4
    w = torch.tensor([[1.0, 27 / 255], [-1.0, 0.0]])
    st = mp.to_devices(w)
    assert st.levels[0, 0, 1].tolist() == [3, 2, 1, 0]  # 27 = 00 01 10 11
    assert st.levels[0, 0, 0].tolist() == [3, 3, 3, 3]
    assert torch.allclose(mp.from_devices(st), w, atol=1e-7)


def test_differential_pair_and_column_scale():
    mp = BitSlicedMapping(bits=4, bits_per_device=2, sign="differential", scale="column")
    w = torch.tensor([[1.0, -0.6], [0.2, -0.1]])
    st = mp.to_devices(w)
    assert st.levels.shape == (2, 2, 2, 2)
    assert torch.allclose(st.step.flatten(), torch.tensor([1 / 15, 0.2 / 15]))
    # row 0: 1.0 -> positive array 15; -0.6 -> negative array 9
    assert st.levels[0, 0, 0].tolist() == [3, 3] and st.levels[1, 0, 0].tolist() == [0, 0]
    assert st.levels[0, 0, 1].tolist() == [0, 0] and st.levels[1, 0, 1].tolist() == [1, 2]
    # row 1 (step 0.2/15): 0.2 -> 15, -0.1 -> 7.5 rounds to 8 (half to even) = 00|10
    assert st.levels[0, 1, 0].tolist() == [3, 3] and st.levels[1, 1, 1].tolist() == [0, 2]
    back = mp.from_devices(st)
    assert torch.allclose(back, torch.tensor([[1.0, -0.6], [0.2, -0.2 * 8 / 15]]), atol=1e-7)


def test_roundtrip_is_quantisation_and_batched_decode():
    torch.manual_seed(0)
    mp = BitSlicedMapping(bits=6, bits_per_device=3)
    w = torch.randn(5, 3, 3, 3)
    st = mp.to_devices(w)
    q = mp.from_devices(st)
    assert torch.equal(q, mp.quantize(w))
    assert (q - w).abs().max() <= st.step / 2 + 1e-7
    batched = DeviceState(st.levels.expand(4, *st.levels.shape), st.sign, st.step, st.weight_ndim)
    assert torch.allclose(mp.from_devices(batched), q.expand(4, *q.shape))


def test_analog_mapping_by_hand_and_roundtrip():
    mp = AnalogMapping(g_min=1e-6, g_max=11e-6)
    w = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    st = mp.to_conductances(w)
    assert torch.allclose(st.g[0], torch.tensor([6e-6, 1e-6, 1e-6], dtype=torch.float64))
    assert torch.allclose(st.g[1], torch.tensor([1e-6, 11e-6, 1e-6], dtype=torch.float64))
    assert torch.allclose(mp.from_conductances(st), w)
    col = AnalogMapping(0.0, 1.0, scale="column")
    w2 = torch.tensor([[2.0, -1.0], [0.5, 0.25]])
    st2 = col.to_conductances(w2)
    assert st2.g[0].tolist() == [[1.0, 0.0], [1.0, 0.5]]
    assert torch.allclose(col.from_conductances(st2), w2)


def test_bad_mapping_parameters():
    with pytest.raises(ValueError, match="multiple"):
        BitSlicedMapping(bits=7, bits_per_device=2)
    with pytest.raises(ValueError, match="sign"):
        BitSlicedMapping(sign="twos")
    with pytest.raises(ValueError, match="g_min"):
        AnalogMapping(5.0, 1.0)
