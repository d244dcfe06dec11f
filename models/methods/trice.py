"""TRICE (SWIM/TRICE overview, III-B): right-censored Gaussian noise injection, lambda and sigma chosen by KPP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.methods._util import require_noise
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS
from models.methods.selection import SearchResult, evaluate_on_validation, search_method, validation_data, variant
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
    search: bool = option(
        False, "choose lam and scale on the validation split by the k-th percentile accuracy (replaces lam, scale)"
    )
    lam_grid: tuple[float, ...] = option(
        (0.5, 1.0, 1.5, 3.0), "lam values the search tries (this project's grid: the overview gives none)"
    )
    scale_grid: tuple[float, ...] = option(
        (0.5, 1.0, 1.5, 2.0), "training noise scales the search tries (this project's grid)"
    )
    search_epochs: int | None = option(None, "epochs of each trial run (none = the run's epochs)", minimum=1)
    search_draws: int = option(200, "noise draws of each trial's validation score", minimum=1)
    kpp: float = option(1.0, "k (percent) of the k-th percentile accuracy the search maximises")


@METHODS.register("trice")
class TRICE(TrainingMethod[TRICEOptions]):
    """Training with right-censored Gaussian noise: per-weight deviations above lam*sigma are clamped to lam*sigma.

    Paper note: censoring only the right tail makes the training noise biased (mean -phi(lam) +
    lam*(1-Phi(lam)) in std units); the re-centred variant is offered because the deployed device
    noise is zero-mean. The censoring acts on the weight error (TRICE models noise on the weights); on
    a sign-separate device mapping the device's right tail is the weight's left tail for negative weights.

    Automated selection (``search=true``): TRICE picks its hyperparameters by the k-th percentile
    accuracy (KPP) under the deployment noise. Reading taken (the overview names the automated choice
    but gives neither its procedure nor grids): every (lam, scale) of lam_grid x scale_grid trains a
    trial from the run's initial weights for search_epochs; its KPP over search_draws draws of the
    run's noise on ``ctx.val_loader`` is the score, the highest wins (ties: the earlier in the grid)
    and the run then trains with it. The training sigma is searched as a multiple of the run's noise
    (``scale``), so a measured profile without a scalar sigma is searched the same way.
    """

    name = "trice"
    Options = TRICEOptions

    def prepare(self, ctx: TrainContext) -> None:
        noise = require_noise(ctx, self.name)
        o = self.options
        self.base = noise
        self.search_result: SearchResult[dict[str, float]] | None = None
        lam, scale = o.lam, o.scale
        if o.search and not ctx.resuming:  # on resume the choice comes back via load_state_dict
            self.search_result = self._search(ctx, noise)
            lam, scale = self.search_result.best["lam"], self.search_result.best["scale"]
        self._use(lam, scale)

    def _search(self, ctx: TrainContext, noise: WeightNoise) -> SearchResult[dict[str, float]]:
        o = self.options
        if not 0.0 < o.kpp <= 100.0:
            raise ValueError(f"method {self.name!r}: kpp is a percentile in (0, 100], got {o.kpp:g}")
        bad = [s for s in o.scale_grid if not s > 0]
        if bad:
            raise ValueError(f"method {self.name!r}: scale_grid values must be > 0, got {bad}")
        validation_data(ctx, self.name)  # refuse a missing split before any trial trains
        grid = [{"lam": lam, "scale": s} for lam in o.lam_grid for s in o.scale_grid]
        epochs = ctx.config.epochs if o.search_epochs is None else o.search_epochs
        seed = ctx.config.seed + 54_321  # the same noise draws score every candidate

        def kpp(model: torch.nn.Module) -> float:
            r = evaluate_on_validation(model, ctx, noise, o.search_draws, seed, self.name, o.kpp)
            return r.kpp[float(o.kpp)]

        return search_method(
            ctx, grid, lambda c: variant(self, lam=c["lam"], scale=c["scale"], search=False), kpp, epochs
        )

    def _use(self, lam: float, scale: float) -> None:
        self.lam, self.scale = float(lam), float(scale)
        base = self.base if self.scale == 1.0 else self.base.scaled(self.scale)
        self.noise = censored(base, self.lam, self.options.recentre)

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        loss = F.cross_entropy(ctx.noisy_forward(x, self.noise).float(), y)
        ctx.backward(loss)
        logs = {"loss": float(loss.detach())}
        if self.options.search:
            logs.update(lam=self.lam, scale=self.scale)
        return logs

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lam": self.lam, "scale": self.scale}
        if self.search_result is not None:
            out["search"] = self.search_result.to_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lam" in state and "scale" in state:
            self._use(state["lam"], state["scale"])
        if "search" in state:
            r = state["search"]
            self.search_result = SearchResult(tuple(r["candidates"]), tuple(r["scores"]), int(r["best"]))
