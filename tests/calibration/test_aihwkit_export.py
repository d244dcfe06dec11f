"""aihwkit export: the JSON matches the profile, lists what aihwkit drops, and the documented snippet works.

The snippet test runs calibration/PROFILE.md's aihwkit block against a real aihwkit (skipped where aihwkit
is not importable, as in CI) and measures the noise aihwkit applies against the profile's sigma(g).
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import ndtr

import calibration
from calibration import synthetic as syn
from calibration.aihwkit_export import export_aihwkit, write_aihwkit_json
from calibration.fit import fit_profile
from calibration.profile import NoiseProfile, save_profile

B2_1S = [0.348, 16.030, -43.853, 45.393, -16.815]
B2_1D = [0.701, 22.086, -50.7, 47.09, -16.458]
PROFILE_MD = Path(calibration.__file__).parent / "PROFILE.md"
N_SAMPLES = 100_000
N_POINTS = 10
# Two-sided z for each std comparison: ~80 comparisons per profile at 5.7e-7 each.
Z = 5.0


def _measured_profile(relaxation: bool = True) -> NoiseProfile:
    """A fitted profile with every model: levels 4-36 uS in a 2-40 uS window, stuck cells, RTN, spatial."""
    rng = np.random.default_rng(0)
    levels = np.linspace(4e-6, 36e-6, 8)
    ol = syn.programming(rng, levels, 400, mean_coeffs=np.array([0.2e-6]))
    rl = syn.relaxation(
        rng,
        levels[::2],
        np.logspace(0, 5, 6),
        200,
        np.zeros(4),
        np.full(4, -0.1e-6),
        np.full(4, 0.5e-6),
        np.full(4, 0.4e-6),
    )
    rd, _ = syn.reads(rng, levels, 20, 64, np.array([0.1e-6, 0.3e-6]), rtn_fraction=0.2, rtn_amplitude_rel=0.05)
    en = syn.endurance(rng, 200, np.logspace(0, 4, 9), 1.5, 3000.0, stuck_lrs=0.02, stuck_hrs=0.01)
    sp = syn.spatial(rng, (4, 4), 60, rng.standard_normal((16, 2)) * 0.3e-6, 0.2e-6)
    return fit_profile(
        open_loop=ol,
        relaxation=rl if relaxation else None,
        read_noise=rd,
        endurance=en,
        spatial=sp,
        g_min=2e-6,
        g_max=40e-6,
    )


def test_ibm_reram_exports_b2_coefficients() -> None:
    out = export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1s"))
    assert out["units"] == "uS" and out["g_max"] == 40.0 and out["g_min"] == 1.0
    assert out["SinglePairConductanceConverter"] == {"g_max": 40.0, "g_min": 1.0}
    pcm = out["PCMLikeNoiseModel"]
    assert pcm["prog_coeff"] == B2_1S
    assert pcm["g_max"] == 40.0 and "prog_coeff_g_max_reference" not in pcm  # aihwkit 1.2.0 fails on it
    assert pcm["read_noise_scale"] == 0.0 and pcm["drift_scale"] == 0.0
    wan = out["ReRamWan2022NoiseModel"]
    assert "coeff_g_max_reference" not in wan
    assert wan["coeff_dic"]["1.0"] == B2_1S
    np.testing.assert_allclose(wan["coeff_dic"]["86400.0"], B2_1D, atol=1e-9)
    # read sigma 1 % of g_max = 0.4 uS on both devices of a pair, per (g_max - g_min) = 39 uS
    assert out["forward"] == {"w_noise_type": "ADDITIVE_CONSTANT", "w_noise": pytest.approx(math.sqrt(2) * 0.4 / 39)}
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
    assert p.open_loop is not None
    # levels cover the window: the fitted polynomial is exported as is
    np.testing.assert_allclose(out["PCMLikeNoiseModel"]["prog_coeff"], p.open_loop.sigma_poly.coeffs * 1e6)
    day = out["ReRamWan2022NoiseModel"]["coeff_dic"]["86400.0"]
    g = np.linspace(5e-6, 35e-6, 5)
    expect = np.hypot(p.programming_sigma(g), p.relaxation(g, 86400.0)[1]) * 1e6
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(g / 40e-6, day), expect, rtol=0.03)
    assert any("mean programming error" in d for d in out["dropped"])
    assert any("relaxation shift" in d for d in out["dropped"])
    path, data = write_aihwkit_json(p, tmp_path / "c.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(data))
    with pytest.raises(FileExistsError):
        write_aihwkit_json(p, path)


def test_dropped_lists_each_part_once() -> None:
    clean = NoiseProfile.from_paper("gaussian", sigma=0.02, g_min=4e-6)  # g_min = 5 sigma: no clamp at 0
    assert export_aihwkit(clean)["dropped"] == []
    stuck = export_aihwkit(NoiseProfile.from_paper("gaussian", sigma=0.02, g_min=4e-6, stuck_lrs=0.01))["dropped"]
    assert stuck == [
        "stuck cells (1 % at LRS reading 40 uS, 0 % at HRS reading 4 uS): aihwkit's noise models program every device"
    ]
    ibm = export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1s"))["dropped"]
    # sigma(1 uS) = 0.728 uS: P(g < 0) = Phi(-1/0.728) = 8.5 %
    assert len(ibm) == 1 and ibm[0].startswith("programmed conductance below 0 (up to 8.")
    ln = export_aihwkit(NoiseProfile.from_paper("lognormal", s=0.2))["dropped"]
    assert len(ln) == 1 and ln[0].startswith("log-normal shape") and "0.0202" in ln[0]  # expm1(0.02)
    full = export_aihwkit(_measured_profile())["dropped"]
    heads = [d.split(" (")[0].split(":")[0] for d in full]
    for part in (
        "mean programming error",
        "programming sigma shape",
        "sigma after relaxation",
        "mean relaxation shift b(g)*log10(t/t0)",
        "stuck cells",
        "read noise vs conductance",
        "random telegraph noise",
        "spatial covariance",
        "endurance",
    ):
        assert heads.count(part) == 1, (part, full)
    assert all("\n" not in d for d in full)


def test_cli_prints_dropped_lines(tmp_path: Path) -> None:
    from hil.cli import cli

    p = tmp_path / "p.h5"
    save_profile(NoiseProfile.from_paper("gaussian", sigma=0.02, g_min=4e-6, stuck_hrs=0.02), p)
    r = CliRunner().invoke(cli, ["profile", "export-aihwkit", str(p), "-o", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("wrote aihwkit coefficients to ")
    assert lines[1:] == [f"dropped: {d}" for d in json.loads((tmp_path / "c.json").read_text())["dropped"]]
    assert len(lines) == 2 and "stuck cells" in lines[1]


def _snippet() -> str:
    """The python block of PROFILE.md between the aihwkit-snippet markers."""
    text = PROFILE_MD.read_text()
    m = re.search(r"<!-- aihwkit-snippet:start -->\s*```python\n(.*?)```\s*<!-- aihwkit-snippet:end -->", text, re.S)
    assert m, "calibration/PROFILE.md lost its marked aihwkit snippet"
    return m.group(1)


def _keys(d: Any) -> set[str]:
    if isinstance(d, dict):
        return set(d) | {k for v in d.values() for k in _keys(v)}
    return set()


def test_snippet_reads_only_exported_keys() -> None:
    """Without aihwkit: the documented snippet parses and every key it reads is in the export."""
    used = {
        n.slice.value
        for n in ast.walk(ast.parse(_snippet()))
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str)
    }
    exported = _keys(export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1s")))
    assert used and used <= exported, used - exported


def _clamped_std(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Std of max(0, N(mu, sigma^2)) (aihwkit clamps programmed conductances at 0)."""
    a = mu / sigma
    cdf, pdf = ndtr(a), np.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    m1 = mu * cdf + sigma * pdf
    m2 = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    return np.sqrt(m2 - m1 * m1)


