"""TRICE (SWIM/TRICE overview, III-B): noise injection with right-censored Gaussian weight noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.methods._util import require_noise
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS
from models.noise.base import WeightNoise
from models.noise.families import CensoredNoise, MomentNoise, censored_mean, censored_var


@dataclass
class CensoredDeviation(WeightNoise):
    """Right-censoring of any base noise: the deviation from the clean weight is clamped at lam * std.

    Used when the run's noise is not a per-weight Gaussian family (e.g. a measured profile); for a
    Gaussian base this is exactly TRICE's censored Gaussian. ``recentre`` subtracts the Gaussian
    censored mean E[min(Z, lam)] * std (exact for a Gaussian base, an approximation otherwise).
    """

    base: WeightNoise
    lam: float
    recentre: bool = False

    def sample_batch(self, weights, n_draws, generator=None):
        raw = self.base.sample_batch(weights, n_draws, generator)
        std = self.base.noise_std(weights)
        shift = censored_mean(self.lam) if self.recentre else 0.0
        out = {}
        for name, w in weights.items():
            s = std[name].detach()
            dev = (raw[name] - w).detach()
            out[name] = w + torch.minimum(dev, self.lam * s) - shift * s
        return out

    def noise_std(self, weights):
        k = math.sqrt(censored_var(self.lam))
        return {n: s * k for n, s in self.base.noise_std(weights).items()}

    def scaled(self, factor):
        return CensoredDeviation(self.base.scaled(factor), self.lam, self.recentre)


def censored(noise: WeightNoise, lam: float, recentre: bool) -> WeightNoise:
    """TRICE's training noise built on the run's noise: exact censored Gaussian for Gaussian families."""
    if isinstance(noise, CensoredNoise):
        noise = noise.base
    if isinstance(noise, MomentNoise):
        return CensoredNoise(noise, lam, recentre)
    return CensoredDeviation(noise, lam, recentre)


@dataclass(frozen=True)
class TRICEOptions(MethodOptions):
    """Options of TRICE."""

    lam: float = option(1.0, "censoring point in units of the per-weight noise std (the overview gives none)")
    recentre: bool = option(
        False, "subtract the censored mean so the training noise is zero-mean (false: keep TRICE's negative mean)"
    )
    scale: float = option(1.0, "training noise relative to the run's noise")


@METHODS.register("trice")
class TRICE(TrainingMethod[TRICEOptions]):
    """Training with right-censored Gaussian noise: per-weight deviations above lam*sigma are clamped to lam*sigma.

    Paper note: censoring only the right tail makes the training noise biased (mean -phi(lam) +
    lam*(1-Phi(lam)) in std units); the re-centred variant is offered because the deployed device
    noise is zero-mean. The censoring acts on the weight error (TRICE models noise on the weights); on
    a sign-separate device mapping the device's right tail is the weight's left tail for negative weights.
    """

    name = "trice"
    Options = TRICEOptions

    def prepare(self, ctx: TrainContext) -> None:
        noise = require_noise(ctx, self.name)
        o = self.options
        base = noise if o.scale == 1.0 else noise.scaled(o.scale)
        self.noise = censored(base, o.lam, o.recentre)

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        loss = F.cross_entropy(ctx.noisy_forward(x, self.noise).float(), y)
        ctx.backward(loss)
        return {"loss": float(loss.detach())}
