"""SWIM planning: verify masks for a budget, their predicted accuracy (Monte Carlo) and their write cost.

Verified devices take the profile's post-write-verify error, the others its open-loop error
(models.noise.profile_noise.ProfileNoise with a verified mask). Cost is counted in write cycles
(programming pulses), from the profile's measured pulses per device, and normalised to verifying
every device. A verified device's cost includes the touch-ups that program-settle-verify (`Reverify`,
`rram program --reverify`) is expected to give it. When the profile's verified law was measured with the same
program-settle-verify (`levels --reverify --settle --tol`, `ProgrammingModel.reverify`), its pulses per device
already hold them and the measured touch-ups per device are the expectation; otherwise per round P(it reads out
of tolerance after the settle time, from the profile) times the profile's pulses per write-verify
(`touchups_per_device`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr
from torch import Tensor, nn

from models.mapping import BitSlicedMapping
from models.montecarlo import MCResult, evaluate_mc
from models.noise.apply import clean_weights
from models.noise.profile_noise import ProfileNoise
from models.swim.selection import METHODS, Ranking, rank, weight_scores
from models.swim.sensitivity import Sensitivity, compute_sensitivity


@dataclass(frozen=True)
class Reverify:
    """Program-settle-verify after write-verify: `rounds` checks, each `settle_s` after the last write, that
    write-verify again the verified devices read more than `tol_s` from target (hil.deploy.procedure).

    The defaults are `rram program`'s (hil.deploy.DeploySettings), so a plan costs what the deployment does.
    """

    rounds: int = 2
    settle_s: float = 1.0
    tol_s: float = 0.8e-6

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"re-verify rounds must be a whole number >= 0 (0: none), got {self.rounds!r}")
        if not (math.isfinite(self.settle_s) and self.settle_s >= 0):
            raise ValueError(f"re-verify settle time must be a finite number of seconds >= 0, got {self.settle_s!r}")
        if not (math.isfinite(self.tol_s) and self.tol_s > 0):
            raise ValueError(f"re-verify tolerance must be a finite conductance > 0 S, got {self.tol_s!r}")


NO_REVERIFY = Reverify(rounds=0)


def measured_touchups(profile: Any, reverify: Reverify) -> float | None:
    """Touch-ups per device the profile measured with this very program-settle-verify, else None.

    The same means: the profile's verified law was measured with `reverify.rounds` (>= 1) rounds, the same
    settle and the same tolerance (to one part in 10^9: the numbers travel through run files and profiles as
    float64). Then its `pulses_mean` already holds the touch-ups' pulses and its error the touch-ups' effect.
    """
    record = getattr(getattr(profile, "verified", None), "reverify", None)
    if record is None or reverify.rounds == 0 or record.rounds != reverify.rounds:
        return None
    same = math.isclose(record.settle_s, reverify.settle_s, rel_tol=1e-9, abs_tol=1e-12)
    same = same and math.isclose(record.tol_s, reverify.tol_s, rel_tol=1e-9, abs_tol=0.0)
    return float(record.touchups_mean) if same else None


def verified_pulses(profile: Any, reverify: Reverify) -> tuple[float, float]:
    """(pulses per verified device, pulses per expected touch-up) under `reverify`, from the profile.

    A law measured with the same program-settle-verify: its `pulses_mean`, touch-ups included, and 0 (already
    counted). Otherwise one write-verify costs the law's pulses without its own measured touch-ups (all of
    `pulses_mean` for a law written once, as every profile before re-verify), and so does each touch-up.
    """
    ppd = _finite_or(pulses_per_device(profile, True), 10.0)
    if measured_touchups(profile, reverify) is not None:
        return ppd, 0.0
    own = float(getattr(getattr(profile, "verified", None), "touchup_pulses_mean", 0.0))
    once = _finite_or(ppd - own, ppd) if own > 0 else ppd
    return once, once


def out_of_tolerance(profile: Any, g: np.ndarray, settle_s: float, tol_s: float, factor: float = 1.0) -> np.ndarray:
    """P(|g_read - target| > tol_s) for a device write-verified to target g and read once settle_s later.

    Reading of the profile (Gaussian): the read error is N(mu, s^2), mu = the verified mean error plus the
    relaxation shift at settle_s, s^2 = the verified sigma^2 plus the relaxation's extra sigma^2 at settle_s,
    plus one read's noise where the programming sigma lacks it (a paper family; a measured profile's verified
    sigma comes from one read). The verified law is the one measured at its own read time (1 s in the demo
    chain), so a settle shorter than that is charged that read time's error. `factor` scales mu and s
    (SwimPlanner.noise_scale).
    """
    g = np.asarray(g, dtype=np.float64)
    mu = np.asarray(profile.programming_mean_error(g, verified=True), dtype=np.float64)
    var = np.asarray(profile.programming_sigma(g, verified=True), dtype=np.float64) ** 2
    if settle_s > 0:
        shift, extra = profile.relaxation(g, settle_s)
        mu = mu + np.asarray(shift, dtype=np.float64)
        var = var + np.asarray(extra, dtype=np.float64) ** 2
    if not getattr(profile, "programming_includes_read", profile.family is None):
        var = var + np.asarray(profile.read_sigma(g), dtype=np.float64) ** 2
    mu, sd = mu * factor, np.sqrt(var) * factor
    with np.errstate(divide="ignore", invalid="ignore"):
        hi, lo = (tol_s - mu) / sd, (-tol_s - mu) / sd  # +-inf where sd = 0: in or out for certain
    return np.clip(ndtr(-hi) + ndtr(lo), 0.0, 1.0)  # P(z > hi) + P(z < lo)


def touchups_per_device(profile: Any, g: np.ndarray, reverify: Reverify, factor: float = 1.0) -> np.ndarray:
    """Expected touch-ups of a device write-verified to target g over the re-verify rounds: rounds x P(out).

    A profile whose verified law was measured with this same program-settle-verify gives its measured touch-ups
    per device instead (`measured_touchups`, the same for every target and, being measured, not scaled by
    `factor`): on the demo chain (seed 1, `levels --reverify 2`) 1.09 per levels cell against 1.12 per deployed
    verified device, at 8.58 and 8.56 pulses a touch-up. Otherwise each check is counted as a fresh draw of the
    error law `settle_s` after a write: right for the devices touched up in the round before (a touch-up is a new
    write-verify, and the simulator restarts its relaxation), an upper bound for those read in tolerance (they
    drift less in one more settle than a fresh write did). Measured on the demo chain with a law written once
    (quick, seed 1, 356 verified devices): 0.61, 1.14, 1.60 touch-ups per device for 1, 2, 3 rounds against 0.53,
    1.06, 1.59 from its profile (the profile's P is low there: the deployment's verified devices read 1.74 uS off
    at 1 s, its law says about 1.25 uS); 2 rounds on seeds 1, 2: 406 and 400 touch-ups against 374 and 402
    expected.
    """
    if reverify.rounds == 0:
        return np.zeros(np.shape(g))
    measured = measured_touchups(profile, reverify)
    if measured is not None:
        return np.full(np.shape(g), measured)
    return reverify.rounds * out_of_tolerance(profile, g, reverify.settle_s, reverify.tol_s, factor)


def write_cycles(
    profile: Any, targets_s: np.ndarray, verified: np.ndarray, reverify: Reverify = Reverify()
) -> DeviceCycles:
    """Write cycles of programming devices at targets_s (S), the `verified` ones write-verified, with touch-ups.

    A touch-up costs the profile's mean write-verify pulses: it is one more WRITE_VERIFY, which starts near its
    target but with its ramps back at their first step (the demo chain's seeds 1 and 2 took 7.4 and 9.3 pulses
    a touch-up against their profiles' 12.5 and 9.1). When the profile measured this same program-settle-verify,
    its pulses per device already hold the touch-ups, which are then counted but not priced again
    (`verified_pulses`).
    """
    targets = np.asarray(targets_s, dtype=np.float64).ravel()
    ver = np.asarray(verified, dtype=bool).ravel()
    if targets.shape != ver.shape:
        raise ValueError(f"{targets.size} targets but {ver.size} verified flags: give one flag per device")
    ppd_o = _finite_or(pulses_per_device(profile, False), 2.0)
    ppd_v, ppd_t = verified_pulses(profile, reverify)
    touch = touchups_per_device(profile, targets, reverify)
    return DeviceCycles.of(
        int(ver.sum()), int((~ver).sum()), float(touch[ver].sum()), float(touch.sum()), ppd_v, ppd_o, ppd_t
    )


@dataclass(frozen=True)
class DeviceCycles:
    """Write cycles (pulses) of one programming, its ratio to write-verifying every device, and its touch-ups."""

    cycles: float
    cycles_norm: float  # against every device write-verified, with the same re-verify rounds
    touchups: float  # expected touch-up write-verifies (of the verified devices)
    full_wv: float  # cycles of write-verifying every device, touch-ups included

    @classmethod
    def of(
        cls,
        n_ver: int,
        n_open: int,
        touch_ver: float,
        touch_all: float,
        ppd_v: float,
        ppd_o: float,
        ppd_touchup: float | None = None,
    ) -> DeviceCycles:
        """From device counts, expected touch-ups (of the verified devices, of all) and pulses per device.

        `ppd_touchup`: pulses per touch-up (None: `ppd_v`; 0 when `ppd_v` already holds them, `verified_pulses`)."""
        per_touch = ppd_v if ppd_touchup is None else ppd_touchup
        cycles = n_ver * ppd_v + n_open * ppd_o + touch_ver * per_touch
        full = (n_ver + n_open) * ppd_v + touch_all * per_touch
        return cls(cycles, cycles / full if full > 0 else 0.0, touch_ver, full)


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
    cycles: float  # write cycles (pulses) to program the network, expected touch-ups included
    cycles_norm: float  # relative to write-verifying every device (with the same re-verify rounds)
    touchups: float = 0.0  # expected touch-up write-verifies of the verified devices (Reverify)
    # the 1 % KPP's order-statistic interval (models.montecarlo.kpp_ci) and the coverage it really has: >= 0.95
    # from 368 draws on, less below (an end is then the extreme draw)
    kpp1_ci: tuple[float, float] = (float("nan"), float("nan"))
    kpp1_ci_coverage: float = float("nan")
    draws: int = 0  # Monte Carlo draws behind the point

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
    reverify: Reverify = Reverify()  # the deployment's touch-up rounds, counted in the write cycles

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
        self.ppd_verified, self.ppd_touchup = verified_pulses(self.profile, self.reverify)
        self.touchups = self._touchups()
        self._rankings: dict[str, Ranking] = {}
        self._results: dict[tuple[bytes, int], MCResult] = {}  # per (mask, draws): see `evaluate`
        self.evaluations = 0  # Monte Carlo runs done (the rest of the points reused one)

    def _touchups(self) -> dict[str, Tensor]:
        """Expected touch-ups of each weight's devices were it verified (`touchups_per_device` at their targets)."""
        out = {}
        for name, w in self.weights.items():
            g_t = self._all.device_errors(name, w).target  # (P, *w.shape, D)
            p = touchups_per_device(self.profile, g_t.detach().cpu().double().numpy(), self.reverify, self.noise_scale)
            per = torch.as_tensor(p).mean(dim=(0, -1)) * self.devices_per_weight  # the planner's devices per weight
            out[name] = per.reshape(w.shape)
        return out

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

    def device_cycles(self, mask: dict[str, Tensor]) -> DeviceCycles:
        """Write cycles of programming with this mask, the verified devices' expected touch-ups included."""
        n_ver = int(sum(int(m.sum()) for m in mask.values()))
        dpw = self.devices_per_weight
        touch_ver = sum(float(t[mask[k].to(torch.bool).cpu()].sum()) for k, t in self.touchups.items() if k in mask)
        touch_all = sum(float(t.sum()) for t in self.touchups.values())
        return DeviceCycles.of(
            dpw * n_ver,
            dpw * (self.n_weights - n_ver),
            touch_ver,
            touch_all,
            self.ppd_verified,
            self.ppd_open,
            self.ppd_touchup,
        )

    def cycles(self, mask: dict[str, Tensor]) -> tuple[float, float]:
        """(write cycles, cycles relative to full write-verify) of programming with this mask."""
        c = self.device_cycles(mask)
        return c.cycles, c.cycles_norm

    def evaluate(self, mask: dict[str, Tensor] | None, draws: int | None = None) -> MCResult:
        """Monte Carlo accuracy with this verify mask, run once per distinct mask.

        Every point draws with the planner's seed, so two points with the same mask (every method at
        fraction 0 and 1, and methods that pick the same weights) would repeat the very same draws: the
        result of the first is returned for the others, the numbers a second run would give.
        """
        n = draws or self.mc_draws
        key = (_mask_key(mask, list(self.weights)), n)
        if key not in self._results:
            noise = self.noise(mask)
            self._results[key] = evaluate_mc(self.model, self.x_val, self.y_val, noise, n, seed=self.seed, kpp=(1.0,))
            self.evaluations += 1
        return self._results[key]

    def point(self, method: str, fraction: float) -> PlanPoint:
        mask = self.mask(method, fraction)
        res = self.evaluate(mask)
        cost = self.device_cycles(mask)
        lo, hi = res.ci95
        ci = res.kpp_ci.get(1.0, (float("nan"), float("nan")))
        return PlanPoint(
            method,
            fraction,
            int(sum(int(m.sum()) for m in mask.values())),
            res.mean,
            res.std,
            (lo, hi),
            _kpp(res, 1.0),
            res.worst,
            cost.cycles,
            cost.cycles_norm,
            cost.touchups,
            (float(ci[0]), float(ci[1])),
            float(res.kpp_ci_coverage.get(1.0, float("nan"))),
            int(res.n_draws),
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


def _mask_key(mask: dict[str, Tensor] | None, names: list[str]) -> bytes:
    """The verify mask's bits in layer order (None: nothing verified, the same as an all-False mask)."""
    if mask is None:
        return b"none"
    parts = []
    for n in names:
        m = mask.get(n)
        parts.append(b"-" if m is None else np.packbits(m.detach().to(torch.bool).cpu().numpy().ravel()).tobytes())
    return b"|".join(parts)


def _kpp(res: MCResult, k: float) -> float:
    """The k-th percentile accuracy of ``res`` (its first percentile when k was not measured)."""
    return float(res.kpp.get(k, next(iter(res.kpp.values()))))


def _finite_or(x: float, default: float) -> float:
    x = float(x)
    return x if np.isfinite(x) and x > 0 else default
