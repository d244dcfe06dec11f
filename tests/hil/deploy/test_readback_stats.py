"""Per-device read-back errors against the profile (issue 16 item 4): a chip drawn from the profile's own law
passes, one whose sigma is off by 30 % is caught, and the per-group numbers say by how much."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from calibration.profile import NoiseProfile
from hil.deploy.placement import build_plan
from hil.deploy.readback_stats import AD_CRITICAL_1PCT, anderson_darling_normal, readback_errors

G_MIN, G_MAX = 2e-6, 40e-6


def _plan_and_tiles(profile: NoiseProfile, sigma_factor: float, seed: int):
    """A 40x40-weight layer on one 40x80 tile, read back with errors from the profile's law (x sigma_factor)."""
    torch.manual_seed(0)
    lin = nn.Linear(40, 40, bias=False)
    mask = {"weight": torch.rand(40, 40) < 0.3}
    plan = build_plan(lin, G_MIN, G_MAX, mask, rows=40, cols=80)
    assert len(plan.tiles) == 1
    rows, cols = plan.tile_cells(0)
    lp = plan.layers[0]
    rng = np.random.default_rng(seed)
    target = np.full((plan.rows, plan.cols), np.nan)
    verify = np.zeros((plan.rows, plan.cols), np.uint8)
    target[np.ix_(rows, cols)] = lp.targets
    verify[np.ix_(rows, cols)] = lp.verify
    g_read = np.full_like(target, np.nan)
    for flag in (False, True):
        sel = ~np.isnan(target) & ((verify > 0) == flag)
        mu, sd = profile.device_error_moments(target[sel], verified=flag, t_s=1.0)
        g_read[sel] = target[sel] + mu + sigma_factor * sd * rng.standard_normal(sel.sum())
    dtype = [("target", "f4", (target.size,)), ("verify", "u1", (target.size,)), ("g_prog", "f4", (target.size,))]
    dtype += [("status", "u1", (target.size,)), ("g_read", "f4", (target.size,))]
    tiles = np.zeros(1, dtype)
    tiles["target"][0], tiles["verify"][0], tiles["g_read"][0] = target.ravel(), verify.ravel(), g_read.ravel()
    tiles["g_prog"][0] = g_read.ravel()
    return plan, tiles


def test_errors_drawn_from_the_profile_are_consistent_and_a_30_percent_sigma_error_is_caught() -> None:
    profile = NoiseProfile.from_paper("ibm_reram", g_min=G_MIN, g_max=G_MAX, time="1s")
    plan, tiles = _plan_and_tiles(profile, 1.0, seed=3)
    good = readback_errors(plan, tiles, profile, 1.0, (0.0, 0.0))
    assert good.devices == 3200 and good.defects_new == 0
    # under the null, p is uniform: this fixed seed's p (deterministic) lies far from the 1 % rejection region
    assert good.consistent and good.ks_p > 0.05
    for g in good.groups.values():  # SE of a sample std is sigma / sqrt(2n) (n >= 900 here: 2.4 % at most)
        assert g.z_std == pytest.approx(1.0, abs=4 * 0.024)
        assert g.sigma_measured == pytest.approx(g.sigma_predicted, rel=4 * 0.024)
    bad = readback_errors(plan, *_plan_and_tiles(profile, 1.3, seed=3)[1:], profile, 1.0, (0.0, 0.0))
    assert not bad.consistent and bad.ks_p < 1e-6
    for g in bad.groups.values():
        assert g.z_std == pytest.approx(1.3, abs=4 * 0.024 * 1.3)  # the report says "30 % too wide"


def test_anderson_darling_of_a_normal_sample_by_hand() -> None:
    from scipy import stats

    z = np.array([-1.2, -0.3, 0.1, 0.4, 1.7])
    n, f = z.size, stats.norm.cdf(np.sort(z))
    i = np.arange(1, n + 1)
    by_hand = -n - np.sum((2 * i - 1) * (np.log(f) + np.log(1 - f[::-1]))) / n
    assert anderson_darling_normal(z) == pytest.approx(by_hand, rel=1e-12)
    shifted = np.random.default_rng(0).standard_normal(2000) + 0.3  # a 0.3 sd shift over 2000: A^2 far past 1 %
    assert anderson_darling_normal(shifted) > AD_CRITICAL_1PCT


def test_defects_seen_by_the_read_back_are_counted_apart() -> None:
    profile = NoiseProfile.from_paper("ibm_reram", g_min=G_MIN, g_max=G_MAX, time="1s")
    plan, tiles = _plan_and_tiles(profile, 1.0, seed=4)
    g = tiles["g_read"][0]
    used = np.flatnonzero(~np.isnan(tiles["target"][0]))
    g[used[:5]] = 2.5 * G_MAX  # five devices read far above g_max: stuck on
    res = readback_errors(plan, tiles, profile, 1.0, (0.01, 0.0))
    assert res.defects_new == 5 and res.devices == 3200 - 5
    assert res.defects_expected == pytest.approx(0.01 * 3200)
    assert res.consistent  # the stuck devices are counted, not standardised
