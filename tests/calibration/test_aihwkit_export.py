"""aihwkit export: the numbers match the profile (B.2 coefficients for ibm_reram)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration import synthetic as syn
from calibration.aihwkit_export import export_aihwkit, write_aihwkit_json
from calibration.fit import fit_profile
from calibration.profile import NoiseProfile

B2_1S = [0.348, 16.030, -43.853, 45.393, -16.815]
B2_1D = [0.701, 22.086, -50.7, 47.09, -16.458]


def test_ibm_reram_exports_b2_coefficients() -> None:
    out = export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1s"))
    assert out["units"] == "uS" and out["g_max"] == 40.0
    pcm = out["PCMLikeNoiseModel"]
    assert pcm["prog_coeff"] == B2_1S
    assert pcm["g_max"] == 40.0 and pcm["prog_coeff_g_max_reference"] == 40.0
    assert pcm["read_noise_scale"] == 0.0 and pcm["drift_scale"] == 0.0
    wan = out["ReRamWan2022NoiseModel"]["coeff_dic"]
    assert wan["1.0"] == B2_1S
    np.testing.assert_allclose(wan["86400.0"], B2_1D, atol=1e-9)
    assert out["forward"] == {"w_noise_type": "ADDITIVE_CONSTANT", "w_noise": pytest.approx(0.01)}
    out1d = export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1d"))
    assert out1d["PCMLikeNoiseModel"]["prog_coeff"] == B2_1D
    assert all(v == B2_1D for v in out1d["ReRamWan2022NoiseModel"]["coeff_dic"].values())


def test_paper_families_export() -> None:
    out = export_aihwkit(NoiseProfile.from_paper("gaussian", sigma=0.1, g_max=50e-6))
    assert out["PCMLikeNoiseModel"]["prog_coeff"] == [pytest.approx(5.0)]
    assert out["forward"]["w_noise"] == 0.0
    p = NoiseProfile.from_paper("lognormal", s=0.2)
    c = export_aihwkit(p)["PCMLikeNoiseModel"]["prog_coeff"]
    g = np.array([10e-6, 30e-6])
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(g / 40e-6, c), p.programming_sigma(g) * 1e6)
    p = NoiseProfile.from_paper("state_dependent", sigma=0.02, t=3.0)
    c = export_aihwkit(p)["PCMLikeNoiseModel"]["prog_coeff"]
    assert len(c) == 4
    np.testing.assert_allclose(
        np.polynomial.polynomial.polyval(p.levels_g / 40e-6, c), p.programming_sigma(p.levels_g) * 1e6, rtol=1e-6
    )


def test_measured_profile_export_and_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    levels = np.linspace(2e-6, 40e-6, 16)
    ol = syn.programming(rng, levels, 500, mean_coeffs=np.array([0.3e-6]))
    rl = syn.relaxation(
        rng,
        levels[::3],
        np.logspace(0, 5, 6),
        200,
        np.zeros(6),
        np.full(6, -0.1e-6),
        np.full(6, 0.5e-6),
        np.full(6, 0.4e-6),
    )
    p = fit_profile(open_loop=ol, relaxation=rl, g_min=2e-6, g_max=40e-6)
    out = export_aihwkit(p)
    np.testing.assert_allclose(out["PCMLikeNoiseModel"]["prog_coeff"], p.open_loop.sigma_poly.coeffs * 1e6)
    day = out["ReRamWan2022NoiseModel"]["coeff_dic"]["86400.0"]
    g = np.linspace(5e-6, 35e-6, 5)
    expect = np.hypot(p.programming_sigma(g), p.relaxation(g, 86400.0)[1]) * 1e6
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(g / 40e-6, day), expect, rtol=0.03)
    assert any("mean programming error" in d for d in out["dropped"])
    assert any("relaxation shift" in d for d in out["dropped"])
    path = write_aihwkit_json(p, tmp_path / "c.json")
    assert json.loads(path.read_text())["PCMLikeNoiseModel"]["prog_coeff"] == out["PCMLikeNoiseModel"]["prog_coeff"]
    with pytest.raises(FileExistsError):
        write_aihwkit_json(p, path)
