"""Profile file: round trip, the evaluation API, paper profiles, and refusal of bad files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from calibration import synthetic as syn
from calibration.fit import fit_profile
from calibration.noise_terms import GateMap, ProgrammingModel, Provenance
from calibration.profile import (
    FORMAT_VERSION,
    NoiseProfile,
    ProfileError,
    SpatialModel,
    load_profile,
    save_profile,
)

G_MAX = 40e-6
LEVELS = np.linspace(2e-6, G_MAX, 8)


@pytest.fixture(scope="module")
def measured() -> NoiseProfile:
    rng = np.random.default_rng(0)
    ol = syn.programming(rng, LEVELS, 400)
    vf = syn.programming(rng, LEVELS, 400, "additive", eta=0.01, verified=True, mean_pulses=5)
    rl = syn.relaxation(
        rng,
        LEVELS[::2],
        np.logspace(0, 4, 5),
        100,
        np.zeros(4),
        np.full(4, -0.2e-6),
        np.full(4, 0.5e-6),
        np.full(4, 0.3e-6),
    )
    rd, _ = syn.reads(rng, LEVELS, 30, 40, np.array([0.2e-6]), rtn_fraction=0.1, rtn_amplitude_rel=0.2)
    en = syn.endurance(rng, 200, np.array([1, 10, 100, 1000, 10000]), 1.5, 3e3, stuck_lrs=0.05)
    sp = syn.spatial(rng, (4, 5), 50, rng.standard_normal((20, 2)) * 1e-6, 0.2e-6)
    prov = Provenance(
        run_files=["run1.h5", "run2.h5"], board_id="B-7", measured_dates=["2026-11-20"], notes="synthetic"
    )
    return fit_profile(
        open_loop=ol, verified=vf, relaxation=rl, read_noise=rd, endurance=en, spatial=sp, provenance=prov
    )


def test_round_trip_measured(measured: NoiseProfile, tmp_path: Path) -> None:
    path = save_profile(measured, tmp_path / "p.h5")
    back = load_profile(path)
    assert back == measured
    assert back.provenance.run_files == ["run1.h5", "run2.h5"] and back.provenance.board_id == "B-7"
    assert back.format_version == FORMAT_VERSION
    g = np.linspace(2e-6, G_MAX, 7).reshape(7, 1)
    for fn in (back.programming_mean_error, back.programming_sigma):
        assert fn(g).shape == g.shape and fn(g, verified=True).shape == g.shape
    assert np.all(back.programming_sigma(g) >= 0)
    shift, extra = back.relaxation(g, 3600.0)
    assert shift.shape == extra.shape == g.shape and np.all(extra > 0)
    np.testing.assert_allclose(shift, -0.2e-6 * math.log10(3600), rtol=0.2)
    assert back.read_sigma(g).shape == g.shape
    assert back.pulses_per_device(False) == 1.0
    assert abs(back.pulses_per_device(True) - 5.0) < 0.2
    assert back.stuck_fractions[0] > 0 and back.stuck_fractions == (
        back.endurance.stuck_lrs_fraction,
        back.endurance.stuck_hrs_fraction,
    )
    assert isinstance(back.spatial, SpatialModel)
    assert back.spatial.eigvecs.shape[0] == 20 and back.spatial.shape == (4, 5)
    assert back.family is None and set(back.families) == {"additive", "lognormal", "state_dependent"}
    assert back.g_min == LEVELS[0] and back.g_max == LEVELS[-1] and back.n_levels == 8 and back.bits_per_device == 3
    np.testing.assert_allclose(back.levels_g, LEVELS)


def _open_loop(p: NoiseProfile) -> ProgrammingModel:
    assert p.open_loop is not None
    return p.open_loop


def test_gate_map_round_trip(measured: NoiseProfile, tmp_path: Path) -> None:
    """The open-loop law's gate calibration (gates x cells) is stored and read back as written; absent is None."""
    assert _open_loop(load_profile(save_profile(measured, tmp_path / "none.h5"))).gate_map is None
    gates = np.linspace(0.7, 1.4, 15)
    g = np.exp(np.linspace(np.log(2e-6), np.log(80e-6), 15))[:, None] * np.linspace(0.9, 1.1, 4)[None, :]
    _open_loop(measured).gate_map = GateMap(gates, g)
    try:
        back = load_profile(save_profile(measured, tmp_path / "map.h5"))
    finally:
        _open_loop(measured).gate_map = None
    m = _open_loop(back).gate_map
    assert m is not None and np.array_equal(m.gate_v, gates) and np.array_equal(m.g_s, g)
    assert back.verified is not None and back.verified.gate_map is None
    from calibration.summary import format_summary, profile_summary

    assert re.search(r"\n    gate map +15 gates 0.7-1.4 V on 4 cells, median 2-80 µS\n", format_summary(back))
    js = profile_summary(back)
    assert js["open_loop"]["gate_map"]["gate_v"] == gates.tolist() and js["verified"]["gate_map"] is None


