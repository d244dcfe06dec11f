"""One sigma_d convention (issue 17 item 1): closed-form weight std of the NeFT device noise under both readings,
`--sigma` equal to a `gaussian` profile, and the authors' renormalised state-dependent models."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from calibration.profile import NoiseProfile
from models.mapping import BitSlicedMapping
from models.noise.base import WeightNoise
from models.noise.factory import noise_from_profile, noise_from_spec, spec_from_options
from models.noise.families import (
    AUTHORS_MID_FRACTION,
    STATE_DEPENDENT_T,
    DeviceGaussianNoise,
    WriteVerifyNoise,
    renormalisation,
)

torch.set_num_threads(1)
# Closed forms are compared in float64: the only error is rounding, a few ulps of sums of <= 10^4 terms.
RTOL = 1e-12


def _std(noise, w: torch.Tensor) -> torch.Tensor:
    return noise.noise_std({"w": w})["w"]


def _noise(spec: dict[str, Any]) -> WeightNoise:
    """noise_from_spec for a spec that is not "none" (narrowed for the type checker)."""
    noise = noise_from_spec(spec)
    assert noise is not None
    return noise


def _weights(seed: int = 0, shape: tuple[int, ...] = (48, 40)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _laplace(n: int = 4001, b: float = 1.0) -> torch.Tensor:
    """Deterministic Laplace quantiles (most weights small, as in a trained layer), no random numbers."""
    u = torch.linspace(-0.5, 0.5, n + 2, dtype=torch.float64)[1:-1]
    return -b * torch.sign(u) * torch.log1p(-2 * u.abs())


def _authors_std(sigma: float, max_w: float, bits: int, k: int) -> float:
    """The NeFT authors' generate_noise std: sqrt(sum_j 4^{jK}) * max|W| / sum_j 2^{jK} * sigma_d."""
    d = bits // k
    return math.sqrt(sum(4 ** (j * k) for j in range(d))) * max_w / sum(2 ** (j * k) for j in range(d)) * sigma


def test_default_is_the_full_range_convention_0778():
    """8-bit weights on 2-bit devices: std = 3 sqrt(4369) / 255 sigma_d max|W| = 0.7776 sigma_d max|W| (layer scale)."""
    w = _weights()
    std = _std(noise_from_spec({"family": "gaussian", "sigma": 0.1}), w)
    expect = 0.1 * 3 * math.sqrt(1 + 16 + 256 + 4096) / 255 * w.abs().max().item()
    torch.testing.assert_close(std, torch.full_like(w, expect), rtol=RTOL, atol=0)
    assert expect / (0.1 * w.abs().max().item()) == pytest.approx(0.7776, abs=5e-5)  # the 0.778


@pytest.mark.parametrize("bits, k", [(8, 2), (6, 3), (8, 4), (4, 1), (8, 8)])
def test_full_range_matches_the_authors_formula_for_any_slicing(bits, k):
    """(2^K - 1) sqrt(sum 4^{jK}) / (2^M - 1) = sqrt(sum 4^{jK}) / sum 2^{jK}, since 2^M - 1 = (2^K - 1) sum 2^{jK}."""
    w = _weights(1)
    noise = DeviceGaussianNoise(0.07, BitSlicedMapping(bits=bits, bits_per_device=k))
    expect = _authors_std(0.07, w.abs().max().item(), bits, k)
    torch.testing.assert_close(_std(noise, w), torch.full_like(w, expect), rtol=RTOL, atol=0)


def test_column_scale_and_differential_pair():
    """Per-output-channel max|W| with scale="column"; a differential pair has twice the devices (sqrt 2 std)."""
    w = _weights(2)
    per = _authors_std(0.1, 1.0, 8, 2)
    col = _std(DeviceGaussianNoise(0.1, BitSlicedMapping(scale="column")), w)
    torch.testing.assert_close(col, (per * w.abs().amax(1, keepdim=True)).expand_as(w), rtol=RTOL, atol=0)
    diff = _std(DeviceGaussianNoise(0.1, BitSlicedMapping(sign="differential")), w)
    torch.testing.assert_close(diff, torch.full_like(w, math.sqrt(2) * per * w.abs().max().item()), rtol=RTOL, atol=0)


