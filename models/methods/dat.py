"""DAT device-aware training (Park et al., Algorithm 1): sharpness-aware steps along device-noise directions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from models.methods._covariance import LayerCovariance, layer_covariance
from models.methods._util import norm_buffer_copies, require_noise
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option, to_int
from models.methods.registry import METHODS
from models.noise.apply import clean_weights, forward_with_weights


class NoiseDirections:
    """Sampler of eta = mu + A_k z over all Conv/Linear weights (A_k = V_k D_k^1/2).

    The covariance is block-diagonal over layers (layers draw independent noise). ``scope`` "layer"
    keeps the top-k eigenpairs of every layer's block (rank k per layer); "global" keeps the k largest
    of the whole matrix, i.e. the k largest among the per-layer top-k. ``rank=None`` samples the full
    covariance exactly (DAT-Full).
    """

    def __init__(
        self,
        covs: dict[str, LayerCovariance],
        shapes: dict[str, torch.Size],
        rank: int | None,
        generator: torch.Generator | None = None,
        scope: str = "layer",
    ) -> None:
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
        self.covs, self.shapes, self.rank = covs, shapes, rank
        self.factors: dict[str, Tensor] = {}
        self.slots: dict[str, Tensor] = {}
        if rank is None:
            return
        per = {n: c.top_eigen(rank, generator) for n, c in covs.items()}
        if scope == "layer":
            start = 0
            for name, (v, vecs) in per.items():
                self.factors[name] = vecs * v.sqrt()
                self.slots[name] = torch.arange(start, start + len(v), device=v.device)
                start += len(v)
            self.k = start
            return
        vals = torch.cat([v for v, _ in per.values()])
        owner = torch.cat([torch.full((len(v),), i, device=vals.device) for i, (v, _) in enumerate(per.values())])
        col = torch.cat([torch.arange(len(v), device=vals.device) for v, _ in per.values()])
        keep = torch.argsort(vals, descending=True)[:rank]
        for i, (name, (v, vecs)) in enumerate(per.items()):
            sel = keep[owner[keep] == i]  # positions (in z) of this layer's kept pairs
            self.slots[name] = torch.nonzero(owner[keep] == i).flatten()
            self.factors[name] = vecs[:, col[sel]] * v[col[sel]].sqrt()
        self.k = int(len(keep))

    def sample(self, generator: torch.Generator | None) -> dict[str, Tensor]:
        """One eta per layer, shaped like the weights."""
        if self.rank is None:
            return {n: c.sample(generator).view(self.shapes[n]) for n, c in self.covs.items()}
        first = next(iter(self.covs.values())).d
        z = torch.randn(self.k, generator=generator, device=first.device, dtype=first.dtype)
        return {n: (c.mu + self.factors[n] @ z[self.slots[n]]).view(self.shapes[n]) for n, c in self.covs.items()}


def dat_perturbation(grads: dict[str, Tensor], eta: dict[str, Tensor], mode: str = "projection") -> dict[str, Tensor]:
    """Algorithm 1 line 9: eps = (g . eta / ||eta||^2) eta (global dot products); mode "noise": sign(g . eta) eta."""
    dot = cast(Tensor, sum((grads[n].float() * eta[n].float()).sum() for n in eta))  # eta is never empty
    if mode == "noise":
        s = torch.sign(dot)
        return {n: s * e for n, e in eta.items()}
    nrm = cast(Tensor, sum((e.float() ** 2).sum() for e in eta.values()))
    coef = dot / torch.clamp(nrm, min=torch.finfo(torch.float32).tiny)
    return {n: coef * e for n, e in eta.items()}


def parse_rank(value: Any) -> int | None:
    """DAT's rank option: k >= 1 eigen-directions, or full/none/0 for exact draws (None)."""
    return None if str(value).lower() in ("full", "none", "0") else to_int(value, minimum=1)