@pytest.mark.parametrize(
    "gate_v, g_s, message",
    [
        ([0.7], [[1e-6]], "gate_v must be >= 2 finite, increasing gate voltages"),
        ([0.8, 0.7], [[1e-6], [2e-6]], "gate_v must be >= 2 finite, increasing gate voltages"),
        ([0.7, 0.8], [[1e-6], [2e-6], [3e-6]], r"g_s must be \(2, cells\) with >= 1 cell, got shape \(3, 1\)"),
        ([0.7, 0.8], [1e-6, 2e-6], r"g_s must be \(2, cells\)"),
        ([0.7, 0.8], [[1e-6], [np.nan]], "g_s contains NaN or inf"),
    ],
)
def test_bad_gate_map_refused(measured: NoiseProfile, gate_v: list, g_s: list, message: str) -> None:
    _open_loop(measured).gate_map = GateMap(np.array(gate_v, dtype=float), np.array(g_s, dtype=float))
    try:
        with pytest.raises(ProfileError, match=f"/open_loop/gate_map/.*{message}") as exc:
            measured.validate()
    finally:
        _open_loop(measured).gate_map = None
    _one_line(exc)


def test_refuses_overwrite(measured: NoiseProfile, tmp_path: Path) -> None:
    path = save_profile(measured, tmp_path / "p.h5")
    with pytest.raises(FileExistsError, match="exists"):
        save_profile(measured, path)
    save_profile(measured, path, overwrite=True)


@pytest.mark.parametrize(
    "family, params",
    [
        ("gaussian", {"sigma": 0.1}),
        ("additive", {"eta": 0.05}),
        ("lognormal", {"s": 0.3}),
        ("state_dependent", {"sigma": 0.05, "t": 4.0}),
        ("ibm_reram", {"time": "1s"}),
        ("ibm_reram", {"time": "1d"}),
    ],
)
def test_paper_profiles_round_trip(family: str, params: dict, tmp_path: Path) -> None:
    p = NoiseProfile.from_paper(family, **params)
    back = load_profile(save_profile(p, tmp_path / "p.h5"))
    assert back == p and back.family == family
    assert back.families == {}


def test_paper_profile_values() -> None:
    g = np.array([1e-6, 20e-6, 40e-6])
    p = NoiseProfile.from_paper("gaussian", sigma=0.1)
    np.testing.assert_allclose(p.programming_sigma(g), 4e-6)
    np.testing.assert_allclose(p.programming_mean_error(g), 0.0)
    p = NoiseProfile.from_paper("lognormal", s=0.3)
    rng = np.random.default_rng(0)
    draws = 20e-6 * np.exp(0.3 * rng.standard_normal(400000))
    assert p.programming_sigma(np.array([20e-6]))[0] == pytest.approx(draws.std(), rel=0.01)
    assert p.programming_mean_error(np.array([20e-6]))[0] == pytest.approx(draws.mean() - 20e-6, rel=0.05)
    p = NoiseProfile.from_paper("state_dependent", sigma=0.05, t=4.0, n_levels=4)
    np.testing.assert_allclose(p.programming_sigma(p.levels_g), np.array([0.05, 0.2, 0.2, 0.05]) * 40e-6)
    p = NoiseProfile.from_paper("ibm_reram", time="1s")
    gn = g / 40e-6
    c1s = np.array([0.348, 16.030, -43.853, 45.393, -16.815]) * 1e-6
    c1d = np.array([0.701, 22.086, -50.7, 47.09, -16.458]) * 1e-6
    np.testing.assert_allclose(p.programming_sigma(g), np.polynomial.polynomial.polyval(gn, c1s), rtol=1e-12)
    np.testing.assert_allclose(p.read_sigma(g), 0.4e-6)
    # 1 s sigma combined with the relaxation spread up to 1 day gives the 1-day polynomial
    total = np.hypot(p.programming_sigma(g), p.relaxation(g, 86400.0)[1])
    np.testing.assert_allclose(total, np.polynomial.polynomial.polyval(gn, c1d), rtol=1e-9)
    p1d = NoiseProfile.from_paper("ibm_reram", time="1d")
    np.testing.assert_allclose(p1d.programming_sigma(g, verified=True), np.polynomial.polynomial.polyval(gn, c1d))
    assert np.all(p1d.relaxation(g, 1e6)[1] == 0)
    assert p1d.pulses_per_device(False) == 1.0
    with pytest.raises(ProfileError, match="no pulse count for verified"):
        p1d.pulses_per_device(True)
    # B.2 coefficients are rescaled with g_max as aihwkit does
    p80 = NoiseProfile.from_paper("ibm_reram", time="1s", g_max=80e-6)
    np.testing.assert_allclose(p80.programming_sigma(2 * g), 2 * p.programming_sigma(g), rtol=1e-12)