def _std_and_se(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sample std per row and its standard error from the row's own 4th moment (delta method)."""
    x = x.double().numpy()
    d = x - x.mean(axis=1, keepdims=True)
    m2, m4 = (d**2).mean(axis=1), (d**4).mean(axis=1)
    s = np.sqrt(m2)
    return s, np.sqrt(np.maximum(m4 - m2 * m2, 0.0) / x.shape[1]) / (2 * s)


def _check(measured: Any, want: np.ndarray, export_dev: np.ndarray, what: str) -> np.ndarray:
    """Assert |std - want| <= Z * SE + the export's own deviation from the profile; return relative errors."""
    s, se = _std_and_se(measured)
    rel = s / want - 1
    tol = Z * se / want + export_dev
    bad = np.abs(rel) > tol
    assert not bad.any(), f"{what}: rel. error {rel[bad]} beyond {tol[bad]}"
    return rel


PROFILES = {
    "ibm_reram_1s": lambda: NoiseProfile.from_paper("ibm_reram", time="1s"),
    "lognormal_stuck": lambda: NoiseProfile.from_paper("lognormal", s=0.2, g_min=4e-6, g_max=36e-6, stuck_lrs=0.01),
    "measured": _measured_profile,
}


@pytest.mark.parametrize("name", list(PROFILES))
def test_documented_snippet_in_aihwkit(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run PROFILE.md's snippet in a real aihwkit; the noise it applies matches the profile's sigma(g)."""
    pytest.importorskip("aihwkit", reason="aihwkit is not installed (optional; see calibration/PROFILE.md)")
    import torch

    prof = PROFILES[name]()
    _, exp = write_aihwkit_json(prof, tmp_path / "coeffs.json")
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {}
    exec(compile(_snippet(), str(PROFILE_MD), "exec"), ns)
    torch.manual_seed(1234)
    noise, pcm, rpu = ns["noise_model"], ns["pcm_model"], ns["rpu"]
    assert rpu.noise_model is noise and rpu.forward.w_noise == exp["forward"]["w_noise"]
    assert (noise.g_converter.g_min, noise.g_converter.g_max) == (exp["g_min"], exp["g_max"])

    g_s = np.linspace(prof.g_min, prof.g_max, N_POINTS)
    g_us = g_s * 1e6
    target = torch.tensor(g_us, dtype=torch.float32)[:, None].expand(-1, N_SAMPLES).contiguous()

    def want_and_dev(t_s: float | None, coeffs: list[float]) -> tuple[np.ndarray, np.ndarray]:
        sig = prof.programming_sigma(g_s) * 1e6
        if t_s is not None:
            sig = np.hypot(sig, prof.relaxation(g_s, t_s)[1] * 1e6)
        want = _clamped_std(g_us, sig)
        got = _clamped_std(g_us, np.abs(np.polynomial.polynomial.polyval(g_s / prof.g_max, coeffs)))
        return want, np.abs(got / want - 1)

    prog = exp["PCMLikeNoiseModel"]["prog_coeff"]
    want, dev = want_and_dev(None, prog)
    if name != "measured":  # exact exports: the comparison is against the profile with no allowance
        assert dev.max() < 1e-9
    _check(noise.apply_programming_noise_to_conductance(target.clone()) - target, want, dev, "ReRAM programming")
    g_pcm = pcm.apply_programming_noise_to_conductance(target.clone())
    _check(g_pcm - target, want, dev, "PCM-like programming")
    nu = pcm.generate_drift_coefficients(target)
    assert torch.equal(pcm.apply_drift_noise_to_conductance(g_pcm, nu, 86400.0), g_pcm)  # drift and 1/f off
    t_prog = 1.0 if prof.open_loop is None else prof.open_loop.t_read_s
    for key, coeffs in exp["ReRamWan2022NoiseModel"]["coeff_dic"].items():
        t = float(key)
        want_t, dev_t = want_and_dev(t if t > t_prog else None, coeffs)
        g_t = noise.apply_drift_noise_to_conductance(target, target.clone(), t)
        _check(g_t - target, want_t, dev_t, f"ReRAM at t = {t:g} s")

    # whole weights through the converter: w -> (g_min + |w|/max|w| (g_max - g_min), g_min), differential read
    w = torch.linspace(-1.0, 1.0, 9, dtype=torch.float32)[:, None].expand(-1, N_SAMPLES).contiguous()
    noisy, _ = noise.apply_programming_noise(w)
    span = prof.g_max - prof.g_min
    g_on = prof.g_min + np.abs(w[:, 0].numpy().astype(np.float64)) * span
    g_off = np.full_like(g_on, prof.g_min)
    sig_on, sig_off = (prof.programming_sigma(x) * 1e6 for x in (g_on, g_off))
    c_on, c_off = (np.abs(np.polynomial.polynomial.polyval(x / prof.g_max, prog)) for x in (g_on, g_off))
    want_w = np.hypot(_clamped_std(g_on * 1e6, sig_on), _clamped_std(g_off * 1e6, sig_off)) / (span * 1e6)
    got_w = np.hypot(_clamped_std(g_on * 1e6, c_on), _clamped_std(g_off * 1e6, c_off)) / (span * 1e6)
    _check(noisy - w, want_w, np.abs(got_w / want_w - 1), "weights through the converter")

    # forward.w_noise: with weight_scaling_omega = 1 it is relative to the largest weight of a tile
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType

    f = rpu.forward  # switch off the other forward non-idealities to see the weight noise alone
    f.out_noise, f.inp_res, f.out_res, f.out_bound, f.inp_bound = 0.0, -1, -1, -1, -1
    f.bound_management, f.noise_management = BoundManagementType.NONE, NoiseManagementType.NONE
    rows = rpu.mapping.max_output_size  # one tile
    layer = AnalogLinear(1, rows, bias=False, rpu_config=rpu)
    wt = torch.full((rows, 1), 0.25)
    wt[0, 0] = 0.5
    layer.set_weights(wt)
    layer.eval()
    with torch.no_grad():
        ys = torch.stack([layer(torch.ones(1, 1))[0] for _ in range(40)]).double()
    diff = ((ys[0::2] - ys[1::2]) / math.sqrt(2) / 0.5).flatten()  # the fixed programmed weights cancel
    w_noise = exp["forward"]["w_noise"]
    if w_noise == 0:
        assert float(diff.abs().max()) == 0.0
    else:
        _check(diff[None, :], np.array([w_noise]), np.zeros(1), "forward.w_noise per largest weight")
