"""Shared helpers of the robust training methods: option parsing, noise magnitude, BatchNorm freezing."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from models.methods.base import TrainContext
from models.noise.base import WeightNoise


def as_float(method: str, key: str, value: Any) -> float:
    """Option value as a float (CLI options arrive as strings); clear error otherwise."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method {method!r}: option {key} must be a number, got {value!r}") from None


def as_int(method: str, key: str, value: Any, minimum: int | None = None) -> int:
    """Option value as an int, optionally checked against a lower bound."""
    try:
        f = float(value)
        if f != int(f):
            raise ValueError
        out = int(f)
    except (TypeError, ValueError):
        raise ValueError(f"method {method!r}: option {key} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"method {method!r}: option {key} must be >= {minimum}, got {out}")
    return out


def as_bool(method: str, key: str, value: Any) -> bool:
    """Option value as a bool: accepts bools, 0/1 and true/false/yes/no/on/off strings."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on", "y"):
        return True
    if s in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(f"method {method!r}: option {key} must be true or false, got {value!r}")


def as_float_list(method: str, key: str, value: Any) -> list[float]:
    """Option value as a list of floats: a list/tuple or a comma-separated string."""
    if isinstance(value, (int, float)):
        return [float(value)]
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [as_float(method, key, v) for v in items if str(v).strip() != ""]
    if not out:
        raise ValueError(f"method {method!r}: option {key} needs at least one number")
    return out


def as_str_list(value: Any) -> list[str]:
    """Option value as a list of non-empty strings: a list or a comma-separated string (None -> [])."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


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
