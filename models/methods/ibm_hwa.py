"""IBM-style hardware-aware training (HWA supplement, A.1): scaled/ramped noise, clipping, remapping, drop-connect."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.methods._util import epoch_batches, loader_length, require_noise
from models.methods.base import TrainContext, TrainingMethod
from models.methods.mtrd import kl_teacher_student
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS
from models.noise.apply import clean_weights, forward_with_weights

_TINY = 1e-12


def column_scales(w: Tensor) -> Tensor:
    """max |W| per output column (dim 0), shaped to broadcast against W: the remapped out-scales gamma_i."""
    m = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp(min=_TINY)
    return m.reshape((w.shape[0],) + (1,) * (w.dim() - 1))


def ramp_factor(step: int, ramp_batches: int) -> float:
    """Linear ramp of the injected noise strength over the first ``ramp_batches`` batches (1 afterwards)."""
    return 1.0 if ramp_batches <= 0 else min(1.0, (step + 1) / ramp_batches)


@dataclass(frozen=True)
class IBMHWAOptions(MethodOptions):
    """Options of IBM-style hardware-aware training (HWA supplement, A.1)."""

    noise_scale: float = option(
        3.0,
        "injected noise relative to the run's noise (A.1: 3 for the CNNs; ~1-2 when "
        "the run's noise already is the deployment noise)",
    )
    ramp_batches: int | None = option(None, "batches of the linear noise ramp-up (none = one epoch, A.1.7)", minimum=0)
    remap_every: int | None = option(
        None, "batches between remappings of gamma to max|W| (none = one epoch)", minimum=0
    )
    drop_connect: float = option(0.001, "probability of setting a weight to g_min = 0 (0.1 %, A.1.7)")
    clip: bool = option(True, "fixed-value clipping |W_hat| <= 1")
    learn_out_scales: bool = option(True, "train the per-column out-scales gamma too")
    distill: bool = option(
        False, "add KL(teacher || noisy student) from a floating-point teacher (off in A.1.7's final results)"
    )
    distill_weight: float = option(1.0, "weight of the distillation term")
    temperature: float = option(1.0, "distillation temperature")
    teacher: str | None = option(
        None, "model.pt of the floating-point teacher (none = the model after pretrain_epochs)"
    )
    pretrain_epochs: int = option(
        0, "epochs of plain training before HWA training (the paper starts from an FP model)", minimum=0
    )


@METHODS.register("ibm_hwa")
class IBMHWA(TrainingMethod[IBMHWAOptions]):
    """Hardware-aware training as in the IBM AIMC study: W = diag(gamma) * W_hat with per-column out-scales.

    Per batch: the conductance-normalised weights W_hat = W / gamma (|W_hat| <= 1 by fixed-value
    clipping) get drop-connect (each weight set to g_min = 0 with probability ``drop_connect``) and the
    run's noise scaled by ``noise_scale`` and linearly ramped up over ``ramp_batches`` batches; the
    effective weight is gamma * (W_hat + noise). Every ``remap_every`` batches gamma is reset to the
    column's max |W| (remapping, so max |W_hat| = 1). With ``learn_out_scales`` gamma is trained too;
    its update is folded into W so that W_hat stays what the optimizer made it. ``distill`` adds
    KL(teacher || noisy student) from the floating-point model: ``teacher`` = model.pt, or the model as
    it is after ``pretrain_epochs`` of plain training (the paper starts HWA training from an FP model).
    Common-sense note: the paper scales PCM noise at t = 20 s because evaluation adds drift and other
    nonidealities; when the run's noise already is the deployment noise, noise_scale ~1-2 is the
    sensible choice. The ramp scales the sampled perturbation (exact for Gaussian families).
    """

    name = "ibm_hwa"
    Options = IBMHWAOptions

    def prepare(self, ctx: TrainContext) -> None:
        noise = require_noise(ctx, self.name)
        o = self.options
        n = self.name
        self.noise = noise.scaled(o.noise_scale)
        per_epoch = loader_length(ctx.train_loader)
        self.ramp = per_epoch if o.ramp_batches is None else o.ramp_batches
        self.remap = per_epoch if o.remap_every is None else o.remap_every
        self.p_drop = o.drop_connect
        if not 0.0 <= self.p_drop < 1.0:
            raise ValueError(f"method {n!r}: drop_connect must be in [0, 1), got {self.p_drop}")
        self.clip = o.clip
        self.learn = o.learn_out_scales
        self.distill = o.distill
        self.distill_weight = o.distill_weight
        self.temperature = o.temperature
        pre = o.pretrain_epochs
        model = ctx.raw_model
        if pre > 0 and not ctx.resuming:
            self._pretrain(ctx, pre)
        self.teacher: nn.Module | None = None
        if self.distill:
            if o.teacher:
                from models.checkpoint import load_teacher

                self.teacher, _ = load_teacher(o.teacher, ctx.device, ctx.config.model)
            elif pre > 0:
                self.teacher = copy.deepcopy(model).eval()
            else:
                raise ValueError(
                    f"method {n!r}: distill needs a floating-point teacher (teacher=model.pt or pretrain_epochs>0)"
                )
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        w = clean_weights(model)
        self.gamma = {k: nn.Parameter(column_scales(v)) for k, v in w.items()}
        self._gamma_prev = {k: g.detach().clone() for k, g in self.gamma.items()}
        if self.learn:
            ctx.add_parameters(self.gamma.values(), weight_decay=0.0)

    def _pretrain(self, ctx: TrainContext, epochs: int) -> None:
        """Plain floating-point training of the model in place (the FP starting point of HWA training)."""
        model = ctx.raw_model
        opt = torch.optim.Adam(model.parameters(), lr=ctx.config.lr)
        model.train()
        for ep in range(epochs):
            for x, y in epoch_batches(ctx.train_loader, ep):
                opt.zero_grad(set_to_none=True)
                with ctx.autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                opt.step()

    @torch.no_grad()
    def _sync(self, model: nn.Module, step: int | None) -> None:
        """Fold learned gamma updates into W, remap when due, then clip |W| <= gamma (|W_hat| <= 1)."""
        w = clean_weights(model)
        for k, wt in w.items():
            g = self.gamma[k]
            g.clamp_(min=_TINY)
            if self.learn:
                wt.mul_(g / self._gamma_prev[k])
            if step is not None and step > 0 and self.remap > 0 and step % self.remap == 0:
                g.copy_(column_scales(wt))
            if self.clip:
                wt.copy_(torch.maximum(torch.minimum(wt, g), -g))
            self._gamma_prev[k] = g.detach().clone()

    def effective_weights(self, ctx: TrainContext, w: dict[str, Tensor]) -> dict[str, Tensor]:
        """gamma * (drop(W_hat) + ramp * noise / gamma) per layer (value: drop(W) + ramped noise)."""
        r = ramp_factor(ctx.step, self.ramp)
        wd = {k: v.detach() for k, v in w.items()}
        noisy = self.noise.sample(wd, ctx.generator)
        out = {}
        for k, v in w.items():
            g = self.gamma[k]
            w_hat = v / g.detach()
            if self.p_drop > 0:
                keep = torch.rand(v.shape, generator=ctx.generator, device=v.device, dtype=v.dtype) >= self.p_drop
                w_hat = w_hat * keep
            n_hat = r * (noisy[k] - wd[k]) / g.detach()
            out[k] = g * (w_hat + n_hat)
        return out

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        model = ctx.raw_model
        self._sync(model, ctx.step)
        w = clean_weights(model)
        out = forward_with_weights(model, x, self.effective_weights(ctx, w)).float()
        ce = F.cross_entropy(out, y)
        loss = ce
        logs = {"ramp": ramp_factor(ctx.step, self.ramp)}
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(x)
            kd = kl_teacher_student(t, out, self.temperature).mean()
            loss = ce + self.distill_weight * kd
            logs["kd"] = float(kd.detach())
        ctx.backward(loss)
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), **logs}

    def export_model(self, model: nn.Module) -> nn.Module:
        self._sync(model, None)
        return model

    def state_dict(self) -> dict:
        return {"gamma": {k: g.detach().cpu() for k, g in self.gamma.items()}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, g in state.get("gamma", {}).items():
                self.gamma[k].copy_(g.to(self.gamma[k].device))
                self._gamma_prev[k] = self.gamma[k].detach().clone()
