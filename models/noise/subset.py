"""Noise on some layers only: a base family on the chosen weights, the other weights clean.

DAT (dat-device-aware-training.txt, Sec. IV) injects its device noise into the last fully connected layer
only; ``{"family": "layers", "layers": ["last"], "base": {...}}`` gives that setting for any base family.
"last" is the last noisy weight in the model's order (its classifier in the architectures here); other
entries are parameter names (``noisy_weight_names``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from models.noise.base import WeightNoise


@dataclass(frozen=True)
class LayerSubsetNoise(WeightNoise):
    """``base`` on the weights named in ``layers`` ("last" = the model's last noisy weight); the rest unperturbed."""

    base: WeightNoise
    layers: tuple[str, ...] = ("last",)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("noise family 'layers' needs at least one layer name (or 'last')")

    def chosen(self, weights: dict[str, Tensor]) -> list[str]:
        """The names of ``weights`` the base noise applies to, in the model's order; ValueError for an unknown one."""
        names = list(weights)
        picked = set()
        for name in self.layers:
            if name == "last":
                if names:
                    picked.add(names[-1])
            elif name in weights:
                picked.add(name)
            else:
                raise ValueError(
                    f"noise layers: {name!r} is not a noisy weight of this model (it has {', '.join(names)})"
                )
        return [n for n in names if n in picked]

    def _parts(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: weights[n] for n in self.chosen(weights)}

    @staticmethod
    def _merge(weights: dict[str, Tensor], drawn: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """Drawn tensors for the chosen weights, the clean weight repeated (a view) for the others."""
        return {k: drawn[k] if k in drawn else v.unsqueeze(0).expand(n, *v.shape) for k, v in weights.items()}

    def sample_batch(self, weights, n_draws, generator=None):
        return self._merge(weights, self.base.sample_batch(self._parts(weights), n_draws, generator), n_draws)

    def sample_draws(self, weights, generators):
        return self._merge(weights, self.base.sample_draws(self._parts(weights), generators), len(generators))

    def draw_sampler(self, weights):
        inner = self.base.draw_sampler(self._parts(weights))
        return lambda generators: self._merge(weights, inner(generators), len(generators))

    def scaled(self, factor: float) -> LayerSubsetNoise:
        return replace(self, base=self.base.scaled(factor))

    def noise_std(self, weights):
        std = self.base.noise_std(self._parts(weights))
        return {k: std[k] if k in std else v.new_zeros(v.shape) for k, v in weights.items()}

    @property
    def magnitude(self):
        return self.base.magnitude

    def describe(self) -> dict:
        return {"family": "layers", "layers": list(self.layers), "base": self.base.describe()}
