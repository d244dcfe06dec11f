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

    ``keep_variance`` (DAT-Fast only): Algorithm 1's A_k z carries only the top-k eigenvalues, so with a
    diagonal covariance of n tied variances a layer keeps k/n of its noise. With keep_variance a
    diagonal layer (independent noise: its draw costs O(n), like k directions) is sampled exactly, and a
    correlated layer keeps its top-k directions plus independent noise of the remaining per-weight
    variance diag(Sigma) - diag(A_k A_k^T), so every weight keeps its full variance.
    """

    def __init__(
        self,
        covs: dict[str, LayerCovariance],
        shapes: dict[str, torch.Size],
        rank: int | None,
        generator: torch.Generator | None = None,
        scope: str = "layer",
        keep_variance: bool = False,
    ) -> None:
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
        self.covs, self.shapes, self.rank = covs, shapes, rank
        self.factors: dict[str, Tensor] = {}
        self.slots: dict[str, Tensor] = {}
        self.resid: dict[str, Tensor] = {}  # std of the independent remainder per weight (keep_variance)
        self.k = 0
        # sample(reuse=True): output buffers (flat and weight-shaped views), z, and per-layer constants
        self._buffers: dict[str, Tensor] = {}
        self._views: dict[str, Tensor] = {}
        self._sd: dict[str, Tensor] = {}
        self._zr: dict[str, Tensor] = {}
        self._noise: dict[str, Tensor] = {}
        self._contiguous: dict[str, bool] = {}
        self._z = torch.empty(0)
        if rank is None:
            return
        lowrank = {n: c for n, c in covs.items() if not (keep_variance and c.B is None)}
        per = {n: c.top_eigen(rank, generator) for n, c in lowrank.items()}
        if scope == "layer":
            start = 0
            for name, (v, vecs) in per.items():
                self.factors[name] = vecs * v.sqrt()
                self.slots[name] = torch.arange(start, start + len(v), device=v.device)
                start += len(v)
            self.k = start
        elif per:
            vals = torch.cat([v for v, _ in per.values()])
            owner = torch.cat([torch.full((len(v),), i, device=vals.device) for i, (v, _) in enumerate(per.values())])
            col = torch.cat([torch.arange(len(v), device=vals.device) for v, _ in per.values()])
            keep = torch.argsort(vals, descending=True)[:rank]
            for i, (name, (v, vecs)) in enumerate(per.items()):
                sel = keep[owner[keep] == i]  # positions (in z) of this layer's kept pairs
                self.slots[name] = torch.nonzero(owner[keep] == i).flatten()
                self.factors[name] = vecs[:, col[sel]] * v[col[sel]].sqrt()
            self.k = int(len(keep))
        if keep_variance:
            for name, c in covs.items():
                kept = (self.factors[name] ** 2).sum(1) if name in self.factors else torch.zeros_like(c.d)
                self.resid[name] = (c.diag() - kept).clamp(min=0).sqrt()

    def sample(self, generator: torch.Generator | None, *, reuse: bool = False) -> dict[str, Tensor]:
        """One eta per layer, shaped like the weights.

        ``reuse`` writes into buffers kept between calls (no allocation per step; DAT's loop): the tensors
        returned are then overwritten by the next call. The random numbers are drawn in the same order and
        combined in the same floating-point operations either way, so both give the same values bit for bit.
        """
        if not reuse:
            return {n: e.clone() for n, e in self.sample(generator, reuse=True).items()}
        if not self._buffers:
            self._allocate()
        if self.rank is None:
            for n, c in self.covs.items():
                buf = self._buffers[n].normal_(generator=generator).mul_(self._sd[n]).add_(c.mu)
                if c.B is not None:  # as LayerCovariance.sample: the independent part, then B z_r
                    zr = self._zr[n].normal_(generator=generator)
                    buf.add_(c._b(zr[:, None])[:, 0])
            return self._views
        if self.k:
            self._z.normal_(generator=generator)
        for n, c in self.covs.items():
            buf = self._buffers[n]
            if n in self.factors:
                torch.mv(self.factors[n], self._z_of(n), out=buf)
                buf.add_(c.mu)
                if n in self.resid:
                    buf.add_(self._noise[n].normal_(generator=generator).mul_(self.resid[n]))
            elif n in self.resid:
                buf.normal_(generator=generator).mul_(self.resid[n]).add_(c.mu)
            else:
                buf.copy_(c.mu)
        return self._views

    def _allocate(self) -> None:
        """The buffers `sample(reuse=True)` writes into, and the per-layer constants it reuses."""
        first = next(iter(self.covs.values())).d
        for n, c in self.covs.items():
            self._buffers[n] = torch.empty_like(c.d)
            self._views[n] = self._buffers[n].view(self.shapes[n])
            if self.rank is None:
                self._sd[n] = c.d.clamp(min=0).sqrt()
                if c.B is not None:
                    self._zr[n] = torch.empty(c.B.shape[1], device=c.d.device, dtype=c.d.dtype)
            elif n in self.factors and n in self.resid:
                self._noise[n] = torch.empty_like(c.d)
        self._z = torch.empty(self.k, device=first.device, dtype=first.dtype)

    def _z_of(self, name: str) -> Tensor:
        """This layer's entries of z: a view when its slots are contiguous (scope "layer"), else a gather."""
        slots = self.slots[name]
        if name not in self._contiguous:
            n = len(slots)
            self._contiguous[name] = n > 0 and bool(
                torch.equal(slots, torch.arange(int(slots[0]), int(slots[0]) + n, device=slots.device))
            )
        if self._contiguous[name]:
            return self._z.narrow(0, int(slots[0]), len(slots))
        return self._z[slots]

    def covariance(self, name: str) -> Tensor:
        """The dense covariance the sampler draws for layer ``name`` (tests and tiny layers only)."""
        if self.rank is None:
            return self.covs[name].dense()
        c = self.covs[name]
        f = self.factors.get(name, torch.zeros(c.n, 0, dtype=c.d.dtype, device=c.d.device))
        cov = f @ f.T
        if name in self.resid:
            cov = cov + torch.diag(self.resid[name] ** 2)
        return cov

    def matvec(self, name: str, v: Tensor) -> Tensor:
        """Sigma v for a flat v of layer ``name``, with the covariance the sampler draws."""
        if self.rank is None:
            return self.covs[name].matvec(v[:, None])[:, 0]
        out = torch.zeros_like(v)
        if name in self.factors:
            f = self.factors[name]
            out = out + f @ (f.T @ v)
        if name in self.resid:
            out = out + self.resid[name] ** 2 * v
        return out

    def trace(self, name: str) -> Tensor:
        """tr(Sigma) of layer ``name``: the expected squared norm of its zero-mean noise part."""
        if self.rank is None:
            return self.covs[name].trace()
        out = torch.zeros((), dtype=self.covs[name].d.dtype, device=self.covs[name].d.device)
        if name in self.factors:
            out = out + (self.factors[name] ** 2).sum()
        if name in self.resid:
            out = out + (self.resid[name] ** 2).sum()
        return out


def dat_perturbation(grads: dict[str, Tensor], eta: dict[str, Tensor], mode: str = "projection") -> dict[str, Tensor]:
    """Algorithm 1 line 9: eps = (g . eta / ||eta||^2) eta (global dot products); mode "noise": sign(g . eta) eta."""
    dot = cast(Tensor, sum((grads[n].float() * eta[n].float()).sum() for n in eta))  # eta is never empty
    if mode == "noise":
        s = torch.sign(dot)
        return {n: s * e for n, e in eta.items()}
    nrm = cast(Tensor, sum((e.float() ** 2).sum() for e in eta.values()))
    coef = dot / torch.clamp(nrm, min=torch.finfo(torch.float32).tiny)
    return {n: coef * e for n, e in eta.items()}


def magnitude_step(grads: dict[str, Tensor], dirs: NoiseDirections, radius: float = 1.0) -> dict[str, Tensor]:
    """Noise-sized step: eps = mu + radius * Sigma g / sqrt(g^T Sigma g) (global over layers).

    The steepest ascent at Mahalanobis distance ``radius`` in the device noise's own metric: it raises
    the loss (to first order) by radius * sqrt(g^T Sigma g), radius times the std of g . eta over noise
    draws, and no perturbation as likely under the noise raises it more. Weights with more variance, or
    correlated with them, move more; scaling the noise by c scales eps - mu by c, which the projection
    step (invariant to the scale of eta) does not.
    """
    names = list(dirs.covs)
    flat = {n: grads[n].detach().reshape(-1).to(dirs.covs[n].d.dtype) for n in names}
    sg = {n: dirs.matvec(n, flat[n]) for n in names}
    quad = cast(Tensor, sum((flat[n] * sg[n]).sum() for n in names))  # g^T Sigma g
    coef = radius / torch.sqrt(torch.clamp(quad, min=torch.finfo(quad.dtype).tiny))
    return {n: (dirs.covs[n].mu + coef * sg[n]).view(dirs.shapes[n]) for n in names}


def parse_rank(value: Any) -> int | None:
    """DAT's rank option: k >= 1 eigen-directions, or full/none/0 for exact draws (None)."""
    return None if str(value).lower() in ("full", "none", "0") else to_int(value, minimum=1)


def parse_refresh(value: Any) -> int | str:
    """DAT's refresh_every option: "epoch" (at the first step of every epoch) or a number of steps N >= 1."""
    if str(value).strip().lower() == "epoch":
        return "epoch"
    try:
        return to_int(value, minimum=1)
    except ValueError as exc:
        raise ValueError(f"{exc} (or 'epoch')") from None


def refresh_due(schedule: int | str, step: int, epoch: int, built_step: int | None, built_epoch: int | None) -> bool:
    """Whether DAT rebuilds its covariance and basis at this step: never built yet, a new epoch, or N steps on."""
    if built_step is None or built_epoch is None:
        return True
    if schedule == "epoch":
        return epoch != built_epoch
    return step - built_step >= int(schedule)


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
    refresh_every: int | str = option(
        "epoch",
        "when the covariance and its top-k basis are rebuilt from the current weights: epoch (first step of each "
        "epoch; Algorithm 1 builds them once) or every N steps (1: every step)",
        parse=parse_refresh,
        kind="int|epoch",
    )
    step: Literal["projection", "noise", "magnitude"] = option(
        "projection",
        "projection: the paper's eps (times alpha); noise: sign(g.eta)*eta, a noise draw oriented uphill; "
        "magnitude: a noise-sized step along Sigma*g (both times radius)",
    )
    keep_variance: bool = option(
        True, "DAT-Fast keeps every weight's full variance (false: the paper's top-k only, k/n of a diagonal one)"
    )
    radius: float = option(1.0, "noise step: multiple of the draw; magnitude step: Mahalanobis distance in noise stds")
    ascent: Literal["clean", "previous"] = option(
        "clean",
        "gradient the ascent is built from: clean = this step's clean loss (Algorithm 1, two forward/backward "
        "passes per step); previous = the gradient the last step descended with (one pass per step)",
    )
    layers: Literal["all", "last"] = option(
        "all",
        "weights the ascent perturbs: all = every Conv/Linear layer; last = the last one only, as the paper's "
        "runs inject noise into the last fully connected layer (a Linear head then shares one forward pass)",
    )


@METHODS.register("dat")
class DAT(TrainingMethod[DATOptions]):
    """Device-aware training: SAM-like ascent along sampled device-noise directions, descent with the averaged gradient.

    Each step: g = grad of the clean loss; for j = 1..p: eta_j = mu + A_k z_j, eps_j = projection of g on
    eta_j, gradient at w + alpha*eps_j; the optimizer steps with the average (Algorithm 1). The
    covariance is that of the run's weight noise: profile spatial model (correlated cells) plus the
    independent per-level part, or diagonal for the paper families (``_covariance``). The paper
    computes the covariance and its eigenpairs once, before the loop (Algorithm 1 lines 2-3), for a
    profile given in weight units. Here the noise follows the weights (a device's error in weight units
    scales with the layer's max|W|, its mean with its level), so the reading taken is "once per
    epoch" (``refresh_every``, default epoch): at the first step of every epoch mu, Sigma, the top-k
    basis and A_k are rebuilt from the weights of that step and reused, with the sampling buffers, by
    every step of the epoch. Within an epoch the stalest part is the mean (a bit-sliced profile's
    quantisation shift, at most half a level step, against a device error of several level steps);
    refresh_every=1 rebuilds at every step (what this method did before, the same numbers).
    Paper vs common sense: |eps| = |g.eta|/||eta|| shrinks with the gradient, so the ascent vanishes near
    convergence unless alpha is large (100 diverges on digits), and it does not grow with the noise:
    eps is the same for eta and c*eta, so the device noise sets only its direction. ``step=magnitude``
    is the noise-sized alternative (``magnitude_step``). Reading taken: the size follows the noise and
    the direction the gradient, as the steepest ascent at Mahalanobis distance radius (default 1) in
    the noise's metric, eps = Sigma g / sqrt(g^T Sigma g): to first order it raises the loss by radius
    standard deviations of the noise's own effect g . eta, and it is deterministic (one evaluation
    serves any p). A step
    of a typical draw's full norm (about one noise std per weight) along the gradient is instead the
    first-order worst case of the whole noise set: on digits it kept training at chance (11 % mean
    accuracy at sigma_d 0.3, and 16 % at 0.3 of that size). Measured on digits (small CNN, 20 epochs,
    sigma_d 0.3 in training and evaluation, 2 seeds, mean noisy accuracy): projection (alpha 10)
    39-42 %, magnitude radius 1 44 %, radius 3 50 %, radius 10 18 %, noise step 53 %, and plain noise
    injection 54 %.
    With a diagonal (uncorrelated) covariance the top eigenvalue is shared by a whole layer's weights:
    the paper's top-k then keeps k/n of the layer's variance (a random orthonormal basis of the tied
    eigenspace, redrawn at every refresh). keep_variance (default) samples such layers exactly, which
    costs no more than k directions, and completes correlated ones with their remaining variance.
    The paper injects noise into one layer only, where a global and a per-layer top-k coincide. With
    every layer noisy, a global top-k spends all k directions on the layer with the largest per-weight
    variance (uniform device noise: the layer with the largest max|W|) and leaves the others
    unperturbed, so DAT-Fast did no better than vanilla on digits; the default keeps k per layer.
    Cost: Algorithm 1 takes the clean gradient (line 6) and then the perturbed one (line 11), two forward and
    backward passes per step, so on a compute-bound CPU a step costs about twice plain training, whatever k;
    the paper's Table I times DAT-Fast at about SGD's. Its runs inject noise into the last fully connected layer
    only, and ``layers=last`` does the same: only the last Conv/Linear weight is perturbed, and when it is a
    Linear head whose output is the model's, both passes share one forward (the perturbed logits are the clean
    ones plus h Delta^T, see `_shared_pass_step`), so a step costs one forward and one backward, as in the
    paper. ``ascent=previous`` (a deviation, for cost) builds the ascent from the gradient the previous step
    descended with, as look-ahead SAM variants reuse a recent gradient: one pass per step after the first.
    """

    name = "dat"
    Options = DATOptions

    def prepare(self, ctx: TrainContext) -> None:
        require_noise(ctx, self.name)
        o = self.options
        self.rank = o.rank
        self.alpha = o.alpha
        self.p = o.perturbations
        self.refresh: int | str = o.refresh_every
        self.scope: str = o.scope
        self.mode: str = o.step
        self.keep_variance = o.keep_variance
        self.radius = o.radius
        self.directions: NoiseDirections | None = None
        self._built_step: int | None = None
        self._built_epoch: int | None = None
        self.rebuilds = 0  # covariance/basis builds so far (the schedule's count, for tests and benchmarks)
        self._weights: dict[str, Tensor] | None = None
        self._norm_buffers: bool | None = None
        self.ascent: str = o.ascent
        self._g_prev: dict[str, Tensor] | None = None  # ascent="previous": the last step's descent gradient
        self.layers: str = o.layers
        self._head: torch.nn.Linear | None = None  # layers="last" with a Linear last layer: the shared-pass head
        self.shared_passes = 0  # steps that shared one forward pass (layers="last"), for tests and benchmarks

    def _directions(self, ctx: TrainContext, w: dict[str, Tensor]) -> NoiseDirections:
        if self.directions is None or refresh_due(
            self.refresh, ctx.step, ctx.epoch, self._built_step, self._built_epoch
        ):
            noise = require_noise(ctx, self.name)
            covs = {n: layer_covariance(noise, n, t) for n, t in w.items()}
            self.directions = NoiseDirections(
                covs, {n: t.shape for n, t in w.items()}, self.rank, ctx.generator, self.scope, self.keep_variance
            )
            self._built_step, self._built_epoch = ctx.step, ctx.epoch
            self.rebuilds += 1
        return self.directions

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        model = ctx.raw_model
        if self._weights is None:  # the Conv/Linear parameters stay the same tensors for the whole run
            self._weights = clean_weights(model)
            if self.layers == "last":
                last = list(self._weights)[-1]
                self._weights = {last: self._weights[last]}
                head = model.get_submodule(last.rpartition(".")[0])
                self._head = head if type(head) is torch.nn.Linear else None
            self._norm_buffers = bool(norm_buffer_copies(model))
        w = self._weights
        names = list(w)
        loss0: Tensor | None = None
        if self.ascent == "previous" and self._g_prev is not None:
            g = self._g_prev  # one pass per step: the ascent from the gradient the last step descended with
        else:
            # the clean forward must leave BatchNorm statistics alone (the perturbed one moves them once)
            stats = norm_buffer_copies(model) if self._norm_buffers else {}
            seen: dict[str, Tensor] = {}
            shared_head = self._head if self.ascent == "clean" else None  # "previous" keeps its one-pass scheme
            hook = None
            if shared_head is not None:
                hook = shared_head.register_forward_hook(lambda _m, i, o: seen.update(h=i[0], z=o))
            try:
                out0 = forward_with_weights(model, x, stats) if stats else model(x)
            finally:
                if hook is not None:
                    hook.remove()
            if shared_head is not None:
                if out0 is seen.get("z") and isinstance(out0, Tensor):
                    return self._shared_pass_step(ctx, y, seen["h"], out0, stats)
                self._head = None  # the model's output is not its head's: Algorithm 1's two passes from now on
            loss0 = F.cross_entropy(out0.float(), y)
            g = dict(zip(names, torch.autograd.grad(loss0, [w[n] for n in names])))
        dirs = self._directions(ctx, w)
        total = 0.0
        p = 1 if self.mode == "magnitude" else self.p  # the magnitude step is deterministic
        for _ in range(p):
            step = self._step_of(g, dirs, ctx.generator)
            wp = {n: w[n] + step[n].to(w[n].dtype).detach() for n in names}
            loss = F.cross_entropy(forward_with_weights(model, x, wp).float(), y) / p
            ctx.backward(loss)
            total += float(loss.detach())
        if self.ascent == "previous":  # what the optimizer is about to step with (unscaled under fp16 AMP)
            scale = float(ctx.scaler.get_scale()) if ctx.scaler is not None else 1.0
            prev = {}
            for n in names:
                grad = w[n].grad
                prev[n] = grad.detach() / scale if grad is not None else torch.zeros_like(w[n])
            self._g_prev = prev
        out = {"loss": total}
        if loss0 is not None:
            out["loss_clean"] = float(loss0.detach())
        return out

    def _step_of(self, g: dict[str, Tensor], dirs: NoiseDirections, generator: torch.Generator) -> dict[str, Tensor]:
        """One perturbation of the ascent (Algorithm 1 lines 8-10, or the noise-sized steps), from gradient g."""
        if self.mode == "magnitude":
            return magnitude_step(g, dirs, self.radius)
        eps = dat_perturbation(g, dirs.sample(generator, reuse=True), self.mode)
        scale = self.alpha if self.mode == "projection" else self.radius
        return {n: scale * e for n, e in eps.items()}

    def _shared_pass_step(
        self, ctx: TrainContext, y: Tensor, h: Tensor, z: Tensor, stats: dict[str, Tensor]
    ) -> dict[str, float]:
        """Algorithm 1 with only the Linear head perturbed, on the clean forward: from the head's input h and
        output z = h W^T + b (the model's logits), the clean gradient is taken for W alone, and the perturbed
        logits are z + h Delta^T, which are h (W + Delta)^T + b. Their gradient is the perturbed weights' for
        every layer (up to rounding), so a step costs one forward and one backward, as the paper's timings show.
        The forward moved the clones ``stats`` of the BatchNorm statistics: they go to the model (the one move
        of the step, as the perturbed forward makes it on two passes)."""
        assert self._weights is not None
        (name,) = self._weights
        weight = self._weights[name]
        loss0 = F.cross_entropy(z.float(), y)
        g = {name: torch.autograd.grad(loss0, weight, retain_graph=True)[0]}
        dirs = self._directions(ctx, self._weights)
        p = 1 if self.mode == "magnitude" else self.p
        losses = []
        for _ in range(p):  # every perturbation's logits from the same forward, one backward for their mean
            delta = self._step_of(g, dirs, ctx.generator)[name].to(weight.dtype).detach()
            losses.append(F.cross_entropy((z + F.linear(h, delta)).float(), y))
        loss = torch.stack(losses).mean()
        ctx.backward(loss)
        if stats:
            buffers = dict(ctx.raw_model.named_buffers())
            with torch.no_grad():
                for key, value in stats.items():
                    buffers[key].copy_(value)
        self.shared_passes += 1
        return {"loss": float(loss.detach()), "loss_clean": float(loss0.detach())}
