"""Programming noise per target level: mean error and sigma as a table and as c0..c4 polynomials in g/g_max."""

from __future__ import annotations

import math

import numpy as np

from calibration.datasets import ProgrammingDataset
from calibration.noise_terms import LevelTable, ProgrammingModel, ReverifyRecord
from calibration.stats import fit_poly, group_levels, group_moments


def fit_programming(ds: ProgrammingDataset, g_max: float, degree: int = 4) -> ProgrammingModel:
    """Fit sigma(g) = sum c_i (g/g_max)^i (IBM B.2 form) and the mean error, weighted by per-level SEs.

    The error law comes from the rows the programming wrote (`ds.law()`), the pulses per device from every row;
    so do the touch-ups per device of a law measured with program-settle-verify (`reverify_rounds` > 0), recorded
    with its rounds, settle and tolerance (`ProgrammingModel.reverify`) so a plan can tell whether its deployment
    writes the same way.
    """
    if not g_max > 0:
        raise ValueError(f"g_max must be > 0 S, got {g_max}")
    law = ds.law()
    groups = group_levels(law.target_g)
    mom = group_moments(law.error, groups)
    table = LevelTable(groups.levels, mom.mean, mom.mean_se, np.nan_to_num(mom.sigma), mom.sigma_se, groups.count)
    mean_poly = fit_poly(groups.levels, mom.mean, mom.mean_se, g_max, degree)
    sigma_poly = fit_poly(groups.levels, mom.sigma, mom.sigma_se, g_max, degree)
    pulses_mean = pulses_se = float("nan")
    if ds.pulses is not None:
        pulses_mean = float(np.mean(ds.pulses))
        pulses_se = float(np.std(ds.pulses, ddof=1) / math.sqrt(ds.pulses.size))
    reverify = None
    if ds.reverify_rounds > 0:
        assert ds.tol_s is not None and ds.touchups is not None and ds.touchup_pulses is not None  # the dataset checks
        reverify = ReverifyRecord(
            rounds=int(ds.reverify_rounds),
            settle_s=float(ds.settle_s),
            tol_s=float(ds.tol_s),
            touchups_mean=float(np.mean(ds.touchups)),
            touchup_pulses_mean=float(np.mean(ds.touchup_pulses)),
        )
    return ProgrammingModel(
        verified=bool(ds.verified),
        t_read_s=float(ds.t_read_s),
        table=table,
        mean_poly=mean_poly,
        sigma_poly=sigma_poly,
        pulses_mean=pulses_mean,
        pulses_se=pulses_se,
        gate_map=ds.gate_map,
        reverify=reverify,
    )
