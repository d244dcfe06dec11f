"""Programming-noise fits recover known polynomials, tables and pulse counts within their uncertainty."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from calibration import synthetic as syn
from calibration.datasets import ProgrammingDataset
from calibration.families import fit_families
from calibration.fit_programming import fit_programming

G_MAX = 40e-6
IBM_1S = np.array([0.348, 16.030, -43.853, 45.393, -16.815]) * 1e-6


def test_sigma_polynomial_recovers_ibm_coefficients_within_3_se() -> None:
    rng = np.random.default_rng(1)
    levels = np.linspace(1e-6, G_MAX, 32)
    mean_true = np.array([0.2e-6, -0.5e-6])
    ds = syn.programming(rng, levels, 2000, sigma_coeffs=IBM_1S, mean_coeffs=mean_true, g_max=G_MAX)
    m = fit_programming(ds, G_MAX)
    z = (m.sigma_poly.coeffs - IBM_1S) / m.sigma_poly.stderr
    assert np.all(np.abs(z) < 3.5), z
    assert 0.3 < m.sigma_poly.chi2_red < 2.0  # chi2_27/27 has sd 0.27
    # the mean-error polynomial (degree 4) contains the true linear law within its errors
    true_mean = np.r_[mean_true, 0, 0, 0]
    zm = (m.mean_poly.coeffs - true_mean) / m.mean_poly.stderr
    assert np.all(np.abs(zm) < 3.5), zm
    g = np.linspace(1e-6, G_MAX, 50)
    truth = np.polynomial.polynomial.polyval(g / G_MAX, IBM_1S)
    assert np.max(np.abs(m.sigma(g) - truth) / truth) < 0.05


def test_level_table_sigma_within_10_percent_and_se() -> None:
    rng = np.random.default_rng(2)
    levels = np.array([5e-6, 15e-6, 25e-6, 35e-6])
    frac = np.array([0.01, 0.04, 0.04, 0.01])
    ds = syn.programming(rng, levels, 1500, "state_dependent", level_sigma_frac=frac, g_max=G_MAX)
    m = fit_programming(ds, G_MAX)
    np.testing.assert_allclose(m.table.levels_g, levels)
    np.testing.assert_array_equal(m.table.count, 1500)
    true = frac * G_MAX
    assert np.all(np.abs(m.table.sigma - true) / true < 0.10)
    assert np.all(np.abs(m.table.sigma - true) < 4 * m.table.sigma_se)
    assert np.all(np.abs(m.table.mean) < 4 * m.table.mean_se)
    # 4 levels: the polynomial degree drops to 3 and passes through the per-level sigmas
    assert m.sigma_poly.coeffs.size == 4
    np.testing.assert_allclose(m.sigma(levels), m.table.sigma, rtol=1e-6)


def test_pulses_mean_and_se() -> None:
    rng = np.random.default_rng(3)
    ds = syn.programming(rng, np.array([10e-6, 30e-6]), 5000, "additive", eta=0.01, verified=True, mean_pulses=7.0)
    m = fit_programming(ds, G_MAX)
    assert m.verified
    assert abs(m.pulses_mean - 7.0) < 4 * m.pulses_se
    assert m.pulses_se == pytest.approx(np.sqrt(6.0 / 10000), rel=0.1)  # Poisson(6) + 1


def test_pulses_unknown_is_nan() -> None:
    ds = ProgrammingDataset(np.array([1e-6, 1e-6, 2e-6, 2e-6]), np.array([1.1e-6, 0.9e-6, 2.1e-6, 1.8e-6]))
    m = fit_programming(ds, G_MAX)
    assert np.isnan(m.pulses_mean)


def test_continuous_targets_are_binned() -> None:
    rng = np.random.default_rng(4)
    t = rng.uniform(2e-6, G_MAX, 20000)
    ds = ProgrammingDataset(t, t + 0.5e-6 * rng.standard_normal(t.size))
    m = fit_programming(ds, G_MAX)
    assert m.table.levels_g.size == 32
    assert np.all(np.abs(m.table.sigma - 0.5e-6) / 0.5e-6 < 0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_g=[1.0, 2.0], g=[1.0]), "same length"),
        (dict(target_g=[[1.0, 2.0]], g=[[1.0, 2.0]]), "1-D"),
        (dict(target_g=[1.0, np.nan], g=[1.0, 2.0]), "NaN"),
        (dict(target_g=[-1.0, 2.0], g=[1.0, 2.0]), ">= 0"),
        (dict(target_g=[1.0, 2.0], g=[1.0, 2.0], pulses=[1, -1]), "pulses"),
        (dict(target_g=[1.0, 2.0], g=[1.0, 2.0], t_read_s=0), "t_read_s"),
        (dict(target_g=[1.0, 2.0], g=[1.0, 2.0], written=[True]), "same length"),
        (dict(target_g=[1.0, 2.0, 3.0], g=[1.0, 2.0, 3.0], written=[True, False, False]), "at least 2 written rows"),
    ],
)
def test_bad_dataset_refused_with_named_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProgrammingDataset(**kwargs)


def test_unwritten_rows_count_in_the_pulses_but_not_in_the_error_law() -> None:
    """Write-verify leaves a cell already in tolerance alone (0 pulses): it costs its zero pulses, but its error is
    the older state it kept, so the table, the polynomials and the families come from the written rows only."""
    rng = np.random.default_rng(5)
    levels = np.repeat([10e-6, 30e-6], 400)
    written = rng.random(levels.size) < 0.8
    err = np.where(written, 1.0e-6, 0.2e-6) * rng.standard_normal(levels.size)  # untouched cells: a smaller error
    pulses = np.where(written, 1 + rng.poisson(8.0, levels.size), 0).astype(float)
    ds = ProgrammingDataset(levels, levels + err, pulses, verified=True, written=written)
    m = fit_programming(ds, G_MAX)
    for i, lv in enumerate(m.table.levels_g):
        sel = written & (levels == lv)
        assert m.table.count[i] == sel.sum()
        assert m.table.sigma[i] == pytest.approx(np.std(err[sel], ddof=1), rel=1e-12)
        assert m.table.mean[i] == pytest.approx(np.mean(err[sel]), rel=1e-12)
    assert m.pulses_mean == pytest.approx(pulses.mean(), rel=1e-12)  # every row, the untouched ones' 0 included
    law = ds.law()
    assert law.g.size == written.sum() and law.written is None
    whole = ProgrammingDataset(levels[written], levels[written] + err[written], verified=True)
    fam, ref = fit_families(ds, G_MAX), fit_families(whole, G_MAX)
    assert {k: f.params for k, f in fam.items()} == {k: f.params for k, f in ref.items()}


# ------------------------------------------------------------------------------ program-settle-verify


def _reverified(rng: np.random.Generator, n: int = 600, rounds: int = 2) -> ProgrammingDataset:
    """A write-verify campaign measured with `rounds` settle-read-touch-up rounds: pulses hold the touch-ups'."""
    levels = np.repeat([10e-6, 30e-6], n // 2)
    touchups = rng.integers(0, rounds + 1, levels.size)
    touchup_pulses = np.where(touchups > 0, touchups * (1 + rng.poisson(5.0, levels.size)), 0).astype(float)
    pulses = 1 + rng.poisson(10.0, levels.size) + touchup_pulses
    g = levels + 0.8e-6 * rng.standard_normal(levels.size)
    return ProgrammingDataset(
        levels,
        g,
        pulses,
        verified=True,
        reverify_rounds=rounds,
        settle_s=1.0,
        tol_s=0.8e-6,
        touchups=touchups,
        touchup_pulses=touchup_pulses,
    )


def test_a_reverified_law_records_its_settings_and_touch_ups_per_device(tmp_path) -> None:
    from calibration.fit import fit_profile
    from calibration.profile import load_profile, save_profile

    rng = np.random.default_rng(6)
    ds = _reverified(rng)
    m = fit_programming(ds, G_MAX)
    assert m.reverify is not None
    assert (m.reverify_rounds, m.settle_s, m.reverify.tol_s) == (2, 1.0, 0.8e-6)
    assert ds.touchups is not None and ds.touchup_pulses is not None and ds.pulses is not None
    # per device over every row, as pulses_mean (exact sample means)
    assert m.touchups_mean == pytest.approx(ds.touchups.mean(), rel=1e-12)
    assert m.touchup_pulses_mean == pytest.approx(ds.touchup_pulses.mean(), rel=1e-12)
    assert m.pulses_mean == pytest.approx(ds.pulses.mean(), rel=1e-12)
    # the profile file keeps them (an optional group /verified/reverify); a law written once has none
    once = ProgrammingDataset(ds.target_g, ds.g, ds.pulses - ds.touchup_pulses, verified=True)
    for verified in (ds, once):
        prof = fit_profile(open_loop=dataclasses.replace(once, verified=False, pulses=None), verified=verified)
        back = load_profile(save_profile(prof, tmp_path / f"p{verified.reverify_rounds}.h5"))
        assert back == prof and back.verified is not None
        assert back.verified.reverify == prof.verified.reverify  # type: ignore[union-attr]
        with h5py.File(tmp_path / f"p{verified.reverify_rounds}.h5", "r") as f:
            assert ("reverify" in f["verified"]) == (verified.reverify_rounds > 0)
            assert "reverify" not in f["open_loop"]
    law = back.verified
    assert law is not None and law.reverify is None and law.reverify_rounds == 0
    assert (law.settle_s, law.touchups_mean, law.touchup_pulses_mean) == (0.0, 0.0, 0.0)


def test_the_law_of_the_written_rows_keeps_the_touch_ups() -> None:
    rng = np.random.default_rng(7)
    ds = _reverified(rng)
    written = rng.random(ds.g.size) < 0.7
    ds = dataclasses.replace(ds, written=written)
    law = ds.law()
    assert law.reverify_rounds == 2 and law.touchups is not None and ds.touchups is not None
    assert np.array_equal(law.touchups, ds.touchups[written])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reverify_rounds=-1), "reverify_rounds must be a whole number >= 0"),
        (dict(reverify_rounds=1.5), "reverify_rounds must be a whole number >= 0"),
        (dict(settle_s=-1.0), "settle_s must be a finite time >= 0 s"),
        (dict(tol_s=0.0), "tol_s must be a finite conductance > 0 S"),
        (dict(verified=False), "reverify_rounds > 0 needs a write-verify dataset"),
        (dict(touchups=None), "reverify_rounds > 0 needs tol_s, pulses, touchups and touchup_pulses"),
        (dict(tol_s=None), "reverify_rounds > 0 needs tol_s, pulses, touchups and touchup_pulses"),
        (dict(touchups=[3, 0, 0, 0]), "touchups must be from 0 to reverify_rounds"),
        (dict(touchups=[0, 0, 0]), "same length"),
        (dict(touchup_pulses=[9, 0, 0, 0]), "touchup_pulses must be from 0 to the row's pulses"),
        (dict(reverify_rounds=0, touchups=[1, 0, 0, 0]), "touchups are given but reverify_rounds is 0"),
    ],
)
def test_bad_reverify_settings_are_refused_with_named_field(kwargs: dict, message: str) -> None:
    good: dict = dict(
        target_g=[1e-6, 1e-6, 2e-6, 2e-6],
        g=[1.1e-6, 0.9e-6, 2.1e-6, 1.8e-6],
        pulses=[8, 3, 5, 4],
        verified=True,
        reverify_rounds=2,
        settle_s=1.0,
        tol_s=0.8e-6,
        touchups=[1, 0, 2, 0],
        touchup_pulses=[4, 0, 3, 0],
    )
    ProgrammingDataset(**good)
    with pytest.raises(ValueError, match=message):
        ProgrammingDataset(**{**good, **kwargs})


def test_a_damaged_reverify_record_is_refused() -> None:
    from calibration.errors import ProfileError
    from calibration.noise_terms import ReverifyRecord

    m = fit_programming(_reverified(np.random.default_rng(8)), G_MAX)
    m.validate("verified")
    for change, message in (
        (dict(rounds=0), "rounds must be a whole number >= 1"),
        (dict(touchups_mean=2.5), "touchups_mean must be from 0 to rounds"),
        (dict(touchup_pulses_mean=m.pulses_mean + 1), "touchup_pulses_mean must be a finite number from 0"),
        (dict(tol_s=float("nan")), "tol_s must be a finite conductance"),
    ):
        assert m.reverify is not None
        bad = dataclasses.replace(m, reverify=dataclasses.replace(m.reverify, **change))
        with pytest.raises(ProfileError, match=message):
            bad.validate("verified")
    ol = dataclasses.replace(m, verified=False, reverify=ReverifyRecord(1, 1.0, 0.8e-6, 0.5, 1.0))
    with pytest.raises(ProfileError, match="only a write-verify"):
        ol.validate("open_loop")
