"""Damaged profile files (issue 15 item 9): non-finite values, absurd sizes and foreign storage are refused in one line.

Each case edits a valid file the way a damaged or forged one would differ and checks that `load_profile`
(and `rram profile show`) refuses it with one line naming the field, before anything large is read.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from calibration.profile import NoiseProfile, ProfileError, load_profile, save_profile
from tests.helpers.cli import assert_one_line_error, rram


@pytest.fixture()
def lognormal(tmp_path: Path) -> Path:
    return save_profile(NoiseProfile.from_paper("lognormal", s=0.3, pulses_verified=4.0), tmp_path / "ln.h5")


@pytest.fixture()
def ibm(tmp_path: Path) -> Path:
    return save_profile(NoiseProfile.from_paper("ibm_reram", time="1s", pulses_verified=4.0), tmp_path / "ibm.h5")


def _refused(path: Path, message: str) -> str:
    with pytest.raises(ProfileError, match=message) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def _replace(f: h5py.File, name: str, **kw: object) -> None:
    del f[name]
    f.create_dataset(name, **kw)


def _set(group: str, key: str, value: object) -> Callable[[h5py.File], None]:
    return lambda f: f[group].attrs.__setitem__(key, value)


@pytest.mark.parametrize(
    "edit, message",
    [
        pytest.param(
            _set("family_params", "s", np.inf), "/family_params/s must be a finite number >= 0, got inf", id="s-inf"
        ),
        pytest.param(_set("family_params", "s", np.nan), "/family_params/s must be a finite number", id="s-nan"),
        pytest.param(
            _set("family_params", "pulses_verified", -3.0),
            "/family_params/pulses_verified must be NaN",
            id="pulses-negative",
        ),
        pytest.param(
            _set("family_params", "pulses_verified", np.inf),
            "/family_params/pulses_verified must be NaN",
            id="pulses-inf",
        ),
        pytest.param(
            _set("family_params", "pulses_verified", 0.0),
            "/family_params/pulses_verified must be NaN",
            id="pulses-zero",
        ),
        pytest.param(
            _set("family_params", "read_noise_frac", np.inf),
            "/family_params/read_noise_frac must be a finite",
            id="read-noise-inf",
        ),
        pytest.param(_set("/", "n_levels", np.inf), "/n_levels must be an integer, got inf", id="n-levels-inf"),
        pytest.param(_set("/", "n_levels", 2**62), r"n_levels must be in \[2, 2\^20\]", id="n-levels-2^62"),
        pytest.param(
            _set("/", "bits_per_device", 2**40), "bits_per_device=1099511627776 needs", id="bits-2^40"
        ),  # 2**(2**40) never computed
        pytest.param(
            lambda f: _replace(f, "levels_g", data=np.linspace(1e-6, 4e-5, 7)),
            "levels_g must be empty or hold",
            id="levels-count",
        ),
        pytest.param(
            lambda f: _replace(f, "levels_g", data=np.array([1, 2, 3, 4], dtype=complex)),
            "numeric dataset",
            id="levels-complex",
        ),
        pytest.param(
            lambda f: _replace(f, "levels_g", data=np.array([b"a", b"b"])),
            "numeric dataset .* dtype \\|S1",
            id="levels-bytes",
        ),
    ],
)
def test_damaged_values_are_refused(lognormal: Path, edit: Callable[[h5py.File], None], message: str) -> None:
    with h5py.File(lognormal, "r+") as f:
        edit(f)
    _refused(lognormal, message)


@pytest.mark.parametrize(
    "edit, message",
    [
        pytest.param(
            _set("open_loop/sigma_poly", "g_ref", np.inf),
            "/open_loop/sigma_poly: g_ref must be a finite",
            id="g-ref-inf",
        ),
        pytest.param(
            _set("open_loop/sigma_poly", "g_hi", np.inf), "/open_loop/sigma_poly: need finite 0 <= g_lo", id="g-hi-inf"
        ),
        pytest.param(
            _set("verified", "t_read_s", np.inf), "/verified: t_read_s must be a finite time", id="t-read-inf"
        ),
        pytest.param(
            _set("verified", "pulses_mean", -1.0), "/verified: pulses_mean must be NaN", id="pulses-mean-negative"
        ),
        pytest.param(
            _set("relaxation_model", "t0_s", np.inf), "/relaxation_model: t0_s must be a finite time", id="t0-inf"
        ),
        pytest.param(_set("family_params", "time", "1y"), "/family_params/time must be one of", id="time-unknown"),
        # an ibm_reram profile states its pulse count twice; a NaN written over one of them is caught
        pytest.param(
            _set("family_params", "pulses_verified", np.nan),
            r"differs from /verified/pulses_mean \(4.0\)",
            id="pulses-nan-over-4",
        ),
    ],
)
def test_damaged_models_are_refused(ibm: Path, edit: Callable[[h5py.File], None], message: str) -> None:
    with h5py.File(ibm, "r+") as f:
        edit(f)
    _refused(ibm, message)


def test_a_dataset_claiming_2_to_the_40_entries_is_refused_without_reading_it(lognormal: Path) -> None:
    with h5py.File(lognormal, "r+") as f:
        _replace(f, "levels_g", shape=(2**40,), dtype="f8")  # no storage allocated: the file stays small
    size = lognormal.stat().st_size
    tracemalloc.start()
    try:
        msg = _refused(lognormal, f"its datasets claim {2**43} bytes, more than the file's {size}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size + 2**20, (peak, msg)  # numpy's allocations are traced: nothing near 8 TiB was asked for


def test_data_kept_in_another_file_is_refused(lognormal: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["levels_g"] = np.linspace(1e-6, 4e-5, 4)
    with h5py.File(lognormal, "r+") as f:
        del f["levels_g"]
        f["levels_g"] = h5py.ExternalLink(str(other), "levels_g")
    _refused(lognormal, "/levels_g links to elsewhere")


def test_nan_pulses_mean_not_measured_and_load(tmp_path: Path) -> None:
    """NaN is the documented 'not measured' value (PROFILE.md): such a profile loads and says it has no count."""
    path = save_profile(NoiseProfile.from_paper("lognormal", s=0.3), tmp_path / "p.h5")
    prof = load_profile(path)
    with pytest.raises(ProfileError, match="no pulse count for verified"):
        prof.pulses_per_device(True)


def test_from_paper_refuses_impossible_values() -> None:
    with pytest.raises(ProfileError, match="pulses_verified must be a finite number > 0"):
        NoiseProfile.from_paper("lognormal", s=0.3, pulses_verified=-3.0)
    with pytest.raises(ProfileError, match=r"n_levels must be in \[2, 2\^20\]"):
        NoiseProfile.from_paper("lognormal", s=0.3, n_levels=2**40)  # refused before levels are allocated
    with pytest.raises(ProfileError, match="s must be a finite number"):
        NoiseProfile.from_paper("lognormal", s=float("inf"))
    prof = NoiseProfile.from_paper("lognormal", s=0.3)
    prof.family_params["s"] = float("inf")
    with pytest.raises(ProfileError, match="/family_params/s must be a finite number >= 0, got inf"):
        prof.validate()


def test_the_cli_reports_a_damaged_profile_in_one_line(
    lognormal: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with h5py.File(lognormal, "r+") as f:
        f["family_params"].attrs["s"] = np.inf
    assert_one_line_error(rram(capsys, monkeypatch, "profile", "show", str(lognormal)), "/family_params/s")
    with h5py.File(lognormal, "r+") as f:
        f["family_params"].attrs["s"] = 0.3
        _replace(f, "levels_g", shape=(2**40,), dtype="f8")
    assert_one_line_error(rram(capsys, monkeypatch, "profile", "show", str(lognormal)), "more than the file's")
