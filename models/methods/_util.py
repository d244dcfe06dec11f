"""Shared helpers of the robust training methods: the run's noise, its batches, BatchNorm buffer copies, re-init."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from models.methods.base import TrainContext
from models.noise.base import WeightNoise


def require_noise(ctx: TrainContext, method: str) -> WeightNoise:
    """The run's noise model, or a one-line error saying the method needs one."""
    if ctx.noise is None:
        raise ValueError(f"method {method!r} needs a noise model (--profile, --sigma, --lognormal or --additive)")
    return ctx.noise


def norm_buffer_copies(model: nn.Module) -> dict[str, Tensor]:
    """Clones of the normalisation layers' running statistics, to pass to ``functional_call`` with extra forwards.

    An extra train-mode forward then updates the clones, not the model: BatchNorm statistics move once
    per batch, and no buffer saved for an earlier forward's backward is modified in place.
    """
    out: dict[str, Tensor] = {}
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            for b_name, b in m.named_buffers(recurse=False):
                if b is not None:
                    out[f"{mod_name}.{b_name}" if mod_name else b_name] = b.clone()
    return out


def epoch_batches(loader: Any, epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches of one epoch from the loop's loader (``.epoch(e)``) or from any iterable of (x, y)."""
    return loader.epoch(epoch) if hasattr(loader, "epoch") else loader


def loader_length(loader: Any) -> int:
    """Batches per epoch of the loop's loader (1 for a loader without a length)."""
    return len(loader) if hasattr(loader, "__len__") else 1


def first_batch(ctx: TrainContext) -> Tensor:
    """One training input batch on the run's device (for dry runs that discover shapes)."""
    if ctx.train_loader is None:
        raise ValueError("this method needs the training data at prepare() (ctx.train_loader is None)")
    for x, _y in epoch_batches(ctx.train_loader, 0):
        return x.to(ctx.device)
    raise ValueError("the training data is empty")


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Reset every layer that has ``reset_parameters`` with a fixed seed (fresh, reproducible init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return model


def average_over_ranks(ctx: TrainContext, tensors: Iterable[Tensor]) -> None:
    """Average tensors in place over the data-parallel ranks (nothing to do in one process)."""
    if ctx.world_size <= 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in tensors:
            dist.all_reduce(t)
            t /= ctx.world_size
