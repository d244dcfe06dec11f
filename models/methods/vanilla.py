"""Vanilla training (the "W/O noise" baseline): plain cross-entropy on the clean weights."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from models.methods.base import TrainContext, TrainingMethod
from models.methods.registry import register


@register
class Vanilla(TrainingMethod):
    """Noise-free training; the reference every robust method is compared to."""

    name = "vanilla"
    defaults: dict = {}

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        loss = F.cross_entropy(ctx.forward(x), y)
        ctx.backward(loss)
        return {"loss": float(loss.detach())}
