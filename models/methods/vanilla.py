"""Vanilla training (the "W/O noise" baseline): plain cross-entropy on the clean weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions
from models.methods.registry import METHODS


@dataclass(frozen=True)
class VanillaOptions(MethodOptions):
    """Vanilla training has no options."""


@METHODS.register("vanilla")
class Vanilla(TrainingMethod[VanillaOptions]):
    """Noise-free training; the reference every robust method is compared to."""

    name = "vanilla"
    Options = VanillaOptions

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        loss = F.cross_entropy(ctx.forward(x), y)
        ctx.backward(loss)
        return {"loss": float(loss.detach())}
