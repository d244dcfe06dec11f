"""Noise-injection training ("W/ noise"): a fresh weight-noise draw per forward, gradient on clean weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS


@dataclass(frozen=True)
class NoiseInjectionOptions(MethodOptions):
    """Options of noise-injection training."""

    scale: float = option(1.0, "training noise relative to the run's noise (1.0 = same level)")


@METHODS.register("noise")
class NoiseInjection(TrainingMethod[NoiseInjectionOptions]):
    """Each step samples W + dW from the run's noise and back-propagates the loss to the clean W."""

    name = "noise"
    Options = NoiseInjectionOptions

    def prepare(self, ctx: TrainContext) -> None:
        if ctx.noise is None:
            raise ValueError("method 'noise' needs a noise model (--profile, --sigma, --lognormal or --additive)")
        scale = self.options.scale
        self._noise = ctx.noise if scale == 1.0 else ctx.noise.scaled(scale)

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        loss = F.cross_entropy(ctx.noisy_forward(x, self._noise), y)
        ctx.backward(loss)
        return {"loss": float(loss.detach())}