@pytest.mark.parametrize(
    "family, params, message",
    [
        ("uniform", {}, "unknown noise family"),
        ("lognormal", {}, "needs parameter s"),
        ("lognormal", {"s": -1}, ">= 0"),
        ("additive", {"sigma": 0.1}, "unknown sigma"),
        ("ibm_reram", {"time": "1y"}, "1s, 1d"),
        ("state_dependent", {"level_sigma": [0.1, 0.2]}, "4 values"),
    ],
)
def test_bad_paper_parameters(family: str, params: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        NoiseProfile.from_paper(family, **params)


def test_bad_mapping_refused() -> None:
    with pytest.raises(ProfileError, match="g_min < g_max"):
        NoiseProfile.from_paper("gaussian", sigma=0.1, g_min=50e-6, g_max=40e-6)
    with pytest.raises(ProfileError, match="bits_per_device"):
        NoiseProfile.from_paper("gaussian", sigma=0.1, n_levels=4, bits_per_device=3)


# ---------------------------------------------------------------- refusing bad files
@pytest.fixture()
def good_file(tmp_path: Path) -> Path:
    return save_profile(NoiseProfile.from_paper("ibm_reram", time="1s"), tmp_path / "good.h5")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile file") as exc:
        load_profile(tmp_path / "nope.h5")
    _one_line(exc)


def test_truncated_file(good_file: Path, tmp_path: Path) -> None:
    data = good_file.read_bytes()
    for n in (0, 100, len(data) // 2, len(data) - 200):
        bad = tmp_path / f"trunc{n}.h5"
        bad.write_bytes(data[:n])
        with pytest.raises(ProfileError, match="corrupt or truncated|not a readable") as exc:
            load_profile(bad)
        assert str(bad) in _one_line(exc)


def test_corrupt_bytes(good_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(ProfileError, match="not a readable HDF5") as exc:
        load_profile(bad)
    _one_line(exc)


def test_not_a_profile(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ProfileError, match="not an rram-hil noise profile"):
        load_profile(other)


@pytest.mark.parametrize(
    "version, ok, message",
    [
        ("2.0", False, "newer than this software"),
        ("0.9", False, "older"),
        ("one", False, "major.minor"),
        ("1.7", True, ""),
    ],
)
def test_versions(good_file: Path, version: str, ok: bool, message: str) -> None:
    with h5py.File(good_file, "r+") as f:
        f.attrs["format_version"] = version
    if ok:
        assert load_profile(good_file).format_version == version
    else:
        with pytest.raises(ProfileError, match=message) as exc:
            load_profile(good_file)
        _one_line(exc)


@pytest.mark.parametrize(
    "victim, message",
    [
        ("open_loop/sigma_poly/coeffs", "missing field /open_loop/sigma_poly/coeffs"),
        ("provenance", "missing field /provenance"),
        ("levels_g", "missing field /levels_g"),
        ("family_params@time", "missing field /family_params/time"),
        ("@g_max", "missing field /g_max"),
        ("relaxation_model/s1sq_poly/@g_ref", "missing field /relaxation_model/s1sq_poly/g_ref"),
    ],
)
def test_missing_fields(good_file: Path, victim: str, message: str) -> None:
    with h5py.File(good_file, "r+") as f:
        if "@" in victim:
            group, attr = victim.split("@")
            del f[group or "/"].attrs[attr]
        else:
            del f[victim]
    with pytest.raises(ProfileError, match=message) as exc:
        load_profile(good_file)
    _one_line(exc)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.attrs.__setitem__("g_max", "big"), "/g_max must be a number"),
        (lambda f: f.attrs.__setitem__("g_min", 1.0), "g_min < g_max"),
        (lambda f: f.attrs.__setitem__("n_levels", 2.5), "must be an integer"),
        (
            lambda f: (
                f["open_loop/sigma_poly"].__delitem__("cov"),
                f["open_loop/sigma_poly"].create_dataset("cov", data=np.zeros((2, 2))),
            ),
            "cov must be 5x5",
        ),
        (lambda f: f.attrs.__setitem__("stuck_fractions", np.array([0.7, 0.6])), "stuck_fractions"),
    ],
)
def test_inconsistent_fields(good_file: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with h5py.File(good_file, "r+") as f:
        edit(f)
    with pytest.raises(ProfileError, match=message) as exc:
        load_profile(good_file)
    _one_line(exc)