def test_the_literal_eq15_variant_by_name():
    """convention "level": sigma_d in level steps (eq. 15), std = sigma_d sqrt(4369) / 255 max|W|, 1/3 of the default."""
    w = _weights(3)
    lit = _noise({"family": "gaussian", "sigma": 0.1, "convention": "level"})
    torch.testing.assert_close(
        _std(lit, w), torch.full_like(w, 0.1 * math.sqrt(4369) / 255 * w.abs().max().item()), rtol=RTOL, atol=0
    )
    default = noise_from_spec({"family": "gaussian", "sigma": 0.1})
    torch.testing.assert_close(_std(lit, w) * 3, _std(default, w), rtol=RTOL, atol=0)
    back = _noise(json.loads(json.dumps(lit.describe())))
    assert back.describe()["convention"] == "level"
    torch.testing.assert_close(_std(back, w), _std(lit, w), rtol=0, atol=0)


def test_cli_sigma_equals_a_gaussian_profile_with_g_min_zero():
    """`--sigma s` and a `gaussian` profile of sigma s (fraction of g_max, g_min = 0) give the same weight std."""
    w = _weights(4)
    for s in (0.02, 0.1, 0.3):
        cli = noise_from_spec(spec_from_options(sigma=s))
        prof = NoiseProfile.from_paper("gaussian", sigma=s, g_min=0.0, g_max=40e-6, n_levels=4)
        pn = noise_from_profile(prof, mapping="bitsliced", bits=8)
        torch.testing.assert_close(_std(pn, w), _std(cli, w), rtol=1e-9, atol=0)
    # with g_min > 0 the profile's sigma_d is a fraction of g_max, not of the range: larger by g_max / (g_max - g_min)
    prof = NoiseProfile.from_paper("gaussian", sigma=0.1, g_min=1e-6, g_max=40e-6, n_levels=4)
    ratio = _std(noise_from_profile(prof, mapping="bitsliced", bits=8), w) / _std(
        noise_from_spec({"family": "gaussian", "sigma": 0.1}), w
    )
    torch.testing.assert_close(ratio, torch.full_like(w, 40 / 39), rtol=1e-9, atol=0)


def _mid_weights() -> torch.Tensor:
    """1000 weights, max|W| = 1: exactly 400 in the mid band (|W| = 0.5), 600 outside (0.1, and the 1.0)."""
    w = torch.full((1000,), 0.1, dtype=torch.float64)
    w[0] = 1.0
    w[1:401] = -0.5
    return w


@pytest.mark.parametrize("model", ["RRAM2", "FeFET1", "FeFET2"])
def test_authors_state_dependent_model_is_renormalised(model):
    """t on mid-magnitude weights, sigma_d / sqrt(0.4 t^2 + 0.6): at a mid fraction of 0.4 the mean power is uniform."""
    t = STATE_DEPENDENT_T[model]
    w = _mid_weights()
    sd = _std(noise_from_spec({"family": "state_dependent", "model": model, "sigma": 0.2}), w)
    uni = _std(noise_from_spec({"family": "gaussian", "sigma": 0.2}), w)
    mid = w.abs() == 0.5
    torch.testing.assert_close(sd[mid], uni[mid] * t / math.sqrt(0.4 * t * t + 0.6), rtol=RTOL, atol=0)
    torch.testing.assert_close(sd[~mid], uni[~mid] / math.sqrt(0.4 * t * t + 0.6), rtol=RTOL, atol=0)
    assert (sd**2).mean().item() == pytest.approx((uni**2).mean().item(), rel=RTOL)  # redistributed, not added
    assert sd[mid].min() > uni[mid].max() > sd[~mid].max()  # mid weights get more, the rest less
    assert renormalisation(t, AUTHORS_MID_FRACTION) == pytest.approx(1 / math.sqrt(0.4 * t * t + 0.6))


@pytest.mark.parametrize("scale", ["layer", "column"])
def test_measured_mid_fraction_keeps_the_uniform_mean_power_for_any_weights(scale):
    """mid_fraction null: each layer (or output channel) renormalised with its own fraction, so t only redistributes."""
    w = _weights(5, (24, 50))
    uni = _std(noise_from_spec({"family": "gaussian", "sigma": 0.15, "scale": scale}), w)
    for model, t in STATE_DEPENDENT_T.items():
        spec = {"family": "state_dependent", "model": model, "sigma": 0.15, "scale": scale, "mid_fraction": None}
        sd = _std(noise_from_spec(spec), w)
        dims = (0, 1) if scale == "layer" else (1,)  # the group that shares one max|W|
        torch.testing.assert_close((sd**2).mean(dims), (uni**2).mean(dims), rtol=1e-10, atol=0)
        m = w.abs().amax() if scale == "layer" else w.abs().amax(1, keepdim=True)
        mid = (w.abs() / m > 0.25) & (w.abs() / m < 0.75)
        ratio = sd / uni
        if t > 1:  # mid weights get more than uniform, the others less
            assert ratio[mid].min() > 1 > ratio[~mid].max()