@dataclass(frozen=True)
class DATOptions(MethodOptions):
    """Options of device-aware training (Algorithm 1)."""

    rank: int | None = option(
        10,
        'k noise directions ("DAT-Fast"); full = exact N(mu, Sigma) draws ("DAT-Full")',
        parse=parse_rank,
        kind="int|full",
    )
    scope: Literal["layer", "global"] = option(
        "layer", "layer: top-k of every layer's covariance block; global: top-k of the whole matrix"
    )
    alpha: float = option(10.0, "step along eps (the paper gives none; 10 picked on digits from 1, 10, 30, 100)")
    perturbations: int = option(1, "perturbations p per step (as in the paper's runs)", minimum=1)
    refresh_every: int = option(
        1, "steps between covariance/eigen updates (the covariance depends on the weights)", minimum=1
    )
    step: Literal["projection", "noise"] = option(
        "projection", "projection: the paper's eps; noise: sign(g.eta)*eta, a full noise draw oriented uphill"
    )


@METHODS.register("dat")
class DAT(TrainingMethod[DATOptions]):
    """Device-aware training: SAM-like ascent along sampled device-noise directions, descent with the averaged gradient.

    Each step: g = grad of the clean loss; for j = 1..p: eta_j = mu + A_k z_j, eps_j = projection of g on
    eta_j, gradient at w + alpha*eps_j; the optimizer steps with the average (Algorithm 1). The
    covariance is that of the run's weight noise: profile spatial model (correlated cells) plus the
    independent per-level part, or diagonal for the paper families (``_covariance``). The paper
    computes the covariance and its eigenpairs once; here they depend on the weights (refresh_every).
    Paper vs common sense: |eps| = |g.eta|/||eta|| shrinks with the gradient, so the ascent vanishes near
    convergence unless alpha is large (100 diverges on digits). With a diagonal (uncorrelated)
    covariance the top eigenvalue is shared by a whole layer's weights; the top-k basis is then a random orthonormal basis of that tied
    eigenspace, redrawn at every refresh (a plain top-k would pick k arbitrary single weights).
    The paper injects noise into one layer only, where a global and a per-layer top-k coincide. With
    every layer noisy, a global top-k spends all k directions on the layer with the largest per-weight
    variance (uniform device noise: the layer with the largest max|W|) and leaves the others
    unperturbed, so DAT-Fast did no better than vanilla on digits; the default keeps k per layer.
    """

    name = "dat"
    Options = DATOptions

    def prepare(self, ctx: TrainContext) -> None:
        require_noise(ctx, self.name)
        o = self.options
        self.rank = o.rank
        self.alpha = o.alpha
        self.p = o.perturbations
        self.refresh = o.refresh_every
        self.scope: str = o.scope
        self.mode: str = o.step
        self.directions: NoiseDirections | None = None
        self._built_at = -1

    def _directions(self, ctx: TrainContext, w: dict[str, Tensor]) -> NoiseDirections:
        if self.directions is None or ctx.step - self._built_at >= self.refresh:
            noise = require_noise(ctx, self.name)
            covs = {n: layer_covariance(noise, n, t) for n, t in w.items()}
            self.directions = NoiseDirections(
                covs, {n: t.shape for n, t in w.items()}, self.rank, ctx.generator, self.scope
            )
            self._built_at = ctx.step
        return self.directions

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        model = ctx.raw_model
        w = clean_weights(model)
        names = list(w)
        loss0 = F.cross_entropy(forward_with_weights(model, x, norm_buffer_copies(model)).float(), y)
        g = dict(zip(names, torch.autograd.grad(loss0, [w[n] for n in names])))
        dirs = self._directions(ctx, w)
        total = 0.0
        for _ in range(self.p):
            eps = dat_perturbation(g, dirs.sample(ctx.generator), self.mode)
            wp = {n: w[n] + (self.alpha * eps[n]).to(w[n].dtype).detach() for n in names}
            loss = F.cross_entropy(forward_with_weights(model, x, wp).float(), y) / self.p
            ctx.backward(loss)
            total += float(loss.detach())
        return {"loss": total, "loss_clean": float(loss0.detach())}
