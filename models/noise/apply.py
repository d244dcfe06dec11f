"""Applying weight noise to any nn.Module without touching its class (torch.func.functional_call)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from models.noise.base import WeightNoise

NOISY_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def noisy_weight_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the ``.weight`` parameters of Conv/Linear layers, in module order."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, NOISY_LAYERS) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def clean_weights(model: nn.Module) -> dict[str, Tensor]:
    """The Conv/Linear weight parameters (live tensors, so gradients reach the model)."""
    params = dict(model.named_parameters())
    return {n: params[n] for n in noisy_weight_names(model)}


def noisy_forward(model: nn.Module, x: Tensor, noise: WeightNoise, generator: torch.Generator | None = None) -> Tensor:
    """Forward ``x`` through ``model`` with one fresh draw of ``noise`` on its Conv/Linear weights."""
    noisy = noise.sample(clean_weights(model), generator)
    return functional_call(model, noisy, (x,))


def forward_with_weights(model: nn.Module, x: Tensor, weights: dict[str, Tensor]) -> Tensor:
    """Forward ``x`` with the given tensors in place of the named parameters (others unchanged)."""
    return functional_call(model, weights, (x,))