def test_table_i_ordering_on_a_peaked_layer():
    """Few mid weights (f < 0.4): at the same sigma_d, FeFET2 (t=6) < RRAM2 (4) < FeFET1 (2) < uniform in noise power.

    Mean power relative to uniform is (1 + f (t^2 - 1)) / (1 + 0.4 (t^2 - 1)), decreasing in t when f < 0.4,
    the ordering of NeFT Table I (FeFET2 most accurate, FeFET1 least).
    """
    w = _laplace()
    r = w.abs() / w.abs().max()
    f = ((r > 0.25) & (r < 0.75)).double().mean().item()
    assert f < 0.4
    uni = (_std(noise_from_spec({"family": "gaussian", "sigma": 0.3}), w) ** 2).mean().item()
    power = {}
    for model, t in STATE_DEPENDENT_T.items():
        p = (_std(noise_from_spec({"family": "state_dependent", "model": model, "sigma": 0.3}), w) ** 2).mean().item()
        assert p / uni == pytest.approx((1 + f * (t * t - 1)) / (1 + 0.4 * (t * t - 1)), rel=1e-10)
        power[model] = p
    assert power["FeFET2"] < power["RRAM2"] < power["FeFET1"] < power["RRAM1"] == pytest.approx(uni, rel=RTOL)


def test_per_weight_model_samples_its_closed_form():
    """Draws follow noise_std: 1000 draws of 400 mid / 599 outer weights; rel 0.006 is ~5 SE (1/sqrt(2 n), n >= 4e5)."""
    w = _mid_weights()
    noise = _noise({"family": "state_dependent", "model": "FeFET2", "sigma": 0.1})
    d = noise.sample_batch({"w": w}, 1000, torch.Generator().manual_seed(7))["w"] - w
    sd = _std(noise, w)
    mid = w.abs() == 0.5
    outer = ~mid
    outer[0] = False
    assert d[:, mid].std().item() == pytest.approx(sd[mid][0].item(), rel=0.006)
    assert d[:, outer].std().item() == pytest.approx(sd[outer][0].item(), rel=0.006)


def test_write_verify_device_sigmas_follow_the_per_weight_model():
    """Unverified devices of a write-verify noise keep the base model's per-weight std (device_sigma with weights)."""
    w = _weights(6)
    base = noise_from_spec({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1})
    assert isinstance(base, DeviceGaussianNoise)
    none = WriteVerifyNoise(base, threshold=0.05, mask={"w": torch.zeros_like(w, dtype=torch.bool)})
    torch.testing.assert_close(_std(none, w), _std(base, w), rtol=1e-10, atol=0)
    every = WriteVerifyNoise(base, threshold=0.05)
    assert (_std(every, w) < _std(base, w)).all()


def test_old_per_level_model_by_name_and_scaling():
    """state "level": t at every device's inner levels (eq. 16 per device, not renormalised), sigma in range units."""
    w = torch.full((10,), 27 / 255, dtype=torch.float64)
    w[0] = 1.0  # devices of 27: (3, 2, 1, 0) -> factors (1, 4, 4, 1)
    n = _noise({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "state": "level"})
    expect = 0.1 * 3 * math.sqrt(1 + 16 * 16 + 16 * 256 + 4096) / 255
    assert _std(n, w)[1].item() == pytest.approx(expect, rel=RTOL)
    again = noise_from_spec(json.loads(json.dumps(n.describe())))
    torch.testing.assert_close(_std(again, w), _std(n, w), rtol=0, atol=0)
    per_weight = _noise({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "mid_fraction": None})
    back = noise_from_spec(json.loads(json.dumps(per_weight.describe())))
    assert isinstance(back, DeviceGaussianNoise) and back.mid_fraction is None and back.mid_factor == 4.0
    torch.testing.assert_close(_std(per_weight.scaled(2.0), w), 2 * _std(per_weight, w), rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"family": "gaussian", "sigma": 0.1, "convention": "lsb"}, "unknown sigma convention 'lsb'"),
        ({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "state": "x"}, "unknown state-dependent mode"),
        ({"family": "censored", "sigma": 0.1, "state": "level"}, "give 'model' too"),
        ({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "mid_fraction": 1.5}, r"in \[0, 1\]"),
        ({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "mid_fraction": "a"}, "number in"),
        ({"family": "gaussian", "sigma": 0.1, "state": "level"}, "unknown key"),
    ],
)
def test_bad_convention_keys_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        noise_from_spec(spec)
    assert "\n" not in str(info.value)
