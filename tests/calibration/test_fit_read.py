"""Read noise versus conductance and random-telegraph detection on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import synthetic as syn
from calibration.datasets import ReadNoiseDataset
from calibration.fit_read import detect_rtn, fit_read_noise

G_MAX = 40e-6
LEVELS = np.linspace(5e-6, G_MAX, 8)


def test_read_sigma_polynomial_recovered() -> None:
    coeffs = np.array([0.1e-6, 0.3e-6])
    ds, _ = syn.reads(np.random.default_rng(0), LEVELS, 100, 50, coeffs, G_MAX)
    m = fit_read_noise(ds, G_MAX, degree=1)
    assert np.all(np.abs(m.sigma_poly.coeffs - coeffs) < 4 * m.sigma_poly.stderr)
    truth = np.polynomial.polynomial.polyval(m.table.levels_g / G_MAX, coeffs)
    assert np.all(np.abs(m.table.sigma - truth) / truth < 0.10)
    assert m.rtn is not None and m.rtn.fraction_bimodal < 0.005


def test_rtn_fraction_amplitude_and_switching_recovered() -> None:
    coeffs = np.array([0.2e-6])
    ds, planted = syn.reads(
        np.random.default_rng(1),
        LEVELS,
        250,
        200,
        coeffs,
        G_MAX,
        rtn_fraction=0.2,
        rtn_amplitude_rel=0.1,
        rtn_switch=0.1,
    )
    det = detect_rtn(ds.g_reads)
    # cells whose telegraph amplitude exceeds 7.5 read sigmas must all be found; Gaussian ones almost never
    strong = planted & (0.1 * ds.target_g > 1.5e-6)
    assert det.bimodal[strong].mean() > 0.95
    assert det.bimodal[~planted].mean() < 0.005
    m = fit_read_noise(ds, G_MAX, degree=0)
    assert m.rtn is not None
    assert abs(m.rtn.amplitude_rel_median - 0.1) < 0.01
    assert abs(m.rtn.switch_prob_median - 0.1) < 0.02
    # bimodal cells are excluded: the Gaussian read sigma stays the planted one
    assert abs(m.sigma_poly.coeffs[0] - 0.2e-6) / 0.2e-6 < 0.05
    expected = np.mean(planted & det.bimodal)
    assert m.rtn.fraction_bimodal == pytest.approx(det.bimodal.mean())
    assert abs(m.rtn.fraction_bimodal - expected) < 3 * m.rtn.fraction_se + 0.01


def test_grouping_by_cell_mean_without_targets() -> None:
    ds, _ = syn.reads(np.random.default_rng(2), LEVELS, 60, 30, np.array([0.3e-6]), G_MAX)
    m = fit_read_noise(ReadNoiseDataset(ds.g_reads), G_MAX, degree=0, n_groups=8)
    assert m.table.levels_g.size == 8
    np.testing.assert_allclose(m.table.levels_g, LEVELS, rtol=0.01)
    assert abs(m.sigma_poly.coeffs[0] - 0.3e-6) / 0.3e-6 < 0.05


def test_needs_three_reads() -> None:
    with pytest.raises(ValueError, match=">= 3 reads"):
        ReadNoiseDataset(np.ones((4, 2)))
