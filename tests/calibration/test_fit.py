"""fit_profile wiring: mapping defaults, dataset flags, one spatial source, and no torch import."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from calibration import synthetic as syn
from calibration.datasets import ErrorMapDataset, ProgrammingDataset
from calibration.fit import FitOptions, fit_profile

LEVELS = np.array([3e-6, 13e-6, 23e-6, 33e-6])


def test_mapping_defaults_and_families_from_verified_only() -> None:
    vf = syn.programming(np.random.default_rng(0), LEVELS, 300, "additive", eta=0.01, verified=True)
    p = fit_profile(verified=vf)
    assert p.open_loop is None and p.verified is not None
    assert (p.g_min, p.g_max, p.n_levels, p.bits_per_device) == (3e-6, 33e-6, 4, 2)
    assert set(p.families) == {"additive", "lognormal", "state_dependent"}
    with pytest.raises(ValueError, match="no open-loop programming model"):
        p.programming_sigma(LEVELS)
    assert p.programming_sigma(LEVELS, verified=True).shape == (4,)


def test_flag_mismatch_and_missing_mapping() -> None:
    ol = syn.programming(np.random.default_rng(1), LEVELS, 50)
    with pytest.raises(ValueError, match="open_loop dataset is marked verified=True"):
        fit_profile(open_loop=ProgrammingDataset(ol.target_g, ol.g, verified=True))
    with pytest.raises(ValueError, match="verified dataset is marked verified=False"):
        fit_profile(verified=ol)
    with pytest.raises(ValueError, match="give g_min and g_max"):
        fit_profile(error_map=ErrorMapDataset(np.zeros((4, 4))))


def test_error_map_spatial_and_exclusive_sources() -> None:
    """A white error map gives no spatial model (and says why); a correlated one, or spatial_alpha=1, gives one."""
    rng = np.random.default_rng(2)
    emap = ErrorMapDataset(rng.standard_normal((10, 10)) * 1e-6)
    opts = FitOptions(spatial_k=3, spatial_max_lag=2)
    p = fit_profile(error_map=emap, g_min=1e-6, g_max=40e-6, options=opts)
    assert p.spatial is None and "spatial: none" in p.provenance.notes and "permutation p = " in p.provenance.notes
    kept = fit_profile(error_map=emap, g_min=1e-6, g_max=40e-6, options=replace(opts, spatial_alpha=1.0))
    assert kept.spatial is not None and kept.spatial.method == "stationary" and kept.spatial.lag_cov.shape == (5, 5)
    # neighbours share half their error (a 2x2 moving sum): lag-1 correlation 0.5, found far above every shuffle
    smooth = rng.standard_normal((11, 11))
    corr = ErrorMapDataset((smooth[:-1, :-1] + smooth[1:, :-1] + smooth[:-1, 1:] + smooth[1:, 1:]) * 1e-6)
    p = fit_profile(error_map=corr, g_min=1e-6, g_max=40e-6, options=opts)
    assert p.spatial is not None and p.provenance.notes == ""
    with pytest.raises(ValueError, match="not both"):
        fit_profile(
            error_map=emap, spatial=syn.spatial(rng, (10, 10), 3, np.zeros((100, 1)), 1e-6), g_min=1e-6, g_max=40e-6
        )


def test_calibration_never_imports_torch() -> None:
    code = (
        "import sys, calibration.fit, hil.figures.profiles, calibration.aihwkit_export, calibration.summary, "
        "calibration.synthetic, calibration.fit_spatial_map; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
