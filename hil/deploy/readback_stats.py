"""Are a deployment's per-device read-back errors those its noise profile predicts? (issue 16, item 4)

Every used device that is neither a known defect (the plan's map) nor one the read-back itself shows as
defective is standardised by the profile's law for it, z = (e - mu(g, verified, t)) / sigma(g, verified, t)
with e = g_read - g_target and t the read delay (programming, relaxation and one read's noise, as
`NoiseProfile.device_error_moments` gives them). If the profile is right, z is N(0, 1): the Kolmogorov-Smirnov
test and the Anderson-Darling statistic (fully specified normal) say whether it is. Per group (open-loop,
verified) the measured and predicted means and sigmas say which part of the model is off and by how much.
Defects are counted apart: those the read-back found that the map lacked, against the count the prediction
expected (its unknown stuck fractions times the devices).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hil.deploy.defects import from_tiles
from hil.deploy.plan import Plan

# Anderson-Darling A^2 for a fully specified distribution: asymptotic upper 1 % point (Stephens 1974, case 0)
AD_CRITICAL_1PCT = 3.857


@dataclass
class GroupErrors:
    """Read-back errors of one group of healthy devices against the profile's law for them (S)."""

    devices: int
    mean_measured: float
    mean_predicted: float
    sigma_measured: float  # std of e - mu: the spread about the predicted mean
    sigma_predicted: float  # rms of the predicted sigmas
    z_std: float  # std of z: 1 when the sigmas are right


@dataclass
class ErrorConsistency:
    """Per-device read-back errors of a deployment against its profile: KS / AD on z, per-group moments."""

    devices: int
    ks_statistic: float
    ks_p: float
    ad_statistic: float
    groups: dict[str, GroupErrors]
    defects_new: int  # defective devices the read-back found that the plan's defect map lacked
    defects_expected: float  # the prediction's expectation of them (unknown stuck fractions x devices)

    @property
    def consistent(self) -> bool:
        """KS p > 0.01 (issue 16's target) and A^2 under its 1 % point."""
        return self.ks_p > 0.01 and self.ad_statistic < AD_CRITICAL_1PCT

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "consistent": self.consistent}


def anderson_darling_normal(z: np.ndarray) -> float:
    """A^2 of the sample z against the fully specified N(0, 1) (no parameters estimated)."""
    from scipy.special import log_ndtr

    z = np.sort(np.asarray(z, dtype=np.float64))
    n = z.size
    i = np.arange(1, n + 1)
    return float(-n - np.mean((2 * i - 1) * (log_ndtr(z) + log_ndtr(-z[::-1]))))


def readback_errors(
    plan: Plan, tiles: np.ndarray, profile: Any, read_delay_s: float, stuck_fractions: tuple[float, float]
) -> ErrorConsistency:
    """Compare the deployment's per-device errors (tile records) with the profile's predicted distribution."""
    from scipy import stats

    seen = from_tiles(tiles, plan.rows, plan.cols, plan.g_min, plan.g_max).defective.ravel()
    known = plan.defects.defective.ravel() if plan.defects is not None else np.zeros(plan.rows * plan.cols, bool)
    targets, errors, verified = [], [], []
    new_defects = used_total = 0
    for rec in tiles[: len(plan.tiles)]:
        tgt = rec["target"].astype(np.float64)
        used = ~np.isnan(tgt)
        used_total += int(used.sum())
        new_defects += int(np.sum(used & seen & ~known))
        ok = used & ~seen & ~known
        targets.append(tgt[ok])
        errors.append(rec["g_read"].astype(np.float64)[ok] - tgt[ok])
        verified.append(rec["verify"][ok] > 0)
    g, e, v = np.concatenate(targets), np.concatenate(errors), np.concatenate(verified)
    if g.size < 2:
        raise ValueError("the deployment has fewer than 2 healthy devices: nothing to compare with the profile")
    mu, sigma = np.zeros_like(g), np.zeros_like(g)
    for flag in (False, True):
        sel = v == flag
        if sel.any():
            mu[sel], sigma[sel] = profile.device_error_moments(g[sel], verified=flag, t_s=read_delay_s)
    if not np.all(sigma > 0):
        raise ValueError("the profile predicts a zero sigma for some devices: it cannot judge their errors")
    z = (e - mu) / sigma
    ks = stats.kstest(z, "norm")
    groups = {}
    for name, sel in (("open_loop", ~v), ("verified", v)):
        if sel.sum() >= 2:
            groups[name] = GroupErrors(
                int(sel.sum()),
                float(e[sel].mean()),
                float(mu[sel].mean()),
                float(np.std(e[sel] - mu[sel], ddof=1)),
                float(math.sqrt(np.mean(sigma[sel] ** 2))),
                float(np.std(z[sel], ddof=1)),
            )
    lrs, hrs = stuck_fractions
    n_unknown = used_total - int(sum(np.sum(~np.isnan(r["target"]) & known) for r in tiles[: len(plan.tiles)]))
    return ErrorConsistency(
        int(g.size),
        float(ks.statistic),
        float(ks.pvalue),
        anderson_darling_normal(z),
        groups,
        new_defects,
        float((lrs + hrs) * n_unknown),
    )
