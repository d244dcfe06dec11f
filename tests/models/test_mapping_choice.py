"""The mapping a profile's devices support, what a model file records of it, and how options are checked."""

from __future__ import annotations

import pytest

from calibration.profile import NoiseProfile
from models.noise.factory import (
    MappingChoice,
    choose_mapping,
    mapping_for_model,
    mapping_of_spec,
    noise_from_spec,
    spec_from_options,
)


def _paper(family: str, levels: int, **kw) -> NoiseProfile:
    return NoiseProfile.from_paper(family, n_levels=levels, **kw)


@pytest.mark.parametrize("k, bits", [(1, 8), (2, 8), (3, 9), (4, 8), (5, 10)])
def test_bit_sliced_resolution_is_the_smallest_multiple_of_the_device_bits_from_8(k: int, bits: int) -> None:
    prof = _paper("state_dependent", 2**k, sigma=0.01)
    assert prof.bits_per_device == k
    choice = choose_mapping(prof)
    assert choice == MappingChoice("bitsliced", bits) and choice.bits is not None and choice.bits % k == 0


def test_continuous_profiles_are_analog_unless_bits_or_bitsliced_are_asked() -> None:
    prof = _paper("lognormal", 8, s=0.2)
    assert choose_mapping(prof) == choose_mapping(prof, "auto") == MappingChoice("analog")
    assert choose_mapping(prof, "bitsliced") == MappingChoice("bitsliced", 9)
    assert choose_mapping(prof, bits=6) == MappingChoice("bitsliced", 6)
    with pytest.raises(ValueError, match=r"--bits 10 does not fit p\.h5: .* multiple of 3 \(e\.g\. 9 or 12\)"):
        choose_mapping(prof, bits=10, name="p.h5")
    with pytest.raises(ValueError, match="drop --bits"):
        choose_mapping(prof, "analog", 6)


def test_every_choice_builds_the_noise_it_names(tmp_path) -> None:
    from calibration.profile import save_profile

    path = tmp_path / "p.h5"
    save_profile(_paper("state_dependent", 8, sigma=0.01), path)
    for mapping, bits, devices in ((None, None, 3), ("bitsliced", 6, 2), ("analog", None, None)):
        spec = spec_from_options(profile=str(path), mapping=mapping, bits=bits)
        assert spec is not None
        noise = noise_from_spec(spec)
        assert getattr(noise.mapping, "devices_per_weight", None) == devices  # type: ignore[attr-defined]
        assert mapping_of_spec(spec) == choose_mapping(_paper("state_dependent", 8, sigma=0.01), mapping, bits)


def test_old_specs_read_as_they_were_trained() -> None:
    assert mapping_of_spec({"family": "profile", "path": "p.h5"}) == MappingChoice("bitsliced", 8)
    assert mapping_of_spec({"family": "profile", "path": "p.h5", "mapping": "analog"}) == MappingChoice("analog")
    assert mapping_of_spec({"family": "gaussian", "sigma": 0.1}) is None
    assert mapping_of_spec(None) is None


def test_a_recorded_mapping_wins_and_contradictions_are_refused() -> None:
    prof = _paper("state_dependent", 8, sigma=0.01)
    rec = MappingChoice("bitsliced", 9)
    assert mapping_for_model(rec, prof) == mapping_for_model(rec, prof, "bitsliced", 9) == rec
    assert mapping_for_model(rec, prof, "auto") == rec
    with pytest.raises(ValueError, match="m.pt was trained with bit-sliced 9-bit weights; --mapping analog"):
        mapping_for_model(rec, prof, "analog", model_name="m.pt")
    with pytest.raises(ValueError, match="cannot hold"):
        mapping_for_model(rec, _paper("state_dependent", 4, sigma=0.01))
    assert mapping_for_model(MappingChoice("analog"), _paper("state_dependent", 4, sigma=0.01)).name == "analog"
