"""Noise families register by name in `NOISE_FAMILIES`; `noise_from_spec` dispatches through it."""

from __future__ import annotations

import pytest

from models.noise.factory import FAMILIES, NOISE_FAMILIES, noise_from_spec
from models.noise.families import AdditiveNoise, CensoredNoise, DeviceGaussianNoise, LogNormalNoise, WriteVerifyNoise


def test_every_family_is_registered_once_and_listed():
    assert NOISE_FAMILIES.names() == sorted(
        ["gaussian", "state_dependent", "lognormal", "additive", "censored", "write_verify", "profile", "layers"]
    )
    assert FAMILIES == tuple(NOISE_FAMILIES.names())
    assert NOISE_FAMILIES.kind == "noise family"


@pytest.mark.parametrize(
    "spec, kind",
    [
        ({"family": "gaussian", "sigma": 0.1}, DeviceGaussianNoise),
        ({"family": "state_dependent", "model": "RRAM1", "sigma": 0.1}, DeviceGaussianNoise),
        ({"family": "gaussian", "sigma": 0.1, "convention": "level"}, DeviceGaussianNoise),
        ({"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "state": "level"}, DeviceGaussianNoise),
        ({"family": "lognormal", "sigma": 0.2}, LogNormalNoise),
        ({"family": "additive", "eta": 0.05}, AdditiveNoise),
        ({"family": "censored", "lam": 1.0, "base": {"family": "additive", "eta": 0.05}}, CensoredNoise),
        ({"family": "write_verify", "threshold": 0.1, "sigma": 0.1}, WriteVerifyNoise),
        ({"family": "write_verify", "threshold": 0.1, "sigma": 0.1, "model": "FeFET2"}, WriteVerifyNoise),
    ],
)
def test_the_registered_builder_makes_the_family(spec, kind):
    noise = noise_from_spec(spec)
    assert type(noise) is kind
    assert type(NOISE_FAMILIES.get(spec["family"])(spec)) is kind


def test_unknown_family_is_one_line_naming_the_known_ones():
    with pytest.raises(ValueError) as info:
        noise_from_spec({"family": "pink"})
    msg = str(info.value)
    assert msg == f"unknown noise family 'pink' (known: {', '.join(NOISE_FAMILIES.names())})"
    assert noise_from_spec({"family": "none"}) is None
