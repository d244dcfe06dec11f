"""A profile whose verified law was measured with the deployment's own program-settle-verify already holds the
touch-ups in its pulses per device: the plan counts the measured touch-ups and does not price them twice."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from calibration.datasets import ProgrammingDataset
from calibration.fit import fit_profile
from calibration.noise_terms import ReverifyRecord
from calibration.profile import NoiseProfile
from models.swim.planning import (
    NO_REVERIFY,
    Reverify,
    SwimPlanner,
    measured_touchups,
    out_of_tolerance,
    touchups_per_device,
    verified_pulses,
    write_cycles,
)

TOL = 0.8e-6
G_LO, G_HI = 4e-6, 36e-6
PPD_V, PPD_O = 20.0, 2.0  # pulses per verified device (touch-ups included when measured so) and per one-shot one
TOUCH, TOUCH_PULSES = 0.9, 6.0  # measured touch-ups and their pulses per verified device (both in PPD_V)


def _profile(record: ReverifyRecord | None) -> NoiseProfile:
    """A measured profile (open-loop and verified laws from 4 fixed rows per level) with exact pulse means."""
    levels = np.repeat([G_LO, 20e-6, G_HI], 4)
    err = np.tile([-1e-6, -0.5e-6, 0.5e-6, 1e-6], 3)
    ol = ProgrammingDataset(levels, levels + 2 * err, np.full(levels.size, PPD_O))
    wv = ProgrammingDataset(levels, levels + err, np.full(levels.size, PPD_V), verified=True)
    prof = fit_profile(open_loop=ol, verified=wv)
    assert prof.verified is not None
    prof.verified = dataclasses.replace(prof.verified, reverify=record)
    prof.validate()
    return prof


MEASURED = ReverifyRecord(rounds=2, settle_s=1.0, tol_s=TOL, touchups_mean=TOUCH, touchup_pulses_mean=TOUCH_PULSES)
SAME = Reverify(2, 1.0, TOL)


def test_a_matching_profile_gives_its_measured_touch_ups_and_prices_none_again() -> None:
    prof = _profile(MEASURED)
    g = np.linspace(G_LO, G_HI, 5)
    assert measured_touchups(prof, SAME) == TOUCH
    np.testing.assert_array_equal(touchups_per_device(prof, g, SAME), np.full(5, TOUCH))
    np.testing.assert_array_equal(touchups_per_device(prof, g, SAME, factor=3.0), np.full(5, TOUCH))  # measured
    assert verified_pulses(prof, SAME) == (PPD_V, 0.0)
    verified = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)  # 3 verified, 5 one-shot devices
    cost = write_cycles(prof, np.full(8, 20e-6), verified, SAME)
    # exact: integer-valued pulse means, sums of 8 terms
    assert cost.cycles == 3 * PPD_V + 5 * PPD_O and cost.full_wv == 8 * PPD_V
    assert cost.cycles_norm == pytest.approx((3 * PPD_V + 5 * PPD_O) / (8 * PPD_V), rel=1e-15)
    assert cost.touchups == pytest.approx(3 * TOUCH, rel=1e-15)
    every = write_cycles(prof, np.full(8, 20e-6), np.ones(8, bool), SAME)
    assert every.cycles == 8 * PPD_V and every.cycles_norm == 1.0  # pulses_mean x devices


@pytest.mark.parametrize(
    "deployment",
    [Reverify(1, 1.0, TOL), Reverify(2, 3.0, TOL), Reverify(2, 1.0, 1.2e-6)],
    ids=["other rounds", "other settle", "other tol"],
)
def test_another_deployment_gets_the_modelled_touch_ups_at_one_write_verifys_price(deployment: Reverify) -> None:
    prof = _profile(MEASURED)
    assert measured_touchups(prof, deployment) is None
    once = PPD_V - TOUCH_PULSES  # the law's pulses without its own touch-ups: one write-verify
    assert verified_pulses(prof, deployment) == (once, once)
    g = np.full(8, 20e-6)
    verified = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)
    p = out_of_tolerance(prof, g, deployment.settle_s, deployment.tol_s)
    cost = write_cycles(prof, g, verified, deployment)
    touch = deployment.rounds * float(p[0])  # rounds x P(out) per verified device
    assert cost.touchups == pytest.approx(3 * touch, rel=1e-12)
    assert cost.cycles == pytest.approx(3 * once + 5 * PPD_O + 3 * touch * once, rel=1e-12)
    assert cost.full_wv == pytest.approx(8 * once * (1 + touch), rel=1e-12)


def test_a_profile_written_once_keeps_todays_numbers() -> None:
    """No record (every profile before re-verify, and `levels --reverify 0`): rounds x P(out) at pulses_mean each."""
    prof = _profile(None)
    assert measured_touchups(prof, SAME) is None and verified_pulses(prof, SAME) == (PPD_V, PPD_V)
    g = np.full(8, 20e-6)
    verified = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)
    for rounds in (0, 1, 2):
        rv = Reverify(rounds, 1.0, TOL)
        cost = write_cycles(prof, g, verified, rv)
        touch = rounds * float(out_of_tolerance(prof, g[:1], 1.0, TOL)[0])
        assert 0 < float(out_of_tolerance(prof, g[:1], 1.0, TOL)[0]) < 1  # the check is not vacuous
        assert cost.cycles == pytest.approx(3 * PPD_V + 5 * PPD_O + 3 * touch * PPD_V, rel=1e-12)
        assert cost.full_wv == pytest.approx(8 * PPD_V * (1 + touch), rel=1e-12)
    # a record of 0 rounds never matches, and a deployment without rounds has no touch-ups whatever the profile
    assert measured_touchups(_profile(MEASURED), NO_REVERIFY) is None
    assert not touchups_per_device(_profile(MEASURED), g, NO_REVERIFY).any()


def test_the_planner_prices_its_masks_the_same_way() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.zeros(2, 5), torch.zeros(2, dtype=torch.long)
    prof = _profile(MEASURED)
    planner = SwimPlanner(model, prof, x, y, reverify=SAME)
    mask = planner.mask("magnitude", 0.4)
    n_ver = int(sum(int(m.sum()) for m in mask.values()))
    assert n_ver == 6  # 40 % of 15 weights, 2 devices each
    cycles = 2 * n_ver * PPD_V + 2 * (15 - n_ver) * PPD_O  # the touch-ups are in PPD_V already
    assert planner.cycles(mask) == pytest.approx((cycles, cycles / (2 * 15 * PPD_V)), rel=1e-12)
    # float32 per-weight sums of the measured rate: relative error well under 1e-6
    assert planner.point("magnitude", 0.4).touchups == pytest.approx(2 * n_ver * TOUCH, rel=1e-6)
    # the same profile under another deployment's rounds: modelled touch-ups at one write-verify's pulses
    other = SwimPlanner(model, prof, x, y, reverify=Reverify(1, 1.0, TOL))
    once = PPD_V - TOUCH_PULSES
    assert (other.ppd_verified, other.ppd_touchup) == (once, once)
    assert other.cycles(mask)[0] > 2 * n_ver * once + 2 * (15 - n_ver) * PPD_O
    assert math.isfinite(other.cycles(mask)[1])
