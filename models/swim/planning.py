"""SWIM planning: verify masks for a budget, their predicted accuracy (Monte Carlo) and their write cost.

Verified devices take the profile's post-write-verify error, the others its open-loop error
(models.noise.profile_noise.ProfileNoise with a verified mask). Cost is counted in write cycles
(programming pulses), from the profile's measured pulses per device, and normalised to verifying
every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from models.mapping import BitSlicedMapping
from models.montecarlo import MCResult, evaluate_mc
from models.noise.apply import clean_weights
from models.noise.profile_noise import ProfileNoise
from models.swim.selection import METHODS, Ranking, rank, weight_scores
from models.swim.sensitivity import Sensitivity, compute_sensitivity


@dataclass
class PlanPoint:
    """One budget of one selection method."""

    method: str
    fraction: float
    verified_weights: int
    mean: float
    std: float
    ci95: tuple[float, float]
    kpp1: float
    worst: float
    cycles: float  # write cycles (pulses) to program the network
    cycles_norm: float  # relative to write-verifying every device

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SwimPlanner:
    """Everything needed to plan selective write-verify for one model on one chip profile."""

    model: nn.Module
    profile: Any
    x_val: Tensor
    y_val: Tensor
    mapping: str = "analog"  # the model file's mapping (models.checkpoint.model_mapping)
    bits: int = 8  # weight resolution of the bit-sliced mapping
    t_s: float = 0.0
    granularity: str = "weight"
    mc_draws: int = 200
    seed: int = 0
    noise_scale: float = 1.0  # >1: "what if the chip were this much noisier" stress studies
    sens: Sensitivity | None = None

    def __post_init__(self) -> None:
        self.weights = {k: v.detach() for k, v in clean_weights(self.model).items()}
        self._open = self.noise(None)
        self._all = ProfileNoise.from_profile(
            self.profile, self.t_s, mapping=self.mapping, bits=self.bits, all_verified=True, factor=self.noise_scale
        )
        self.sigma_open = self._open.noise_std(self.weights)
        self.sigma_verified = self._all.noise_std(self.weights)
        self.n_weights = int(sum(w.numel() for w in self.weights.values()))
        mp = self._open.mapping
        self.devices_per_weight = int(mp.devices_per_weight) * 2 if isinstance(mp, BitSlicedMapping) else 2
        self.ppd_open = _finite_or(pulses_per_device(self.profile, False), 2.0)
        self.ppd_verified = _finite_or(pulses_per_device(self.profile, True), 10.0)
        self._rankings: dict[str, Ranking] = {}

    def noise(self, mask: dict[str, Tensor] | None) -> ProfileNoise:
        return ProfileNoise.from_profile(
            self.profile, self.t_s, mapping=self.mapping, bits=self.bits, verified_mask=mask, factor=self.noise_scale
        )

    def sensitivity(self, batches: Any, max_samples: int | None = 2000) -> Sensitivity:
        """Gradient and Gauss-Newton diagonal over training data (computed once)."""
        if self.sens is None:
            self.sens = compute_sensitivity(self.model, batches, max_samples=max_samples)
        return self.sens

    def ranking(self, method: str) -> Ranking:
        if method not in self._rankings:
            needs = method in ("swim", "gradient")
            if needs and self.sens is None:
                raise ValueError("compute the sensitivity first (SwimPlanner.sensitivity)")
            scores = weight_scores(method, self.weights, self.sens, self.sigma_open, self.sigma_verified, self.seed)
            self._rankings[method] = rank(scores, self.granularity)
        return self._rankings[method]

    def mask(self, method: str, fraction: float) -> dict[str, Tensor]:
        return self.ranking(method).mask(fraction)

    def cycles(self, mask: dict[str, Tensor]) -> tuple[float, float]:
        """(write cycles, cycles relative to full write-verify) of programming with this mask."""
        n_ver = int(sum(int(m.sum()) for m in mask.values()))
        n_open = self.n_weights - n_ver
        dpw = self.devices_per_weight
        cycles = dpw * (n_ver * self.ppd_verified + n_open * self.ppd_open)
        return float(cycles), float(cycles / (dpw * self.n_weights * self.ppd_verified))

    def evaluate(self, mask: dict[str, Tensor] | None, draws: int | None = None) -> MCResult:
        return evaluate_mc(
            self.model, self.x_val, self.y_val, self.noise(mask), draws or self.mc_draws, seed=self.seed, kpp=(1.0,)
        )

    def point(self, method: str, fraction: float) -> PlanPoint:
        mask = self.mask(method, fraction)
        res = self.evaluate(mask)
        cyc, norm = self.cycles(mask)
        lo, hi = res.ci95
        return PlanPoint(
            method,
            fraction,
            int(sum(int(m.sum()) for m in mask.values())),
            res.mean,
            res.std,
            (lo, hi),
            _kpp(res, 1.0),
            res.worst,
            cyc,
            norm,
        )

    def curve(self, fractions: list[float], methods: Sequence[str] = METHODS, progress: Any = None) -> list[PlanPoint]:
        """Accuracy and cost versus fraction verified for every method (the same draws for all)."""
        for m in methods:
            if m not in METHODS:
                raise ValueError(f"unknown selection method {m!r} (one of {', '.join(METHODS)})")
        out = []
        for m in methods:
            for f in fractions:
                out.append(self.point(m, f))
                if progress is not None:
                    progress()
        return out

    def fraction_for_target(
        self, target: float, method: str = "swim", metric: str = "mean", tol: float = 0.005
    ) -> float:
        """Smallest verified fraction whose predicted accuracy (mean or kpp1) reaches `target` (bisection)."""

        def acc(f: float) -> float:
            p = self.point(method, f)
            return p.mean if metric == "mean" else p.kpp1

        if acc(1.0) < target:
            raise ValueError(f"even full write-verify predicts {metric} accuracy below {target:.3f}")
        lo, hi = 0.0, 1.0
        if acc(lo) >= target:
            return 0.0
        while hi - lo > tol:
            mid = (lo + hi) / 2
            if acc(mid) >= target:
                hi = mid
            else:
                lo = mid
        return hi


class MissingPulses(ValueError):
    """The profile lacks the mean pulses per device that write-cycle counts need; says how to supply them."""


PULSES_HINT = {
    True: "add --pulses-verified N to `rram profile new`, or fit the profile from a `rram characterize levels` run",
    False: "fit the profile from a `rram characterize levels` run",
}


def pulses_per_device(profile: Any, verified: bool) -> float:
    """The profile's mean programming pulses per device; `MissingPulses` naming the option or run that supplies it."""
    try:
        return float(profile.pulses_per_device(verified))
    except ValueError:
        kind = "write-verified" if verified else "open-loop"
        raise MissingPulses(
            f"the profile has no mean pulse count for {kind} devices, which write-cycle counts need: "
            f"{PULSES_HINT[verified]}"
        ) from None


def _kpp(res: MCResult, k: float) -> float:
    """The k-th percentile accuracy of ``res`` (its first percentile when k was not measured)."""
    return float(res.kpp.get(k, next(iter(res.kpp.values()))))


def _finite_or(x: float, default: float) -> float:
    x = float(x)
    return x if np.isfinite(x) and x > 0 else default
